// Restart-safe B-tree transactions, modelled on bcachefs's btree_trans.
//
// The model:
//  - A transaction runs in steps (one lockrestartDo each, retry.ts). A step
//    begins with nothing locked, takes node locks as it reads, queues
//    updates, and ends by committing or by returning what it read. It never
//    waits for a lock: a failed trylock is a typed restart, and the step is
//    run again from begin().
//  - The read set: every node the step has locked since begin, with the
//    node's sequence number at that time, stays in the set (and pinned in
//    the node cache) until the step ends. Iterators walk across leaves and
//    everything they passed is in it.
//  - dropLocksDo (retry.ts) is the only way to wait: it releases every lock,
//    awaits, then relock() re-takes the whole read set. Relock succeeds only
//    if no node in it changed (same object, same seq), so a step that waited
//    behaves as if it had held all its locks the whole time; otherwise it
//    restarts ('relock').
//  - Updates (insertExtent, deleteRange) are queued, with intent locks on
//    their leaf's path, and applied at commit by interior.ts under write
//    locks. Reads in a step see committed state, never the step's own queued
//    updates.
//  - Block reservations (alloc) come out of the allocator's in-memory
//    `avail` set and become durable only in the reserving step's own commit
//    (alloc.ts); a restart or an uncommitted end hands them back.
//  - commit() writes changed nodes, the meta, the free-space rows and the
//    caller's hook in ONE SQLite transaction of its own. It refuses to run
//    inside an outer SQLite transaction: a rolled-back outer transaction
//    would leave the in-memory tree ahead of the image.
//
// Guards (cf. bcachefs verify_not_restarted, lock-held-across-await):
//  - a restart raised by the transaction marks it `restarted`; any further
//    use before begin() is 'trans_misuse' (a body that swallowed it);
//  - with debug checks, holding locks when the event loop turns poisons the
//    transaction ('lock_held_across_await');
//  - tree access while the locks are dropped (inside dropLocksDo's callback)
//    is 'trans_misuse'.
import { flushBatch, inTransaction } from '../sqltx'
import { BtreeError, TransRestart, type RestartReason } from './errors'
import { Applier, MAX_EXTENT_LEN } from './interior'
import { BtreeIter } from './iter'
import type { LockOwner, LockType } from './locks'
import type { BtreeNode, Extent, Pos } from './node'
import { BtreePath, pathSeek, type NodeSource } from './path'
import type { Range } from './rangeset'
import type { ExtentTree } from './tree'

export { MAX_EXTENT_LEN }

/** step restarts after which a step runs serialized (fairness) */
export const FAIR_RESTARTS = 8
/** step restarts after which the step fails (a livelock would be a bug) */
export const HARD_RESTARTS = 1000

/** one node of the read set: the seq it had when first locked, the locks held on it */
interface Held { node: BtreeNode, seq: number, read: boolean, intent: boolean }

type ExtentOp = { kind: 'insert', ext: Extent } | { kind: 'delete', ino: number, start: number, end: number }

export interface CommitResult { freed: Range[] }

export class BtreeTrans implements LockOwner {
  readonly tree: ExtentTree
  readonly id: number
  /** the read set, in lock order */
  private readonly readSet = new Map<BtreeNode, Held>()
  /** are the read set's locks taken right now? (false inside dropLocksDo) */
  private locksTaken = false
  private ops: ExtentOp[] = []
  private reserved: Range[] = []
  /** reservations made by an earlier step and handed to this one (adopt) */
  private adopted: Range[] = []
  private lockEpoch = 0
  private poisoned: BtreeError | null = null
  /** the reason of a restart this transaction raised and nobody has handled yet */
  restarted: RestartReason | null = null
  /** restarts of the current step, and injected ones among them */
  restarts = 0
  injected = 0
  /** restarts over the transaction's life (statistics only) */
  totalRestarts = 0

  readonly source: NodeSource = {
    load: id => this.tree.cache.get(id),
    lock: (node, type) => this.lockNode(node, type)
  }

  readonly owner: LockOwner = this

  constructor (tree: ExtentTree) {
    this.tree = tree
    this.id = tree.newTransId()
  }

  // ---- locking ---------------------------------------------------------

  /** does the transaction hold node locks right now? */
  get locked (): boolean { return this.locksTaken && this.readSet.size > 0 }

  /** raise a restart: marks the transaction restarted until the next begin() */
  restart (reason: RestartReason, detail?: string): never {
    this.restarted = reason
    throw new TransRestart(reason, detail)
  }

  checkPoison (): void {
    if (this.poisoned) throw this.poisoned
  }

  /** every tree access goes through here */
  private checkUsable (): void {
    this.checkPoison()
    if (this.restarted !== null) {
      throw new BtreeError('trans_misuse', `transaction ${this.id} used after a '${this.restarted}' restart it did not pass on`)
    }
    if (!this.locksTaken && this.readSet.size > 0) {
      throw new BtreeError('trans_misuse', `transaction ${this.id} touched the tree with its locks dropped (inside dropLocksDo?)`)
    }
  }

  /** trylock or restart: never wait for a lock. Adds the node to the read set. */
  lockNode (node: BtreeNode, type: LockType): void {
    this.checkUsable()
    if (type === 'write') throw new BtreeError('trans_misuse', 'write locks are taken only by commit')
    const h = this.readSet.get(node)
    if (h?.[type]) return
    if (!node.lock.trylock(this, type)) this.restart('would_deadlock', `node ${node.id} ${type} held by another transaction`)
    if (h) { h[type] = true; return }
    this.readSet.set(node, { node, seq: node.seq, read: type === 'read', intent: type === 'intent' })
    node.pins++
    if (this.readSet.size === 1) this.nowLocked()
  }

  private nowLocked (): void {
    this.locksTaken = true
    this.tree.lockHolders++
    this.armWatchdog()
  }

  /** debug checks: locks still held when the event loop turns means the body awaited with them */
  private armWatchdog (): void {
    if (!this.tree.opts.debugChecks) return
    const epoch = ++this.lockEpoch
    setImmediate(() => {
      if (!this.locked || this.lockEpoch !== epoch) return
      this.tree.stats.lockHeldAcrossAwait++
      this.poisoned = new BtreeError('lock_held_across_await',
        `transaction ${this.id} held ${this.readSet.size} node lock(s) across an await; wait only inside dropLocksDo()`)
      this.unlockAll()
    })
  }

  private unlockHeld (h: Held): void {
    if (h.read) h.node.lock.unlock(this, 'read')
    if (h.intent) h.node.lock.unlock(this, 'intent')
  }

  /** release every lock; the read set stays (for relock) */
  unlockAll (): void {
    if (!this.locksTaken) return
    for (const h of this.readSet.values()) this.unlockHeld(h)
    this.locksTaken = false
    this.tree.lockHolders--
    this.lockEpoch++
  }

  /** re-take the whole read set; restart if any node in it changed meanwhile */
  relock (): void {
    this.checkPoison()
    if (this.locksTaken || this.readSet.size === 0) return
    this.maybeInject('relock')
    const cache = this.tree.cache
    const taken: Held[] = []
    for (const h of this.readSet.values()) {
      const n = h.node
      let ok = cache.peek(n.id) === n && n.seq === h.seq
      const gotRead = ok && h.read && n.lock.trylock(this, 'read')
      if (ok && h.read && !gotRead) ok = false
      if (ok && h.intent && !n.lock.trylock(this, 'intent')) {
        if (gotRead) n.lock.unlock(this, 'read')
        ok = false
      }
      if (!ok) {
        for (const t of taken) this.unlockHeld(t)
        this.restart('relock', `node ${n.id} changed or is locked`)
      }
      taken.push(h)
    }
    this.nowLocked()
  }

  maybeInject (where: string): void {
    const o = this.tree.opts
    if (o.injectRestarts > 0 && this.injected < o.injectMaxPerTrans && o.random() < o.injectRestarts) {
      this.injected++
      this.restart('injected', where)
    }
  }

  // ---- lifecycle -------------------------------------------------------

  /** start (or restart) a step: nothing locked, read, queued or reserved */
  begin (): void {
    this.checkPoison()
    this.reset()
    this.restarted = null
  }

  /** end of a step: nothing stays locked, pinned or reserved */
  end (): void {
    this.reset()
    this.tree.releaseSerial(this)
    this.tree.cache.trim()
  }

  /** a new step of a walk: per-step restart counters start from zero */
  newStep (): void {
    this.restarts = 0
    this.injected = 0
    this.tree.stats.steps++
  }

  private reset (): void {
    this.unlockAll()
    for (const h of this.readSet.values()) h.node.pins--
    this.readSet.clear()
    this.ops = []
    for (const r of this.reserved) this.tree.alloc.unreserve(r)
    this.reserved = []
    this.adopted = [] // still the caller's: it adopts them again on a retry, or unreserves them
  }

  /** count a restart of the current step; serialize or fail past the bounds */
  noteRestart (reason: RestartReason): void {
    this.restarts++
    this.totalRestarts++
    this.tree.noteRestart(reason)
    const s = this.tree.stats
    if (this.restarts > s.maxRestartsOneTrans) s.maxRestartsOneTrans = this.restarts
    if (this.restarts >= HARD_RESTARTS) throw new BtreeError('restart_limit', `transaction ${this.id} restarted ${this.restarts} times in one step (last: ${reason})`)
    if (this.restarts >= FAIR_RESTARTS) this.tree.takeSerial(this)
  }

  // ---- reads -----------------------------------------------------------

  private traverse (p: BtreePath): BtreePath {
    this.checkUsable()
    this.maybeInject('traverse')
    pathSeek(p, this.tree.meta.rootId, this.source)
    return p
  }

  /** a read path at the last key <= (ino, off) (iterators) */
  seekPath (ino: number, off: number): BtreePath {
    return this.traverse(new BtreePath('read', { ino, off }))
  }

  iter (ino: number, off: number): BtreeIter {
    return new BtreeIter(this, ino, off)
  }

  /** the extent mapping block off of ino, or null for a hole */
  lookup (ino: number, off: number): Extent | null {
    const e = this.seekPath(ino, off).current()
    return e && e.ino === ino && e.off + e.len > off ? { ...e } : null
  }

  /** committed extents overlapping [start, end) of ino, in order (copies) */
  extentsIn (ino: number, start: number, end: number, max = Infinity): Extent[] {
    const it = this.iter(ino, start)
    const out: Extent[] = []
    for (let e = it.peekMax(end); e && e.off < end && out.length < max; e = it.next()) out.push({ ...e })
    return out
  }

  /**
   * Count, without copying them, up to max extents of ino overlapping
   * [start, end); stop is where the next one begins (end if there is none):
   * unmapping [start, stop) removes exactly those (bounded truncate steps).
   */
  extentsAhead (ino: number, start: number, end: number, max: number): { count: number, stop: number } {
    const it = this.iter(ino, start)
    let count = 0
    for (let e = it.peekMax(end); e && e.off < end; e = it.next()) {
      if (count === max) return { count, stop: e.off }
      count++
    }
    return { count, stop: end }
  }

  /** physical block where data for (ino, off) would continue the file */
  allocHint (ino: number, off: number): number {
    return this.placeOf(ino, off)?.pblk ?? 0
  }

  /**
   * where new data for (ino, off) continues the file: the block after the
   * extent before it; null when off is mapped (an overwrite, which
   * copy-on-write moves anyway) or no extent comes before it
   */
  continuation (ino: number, off: number): number | null {
    const p = this.placeOf(ino, off)
    return p && !p.mapped ? p.pblk : null
  }

  /** the block mapping (ino, off), or else the one after the extent before it */
  private placeOf (ino: number, off: number): { pblk: number, mapped: boolean } | null {
    const it = this.iter(ino, off)
    let e = it.peek()
    if (!e || e.off > off) e = it.prev()
    if (!e) return null
    if (e.off <= off && off < e.off + e.len) return { pblk: e.pblk + (off - e.off), mapped: true }
    return { pblk: e.pblk + e.len, mapped: false }
  }

  /** reserve up to want blocks near hint (away from it: in a free range of minRun blocks if there is one); handed back if the step does not commit */
  alloc (want: number, hint: number, minRun = want): Range | null {
    this.checkUsable()
    const r = this.tree.alloc.alloc(want, hint, minRun)
    if (r) this.reserved.push(r)
    return r
  }

  /**
   * Hand this step's reservations to the caller: they outlive the step and
   * stay out of `avail` until a later step adopt()s and commits them, or
   * the caller gives them back with unreserve(). Call it last in a body
   * (a restart before it returns still hands them back).
   */
  detachReserved (): Range[] {
    const r = this.reserved
    this.reserved = []
    return r
  }

  /** Take over reservations a detachReserved() returned; the commit makes them durable. */
  adoptReserved (rs: Range[]): void {
    this.checkUsable()
    for (const r of rs) this.adopted.push(r)
  }

  // ---- updates ---------------------------------------------------------

  /** intent-lock the path to pos (conflicts surface now, not at commit) */
  private intentPath (pos: Pos): void {
    this.traverse(new BtreePath('intent', { ino: pos.ino, off: pos.off }))
  }

  /** queue: map [ext.off, ext.off+ext.len) of ext.ino to ext.pblk..., replacing what was there */
  insertExtent (ext: Extent): void {
    if (ext.len <= 0 || ext.len > MAX_EXTENT_LEN) throw new BtreeError('trans_misuse', `bad extent length ${ext.len}`)
    this.intentPath(ext)
    this.ops.push({ kind: 'insert', ext: { ...ext } })
  }

  /** queue: unmap [start, end) of ino (truncate, punch); freed blocks return at commit */
  deleteRange (ino: number, start: number, end: number): void {
    if (end <= start) return
    this.intentPath({ ino, off: start })
    this.ops.push({ kind: 'delete', ino, start, end })
  }

  /**
   * Apply the queued updates under write locks and write every changed node,
   * the tree meta, the free-space changes and hook(freed) in one SQLite
   * transaction. On any failure nothing changed, in memory or in the image.
   * The hook also gets what each queued update freed (byOp[i]: the i-th
   * insertExtent/deleteRange call of this step, in order), for callers that
   * commit several files' updates in one step.
   */
  commit (hook?: (freed: Range[], byOp: Range[][]) => void): CommitResult {
    this.checkUsable()
    this.maybeInject('commit')
    const tree = this.tree
    flushBatch(tree.db) // the metadata group commit goes first: this commit must be top-level
    if (tree.db.inTransaction) throw new BtreeError('trans_misuse', 'commit inside an outer SQLite transaction')
    const ap = new Applier(this)
    const freed: Range[] = []
    const byOp: Range[][] = []
    try {
      for (const op of this.ops) {
        const f = op.kind === 'insert' ? ap.applyInsert(op.ext) : ap.applyCut(op.ino, op.start, op.end)
        byOp.push(f)
        for (const r of f) freed.push(r)
      }
    } catch (err) {
      ap.rollback()
      throw err
    }
    const alloc = tree.alloc
    const used: Range[] = []
    let released = false
    try {
      inTransaction(tree.db, () => {
        ap.persist()
        for (const r of this.reserved) { alloc.commitUse(r); used.push(r) }
        for (const r of this.adopted) { alloc.commitUse(r); used.push(r) }
        alloc.commitFree(freed)
        released = true
        alloc.persist(tree.db)
        if (hook) hook(freed, byOp)
      })
    } catch (err) {
      if (released) alloc.undoFree(freed)
      for (const r of used) alloc.undoUse(r)
      tree.metaRolledBack()
      ap.rollback()
      throw err
    }
    alloc.persisted()
    alloc.committed(freed)
    if (tree.commitsDurable) alloc.markDurable()
    ap.finish()
    this.reserved = [] // owned by committed extents now
    this.adopted = []
    this.ops = []
    this.reset()
    tree.cache.trim()
    tree.stats.commits++
    if (tree.opts.debugChecks) {
      const errs = tree.verify()
      if (errs.length) throw new BtreeError('node_corrupt', `verify after commit: ${errs.slice(0, 3).join('; ')}${errs.length > 3 ? ` (+${errs.length - 3} more)` : ''}`)
    }
    return { freed }
  }
}

/** a new transaction on tree (cf. bch2_trans_get) */
export function transGet (tree: ExtentTree): BtreeTrans {
  return new BtreeTrans(tree)
}
