// SQLite transactions of the image: strict ones, and group commit.
//
// A commit costs more than the small metadata operation inside it (COMMIT
// appends the pages to the WAL: ~60% of a create's CPU here). Metadata
// operations therefore run in a *batch*: one SQLite transaction that the
// first operation opens, each operation a savepoint inside it (its own
// all-or-nothing: a failing one rolls back alone), committed together
// BATCH_MS after it opened, after BATCH_OPS operations, or as soon as
// anything needs the commit: a strict transaction (B-tree commits: they
// must be top-level commits, since their freed blocks become reusable once
// *that* commit is durable), an fsync (flushBatch before the WAL is
// synced), a checkpoint, close. Readers on the connection see the batch's
// changes at once; the durability contract is unchanged (metadata is
// durable after fsync/syncfs), but a daemon killed with -9 loses the last
// BATCH_MS of unsynced metadata operations as a power cut would, where
// before it lost none. Order is kept: a batch commits whole, in order.
//
// Misuse: running SQL that must be committed on its own (a pragma that
// refuses to run in a transaction, a checkpoint) without flushBatch()
// first; letting a COMMIT failure pass: operations already answered would
// be lost silently, so a failed batch commit is fatal (onBatchFailure).
import type Database from 'better-sqlite3'

/**
 * a batch commits this long after its first operation at most. Longer
 * batches write a page that several of their operations change once: 20k
 * creates then unlinks spread over 100 directories (each operation
 * changes another directory's dirent page) ran 4023 -> 4477 creates/s and
 * 4293 -> 4935 unlinks/s at 25 ms instead of 4 (medians of 3, same run;
 * 50 ms measured alike). Answers do not wait for it (the caller has its
 * answer before the commit); what it costs is the window of unsynced
 * metadata a kill -9 loses, 25 ms (ext4 commits every 5 s).
 */
export const BATCH_MS = 25
/** ... or once it holds this many operations */
export const BATCH_OPS = 512

type Runner = <T>(fn: () => T) => T

interface DbState {
  /** db.transaction wrapper made once (db.transaction(fn) per call costs ~30 us) */
  run: Runner
  /** an operation's savepoint opened late (inBatchMarked), and its ends */
  savepoint: { open: Database.Statement, release: Database.Statement, undo: Database.Statement }
  /** the batch's BEGIN and COMMIT, prepared once like the savepoint's (db.exec parses them every time: ~30 us a batch) */
  begin: Database.Statement
  commit: Database.Statement
  /** a batch is open (BEGIN ran, no COMMIT yet) */
  batchOpen: boolean
  batchOps: number
  /** batched operations running now (nested: a flush must wait for them) */
  depth: number
  timer: NodeJS.Timeout | null
  stats: BatchStats
  onFailure: (err: unknown) => void
  /** run after any rollback (caches of what the rolled-back writes changed) */
  onRollback: Array<() => void>
}

export interface BatchStats { batches: number, batchedOps: number, maxBatchOps: number }

const states = new WeakMap<Database.Database, DbState>()

function stateOf (db: Database.Database): DbState {
  let st = states.get(db)
  if (!st) {
    const wrapped = db.transaction((body: () => unknown) => body())
    st = {
      run: (<U>(body: () => U): U => wrapped(body) as U) as Runner,
      savepoint: { open: db.prepare('SAVEPOINT foliofs_op'), release: db.prepare('RELEASE foliofs_op'), undo: db.prepare('ROLLBACK TO foliofs_op') },
      begin: db.prepare('BEGIN'),
      commit: db.prepare('COMMIT'),
      batchOpen: false,
      batchOps: 0,
      depth: 0,
      timer: null,
      stats: { batches: 0, batchedOps: 0, maxBatchOps: 0 },
      onFailure: err => { throw err },
      onRollback: []
    }
    states.set(db, st)
  }
  return st
}

/**
 * Run fn in one top-level transaction of db (the open batch is committed
 * first). Its result, or its exception after the rollback. Called inside
 * another strict transaction it is a savepoint of that one.
 */
export function inTransaction<T> (db: Database.Database, fn: () => T): T {
  const st = stateOf(db)
  if (st.depth > 0) throw new Error('strict transaction inside a batched operation (it could not commit on its own)')
  flushBatch(db)
  return runOrRollBack(st, fn)
}

/** st.run(fn); when it throws (rolled back), the rollback listeners run before the exception goes on */
function runOrRollBack<T> (st: DbState, fn: () => T): T {
  try {
    return st.run(fn)
  } catch (err) {
    rolledBack(st)
    throw err
  }
}

function rolledBack (st: DbState): void {
  for (const fn of st.onRollback) fn()
}

function openBatch (db: Database.Database, st: DbState): void {
  st.begin.run()
  st.batchOpen = true
  st.batchOps = 0
  st.timer = setTimeout(() => { st.timer = null; flushBatch(db) }, BATCH_MS)
}

/**
 * Run fn as one operation of the open batch (opening one if none is): a
 * savepoint, rolled back alone if fn throws. Committed with the batch
 * (see the top of the file). Inside a strict transaction: a savepoint of it.
 */
export function inBatch<T> (db: Database.Database, fn: () => T): T {
  const st = stateOf(db)
  if (!st.batchOpen && !db.inTransaction) openBatch(db, st)
  st.depth++
  let r: T
  try {
    r = runOrRollBack(st, fn)
  } finally {
    st.depth--
  }
  operationDone(db, st)
  return r
}

/**
 * How an operation run by inBatchMarked goes on before its first write:
 * guarded (a savepoint opens now: its writes roll back alone if it throws
 * later, as with inBatch), or answered (it has told its caller it
 * succeeded: a failure from here is fatal, see inBatchMarked).
 */
export type WriteMark = (how: 'guarded' | 'answered') => void

/**
 * Like inBatch, for an operation whose checks all come before its writes:
 * no savepoint up front. fn calls mark() once, after its last check and
 * before its first write. A throw before mark() has written nothing and
 * rolls back nothing; after mark('guarded'), the savepoint it opened rolls
 * back; after mark('answered') nothing can undo the operation alone: the
 * whole open batch rolls back and the batch-failure handler runs (as when
 * a batch does not commit; only a failing SQLite write gets there). Saves
 * the SAVEPOINT and RELEASE of every answered operation: 20k creates in
 * 100 directories ran 3714 -> 4367/s, unlinks 4434 -> 4895/s without them
 * (medians of 3, same run).
 * Outside a batch of its own (inside a strict transaction, or another
 * batched operation) it is inBatch: a savepoint up front, mark a no-op.
 * Misuse: writing before mark(), or calling it twice.
 */
export function inBatchMarked<T> (db: Database.Database, fn: (mark: WriteMark) => T): T {
  const st = stateOf(db)
  if (st.depth > 0 || (!st.batchOpen && db.inTransaction)) return inBatch(db, () => fn(() => {}))
  if (!st.batchOpen) openBatch(db, st)
  const sp = st.savepoint
  const op: { state: 'checking' | 'guarded' | 'answered' } = { state: 'checking' }
  st.depth++
  let r: T
  try {
    r = fn(how => {
      if (op.state !== 'checking') throw new Error('inBatchMarked: mark() called twice')
      if (how === 'guarded') sp.open.run()
      op.state = how
    })
    if (op.state === 'guarded') sp.release.run()
  } catch (err) {
    st.depth--
    if (op.state === 'guarded' && db.inTransaction) {
      sp.undo.run()
      sp.release.run()
      rolledBack(st)
    } else if (op.state !== 'checking') { // answered, or SQLite rolled the whole batch back itself
      closeBatch(st)
      failBatch(db, st, err)
    }
    throw err
  }
  st.depth--
  operationDone(db, st)
  return r
}

/** an operation of the open batch succeeded: count it; a full batch commits */
function operationDone (db: Database.Database, st: DbState): void {
  if (st.batchOpen && ++st.batchOps >= BATCH_OPS) flushBatch(db)
}

/** close the open batch (no COMMIT yet): no timer, no batch */
function closeBatch (st: DbState): void {
  if (st.timer) { clearTimeout(st.timer); st.timer = null }
  st.batchOpen = false
}

/** the batch cannot commit (its COMMIT failed, or an operation failed halfway after it was answered): roll it all back; fatal */
function failBatch (db: Database.Database, st: DbState, err: unknown): void {
  if (db.inTransaction) try { db.exec('ROLLBACK') } catch { /* the connection is gone */ }
  rolledBack(st)
  st.onFailure(err)
}

/** commit the open batch now, if there is one */
export function flushBatch (db: Database.Database): void {
  const st = states.get(db)
  if (!st?.batchOpen || st.depth > 0) return // never inside an operation: its timer commits it
  closeBatch(st)
  if (!db.open) return // closed under it (a simulated crash): its changes are gone, as in a crash
  st.stats.batches++
  st.stats.batchedOps += st.batchOps
  if (st.batchOps > st.stats.maxBatchOps) st.stats.maxBatchOps = st.batchOps
  try {
    st.commit.run()
  } catch (err) {
    failBatch(db, st, err)
  }
}

/** what to do when a batch does not commit (operations it held were answered already); default: throw */
export function onBatchFailure (db: Database.Database, fn: (err: unknown) => void): void {
  stateOf(db).onFailure = fn
}

/**
 * Run fn after every rollback on db: an operation's savepoint, a strict
 * transaction, a batch whose commit failed. For caches of rows: a cache
 * filled inside a transaction may hold what the rollback undid.
 */
export function onRollback (db: Database.Database, fn: () => void): void {
  stateOf(db).onRollback.push(fn)
}

export function batchStats (db: Database.Database): BatchStats {
  return { ...stateOf(db).stats }
}
