// Retry wrappers (cf. bcachefs lockrestart_do, commit_do, drop_locks_do,
// allocate_dropping_locks).
//
// Rules for bodies:
//  - a body is one step: it may read, queue updates and commit; it returns
//    a value and changes no outer state until it succeeds (it may run
//    several times);
//  - the only await allowed while the step holds locks is dropLocksDo();
//  - restarts must propagate: a body that catches a TransRestart and goes
//    on is caught ('trans_misuse').
//
// Async and synchronous transactions: lockrestartDo yields to the event
// loop after every restart, so the transaction it collided with can run.
// lockrestartDoSync cannot yield; it would spin forever against a
// suspended async transaction that holds locks (after its dropLocksDo
// relocked, before its body resumed). So it refuses to start while any
// other transaction holds locks, and everything that runs concurrently
// (the filesystem) uses lockrestartDo. The synchronous form is for
// single-user tools (fsck, tests) and for bodies known to be alone.
import { BtreeError, isRestart } from './errors'
import type { BtreeTrans } from './trans'

const yieldToLoop = (): Promise<void> => new Promise(resolve => setImmediate(resolve))

/** run one step's body once; returns its value or throws (restarts included) */
function runBody<T> (trans: BtreeTrans, r: T): T {
  if (trans.restarted !== null) {
    throw new BtreeError('trans_misuse', `transaction ${trans.id} body returned after a '${trans.restarted}' restart it swallowed`)
  }
  trans.checkPoison()
  return r
}

function noteStepTime (trans: BtreeTrans, t0: number): void {
  const ms = performance.now() - t0
  const s = trans.tree.stats
  if (ms > s.maxStepMs) s.maxStepMs = ms
}

/**
 * Run one step of trans: fn from a clean state, again whenever it raises
 * a restart (yielding to the event loop in between). Restart counters are
 * per step: a walk calls lockrestartDo once per step.
 */
export async function lockrestartDo<T> (trans: BtreeTrans, fn: (trans: BtreeTrans) => T | Promise<T>): Promise<T> {
  trans.newStep()
  try {
    for (;;) {
      await trans.tree.waitSerial(trans)
      trans.begin()
      const t0 = performance.now()
      try {
        const p = fn(trans)
        noteStepTime(trans, t0) // the synchronous part of the body
        return runBody(trans, await p)
      } catch (err) {
        if (!isRestart(err)) throw err
        trans.unlockAll()
        trans.noteRestart(err.reason)
        await yieldToLoop() // let the transaction we collided with finish
      }
    }
  } finally {
    trans.end()
  }
}

/** Synchronous lockrestartDo, for bodies that never wait, when no other transaction holds locks. */
export function lockrestartDoSync<T> (trans: BtreeTrans, fn: (trans: BtreeTrans) => T): T {
  trans.newStep()
  try {
    for (;;) {
      if (trans.tree.lockHolders > 0) {
        throw new BtreeError('trans_misuse', `synchronous transaction ${trans.id} while another holds node locks: it could only spin; use lockrestartDo`)
      }
      trans.begin()
      const t0 = performance.now()
      try {
        const r = fn(trans)
        noteStepTime(trans, t0)
        return runBody(trans, r)
      } catch (err) {
        if (!isRestart(err)) throw err
        trans.unlockAll()
        trans.noteRestart(err.reason)
      }
    }
  } finally {
    trans.end()
  }
}

/** lockrestartDo of fn followed by a commit (hook runs inside the commit's SQLite transaction). */
export async function commitDo<T> (trans: BtreeTrans, fn: (trans: BtreeTrans) => T | Promise<T>, hook?: Parameters<BtreeTrans['commit']>[0]): Promise<T> {
  return await lockrestartDo(trans, async t => {
    const r = await fn(t)
    t.commit(hook)
    return r
  })
}

/**
 * The only way to wait inside a step: drop every lock, await fn, then
 * relock the whole read set, restarting the step if any node in it changed.
 * fn must not touch the tree through trans. The result of fn is returned
 * when relock succeeds: the step goes on as if it had held its locks.
 */
export async function dropLocksDo<T> (trans: BtreeTrans, fn: () => T | Promise<T>): Promise<T> {
  if (trans.restarted !== null) runBody(trans, undefined)
  trans.checkPoison()
  trans.unlockAll()
  trans.tree.stats.dropLocks++
  const r = await fn()
  trans.relock()
  return r
}

/**
 * The slowpath pattern (cf. allocate_dropping_locks): try the nonblocking
 * step; only when it cannot proceed (returns undefined) run the blocking
 * one with locks dropped, and keep its result unless relock fails (then the
 * step restarts). Never make the blocking form what every step does: under
 * contention that is a livelock.
 */
export async function nonblockingOrDrop<T> (trans: BtreeTrans, tryStep: () => T | undefined, blocking: () => Promise<T>): Promise<T> {
  const r = tryStep()
  if (r !== undefined) return r
  trans.tree.stats.slowpath++
  return await dropLocksDo(trans, blocking)
}

export { yieldToLoop }
