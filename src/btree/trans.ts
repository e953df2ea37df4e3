// Restart-safe B-tree transactions, modelled on bcachefs's btree_trans:
//
//  - a BtreeTrans owns paths (root-to-leaf node lists) whose nodes it holds
//    locked (read or intent) together with each node's sequence number;
//  - it never waits for a lock: a failed trylock is a typed restart;
//  - the only way to wait inside a transaction is dropLocksDo(): unlock,
//    await, then relock, which succeeds only if no node on any path changed
//    (same sequence number), else it restarts the transaction;
//  - lockrestartDo() re-runs the transaction body on restarts, counts them
//    per reason, serializes a transaction that restarts too often (so none
//    can starve) and gives up loudly past a hard bound;
//  - updates are queued and applied at commit under write locks, and every
//    node they dirty is written in one SQLite transaction.
//
// Debug rule check (TreeOptions.debugChecks / FOLIOFS_DEBUG=1): holding
// node locks when the event loop turns means the body awaited with locks
// held; the transaction is poisoned (its locks are released so others go
// on) and fails with 'lock_held_across_await'.
import { BtreeError, TransRestart, isRestart, type RestartReason } from './errors'
import { type BtreeNode, type Extent, type Pos, cmpPos, interiorCapacity, leafCapacity } from './node'
import type { LockOwner, LockType } from './locks'
import type { Range } from './alloc'
import type { ExtentTree } from './tree'

export const MAX_PATHS = 64
/** restarts after which a transaction runs serialized (fairness) */
export const FAIR_RESTARTS = 8
/** restarts after which a transaction fails (a livelock would be a bug) */
export const HARD_RESTARTS = 1000
export const MAX_EXTENT_LEN = 1 << 20

interface Level { node: BtreeNode, seq: number, idx: number }

/** A root-to-leaf position in the tree. */
export class BtreePath {
  levels: Level[] = []
  rootSeq = 0
  constructor (readonly lockType: 'read' | 'intent', public pos: Pos) {}

  get leaf (): Level { return this.levels[this.levels.length - 1] }

  current (): Extent | null {
    const l = this.leaf
    return l.idx >= 0 && l.idx < l.node.extents.length ? l.node.extents[l.idx] : null
  }
}

type Locker = (node: BtreeNode) => void
type Loader = (id: number) => BtreeNode

/** Root-to-leaf levels routed by pos; the leaf index is the last key <= pos in that leaf, or -1. */
function descend (pos: Pos, rootId: number, load: Loader, lock: Locker): Level[] {
  const levels: Level[] = []
  let node = load(rootId)
  for (;;) {
    lock(node)
    if (node.isLeaf) {
      levels.push({ node, seq: node.seq, idx: node.seekLE(pos) })
      return levels
    }
    const i = node.childIndex(pos)
    levels.push({ node, seq: node.seq, idx: i })
    node = load(node.children[i])
  }
}

/**
 * Position a path at the last key <= p.pos. Separators are lower bounds of
 * their child, so that key may sit at the end of the previous leaf: step
 * back into it when the leaf has none <= pos.
 */
function pathSeek (p: BtreePath, rootId: number, load: Loader, lock: Locker): void {
  p.levels = descend(p.pos, rootId, load, lock)
  if (p.leaf.idx < 0) pathRetreat(p, load, lock)
}

/** Step a path to the next leaf entry, across leaves. */
function pathAdvance (p: BtreePath, load: Loader, lock: Locker): boolean {
  const L = p.levels.length - 1
  const leaf = p.levels[L]
  if (leaf.idx + 1 < leaf.node.extents.length) { leaf.idx++; return true }
  let l = L - 1
  while (l >= 0 && p.levels[l].idx + 1 >= p.levels[l].node.children.length) l--
  if (l < 0) { leaf.idx = leaf.node.extents.length; return false }
  p.levels[l].idx++
  for (let k = l + 1; k <= L; k++) {
    const parent = p.levels[k - 1]
    const node = load(parent.node.children[parent.idx])
    lock(node)
    p.levels[k] = { node, seq: node.seq, idx: 0 }
  }
  if (p.leaf.node.extents.length === 0) return false
  return true
}

/** Step a path to the previous leaf entry, across leaves. */
function pathRetreat (p: BtreePath, load: Loader, lock: Locker): boolean {
  const L = p.levels.length - 1
  const leaf = p.levels[L]
  if (leaf.idx - 1 >= 0) { leaf.idx--; return true }
  let l = L - 1
  while (l >= 0 && p.levels[l].idx === 0) l--
  if (l < 0) { leaf.idx = -1; return false }
  p.levels[l].idx--
  for (let k = l + 1; k <= L; k++) {
    const parent = p.levels[k - 1]
    const node = load(parent.node.children[parent.idx])
    lock(node)
    p.levels[k] = { node, seq: node.seq, idx: node.count - 1 }
  }
  return p.leaf.idx >= 0
}

/** Iterator over one inode's extents, in either direction. */
export class BtreeIter {
  private started = false
  constructor (private readonly trans: BtreeTrans, private readonly path: BtreePath, readonly ino: number, readonly off: number) {}

  private mine (e: Extent | null): Extent | null {
    return e !== null && e.ino === this.ino ? e : null
  }

  /** the extent containing off, else the first one after it */
  peek (): Extent | null {
    this.started = true
    const e = this.path.current()
    if (e && e.ino === this.ino && e.off + e.len > this.off) return e
    return this.next()
  }

  next (): Extent | null {
    if (!this.started) return this.peek()
    return pathAdvance(this.path, id => this.trans.load(id), n => this.trans.lockNode(n, this.path.lockType)) ? this.mine(this.path.current()) : null
  }

  /** the extent before the current position */
  prev (): Extent | null {
    this.started = true
    return pathRetreat(this.path, id => this.trans.load(id), n => this.trans.lockNode(n, this.path.lockType)) ? this.mine(this.path.current()) : null
  }
}

type ExtentOp = { kind: 'insert', ext: Extent } | { kind: 'delete', ino: number, start: number, end: number }

export interface CommitResult { freed: Range[] }

export class BtreeTrans implements LockOwner {
  readonly tree: ExtentTree
  readonly id: number
  private paths: BtreePath[] = []
  private held: Array<{ node: BtreeNode, type: LockType }> = []
  private ops: ExtentOp[] = []
  private pendingAllocs: Range[] = []
  private lockEpoch = 0
  private poisoned: BtreeError | null = null
  restarts = 0
  injected = 0

  constructor (tree: ExtentTree, id: number) {
    this.tree = tree
    this.id = id
  }

  // ---- locking primitives ----------------------------------------------

  get locked (): boolean { return this.held.length > 0 }

  checkPoison (): void {
    if (this.poisoned) throw this.poisoned
  }

  load (id: number): BtreeNode {
    return this.tree.cache.get(id)
  }

  /** trylock or restart: never wait for a lock */
  lockNode (node: BtreeNode, type: LockType): void {
    this.checkPoison()
    if (!node.lock.trylock(this, type)) {
      throw new TransRestart('would_deadlock', `node ${node.id} ${type} held by another transaction`)
    }
    this.noteHeld(node, type)
  }

  /** record a lock just taken; the first one arms the debug watchdog */
  private noteHeld (node: BtreeNode, type: LockType): void {
    this.held.push({ node, type })
    if (this.held.length === 1) this.armWatchdog()
  }

  private armWatchdog (): void {
    if (!this.tree.opts.debugChecks) return
    const epoch = ++this.lockEpoch
    setImmediate(() => {
      if (this.held.length === 0 || this.lockEpoch !== epoch) return
      this.tree.stats.lockHeldAcrossAwait++
      this.poisoned = new BtreeError('lock_held_across_await',
        `transaction ${this.id} held ${this.held.length} node lock(s) across an await; wait only inside dropLocksDo()`)
      this.unlockAll()
    })
  }

  unlockAll (): void {
    for (let i = this.held.length - 1; i >= 0; i--) this.held[i].node.lock.unlock(this, this.held[i].type)
    this.held = []
    this.lockEpoch++
  }

  /** re-take every path's locks; restart if any node changed meanwhile */
  relock (): void {
    this.checkPoison()
    this.maybeInject('relock')
    const cache = this.tree.cache
    for (const p of this.paths) {
      let ok = p.rootSeq === this.tree.rootSeq
      for (const lv of p.levels) {
        if (!ok) break
        ok = cache.peek(lv.node.id) === lv.node && lv.node.seq === lv.seq && lv.node.lock.trylock(this, p.lockType)
        if (ok) this.noteHeld(lv.node, p.lockType)
      }
      if (!ok) {
        this.unlockAll()
        throw new TransRestart('relock')
      }
    }
  }

  maybeInject (where: string): void {
    const o = this.tree.opts
    if (o.injectRestarts > 0 && this.injected < o.injectMaxPerTrans && o.random() < o.injectRestarts) {
      this.injected++
      throw new TransRestart('injected', where)
    }
  }

  // ---- lifecycle -------------------------------------------------------

  /** start (or restart) the transaction body: drop locks, paths, queued work */
  begin (): void {
    this.checkPoison()
    this.reset()
  }

  /** end of lockrestartDo: nothing stays locked or reserved */
  end (): void {
    this.reset()
    this.tree.releaseSerial(this)
  }

  private reset (): void {
    this.unlockAll()
    this.paths = []
    this.ops = []
    this.rollbackAllocs()
  }

  noteRestart (reason: RestartReason): void {
    this.restarts++
    this.tree.noteRestart(reason)
    const s = this.tree.stats
    if (this.restarts > s.maxRestartsOneTrans) s.maxRestartsOneTrans = this.restarts
    if (this.restarts >= HARD_RESTARTS) throw new BtreeError('restart_limit', `transaction ${this.id} restarted ${this.restarts} times (last: ${reason})`)
    if (this.restarts >= FAIR_RESTARTS) this.tree.takeSerial(this)
  }

  private rollbackAllocs (): void {
    for (const r of this.pendingAllocs) this.tree.alloc.release(r.pblk, r.len)
    this.pendingAllocs = []
  }

  // ---- paths and lookups -----------------------------------------------

  private traverse (p: BtreePath): void {
    this.maybeInject('traverse')
    p.rootSeq = this.tree.rootSeq
    pathSeek(p, this.tree.meta.rootId, id => this.load(id), n => this.lockNode(n, p.lockType))
  }

  getPath (pos: Pos, type: 'read' | 'intent'): BtreePath {
    this.checkPoison()
    if (this.paths.length >= MAX_PATHS) throw new TransRestart('too_many_paths')
    const p = new BtreePath(type, { ino: pos.ino, off: pos.off })
    this.paths.push(p)
    this.traverse(p)
    return p
  }

  /**
   * Intent path for an update at pos. Updates landing in a leaf that an
   * intent path already covers share it (cf. bcachefs path reuse), so a
   * transaction may queue many updates to one region without running out
   * of paths.
   */
  private updatePath (pos: Pos): void {
    this.checkPoison()
    const mark = this.held.length
    const p = new BtreePath('intent', { ino: pos.ino, off: pos.off })
    this.traverse(p)
    if (this.paths.some(q => q.lockType === 'intent' && q.leaf.node === p.leaf.node)) {
      for (let i = this.held.length - 1; i >= mark; i--) this.held[i].node.lock.unlock(this, this.held[i].type)
      this.held.length = mark
      return
    }
    if (this.paths.length >= MAX_PATHS) throw new TransRestart('too_many_paths')
    this.paths.push(p)
  }

  iter (ino: number, off: number): BtreeIter {
    return new BtreeIter(this, this.getPath({ ino, off }, 'read'), ino, off)
  }

  /** the extent mapping block off of ino, or null for a hole */
  lookup (ino: number, off: number): Extent | null {
    const e = this.getPath({ ino, off }, 'read').current()
    return e && e.ino === ino && e.off + e.len > off ? { ...e } : null
  }

  /** committed extents overlapping [start, end) of ino, in order */
  extentsIn (ino: number, start: number, end: number): Extent[] {
    const it = this.iter(ino, start)
    const out: Extent[] = []
    for (let e = it.peek(); e && e.off < end; e = it.next()) out.push({ ...e })
    return out
  }

  /** physical block where data for (ino, off) would continue the file */
  allocHint (ino: number, off: number): number {
    const it = this.iter(ino, off)
    let e = it.peek()
    if (!e || e.off > off) e = it.prev()
    if (!e) return 0
    return e.off <= off && off <= e.off + e.len ? e.pblk + (off - e.off) : e.pblk + e.len
  }

  /** reserve up to want blocks near hint; released again if the transaction restarts */
  alloc (want: number, hint: number): Range | null {
    const r = this.tree.alloc.alloc(want, hint)
    if (r) this.pendingAllocs.push(r)
    return r
  }

  // ---- updates ---------------------------------------------------------

  /** map [ext.off, ext.off+ext.len) of ext.ino to ext.pblk..., replacing what was there */
  insertExtent (ext: Extent): void {
    if (ext.len <= 0 || ext.len > MAX_EXTENT_LEN) throw new BtreeError('trans_misuse', `bad extent length ${ext.len}`)
    this.updatePath(ext)
    this.ops.push({ kind: 'insert', ext: { ...ext } })
  }

  /** unmap [start, end) of ino (truncate, punch); freed blocks return at commit */
  deleteRange (ino: number, start: number, end: number): void {
    if (end <= start) return
    this.updatePath({ ino, off: start })
    this.ops.push({ kind: 'delete', ino, start, end })
  }

  /**
   * Apply the queued updates under write locks and write every dirtied node,
   * the tree meta and the free-space changes in one SQLite transaction (the
   * caller's, when it already has one open). hook runs inside it.
   */
  commit (hook?: (freed: Range[]) => void): CommitResult {
    this.checkPoison()
    this.maybeInject('commit')
    if (!this.locked && this.paths.length) this.relock()
    const m = new Mutator(this)
    let freed: Range[] = []
    try {
      for (const op of this.ops) {
        freed = freed.concat(op.kind === 'insert' ? m.insertExtent(op.ext) : m.cut(op.ino, op.start, op.end))
      }
    } catch (err) {
      m.rollback()
      throw err
    }
    const tree = this.tree
    const released: Range[] = []
    try {
      tree.db.transaction(() => {
        m.persist()
        for (const r of freed) { tree.alloc.release(r.pblk, r.len); released.push(r) }
        tree.alloc.persist(tree.db)
        if (hook) hook(freed)
      })()
    } catch (err) {
      for (const r of released) tree.alloc.take(r.pblk, r.len)
      tree.metaRolledBack()
      m.rollback()
      throw err
    }
    m.finish()
    this.pendingAllocs = [] // now owned by committed extents
    this.ops = []
    this.unlockAll()
    this.paths = []
    tree.cache.trim()
    tree.stats.commits++
    return { freed }
  }
}

/** Applies extent updates to nodes at commit time, with undo on failure. */
class Mutator {
  private readonly wset = new Map<BtreeNode, ReturnType<BtreeNode['snapshot']>>()
  private readonly created: BtreeNode[] = []
  private readonly freedNodes: BtreeNode[] = []
  private readonly meta: { rootId: number, height: number, nextId: number }
  private readonly leafCap: number
  private readonly intCap: number

  constructor (private readonly trans: BtreeTrans) {
    this.meta = { ...trans.tree.meta }
    this.leafCap = leafCapacity(trans.tree.pageSize)
    this.intCap = interiorCapacity(trans.tree.pageSize)
  }

  private get tree (): ExtentTree { return this.trans.tree }

  /** write-lock node for modification (intent then write), snapshot it once */
  private mutate (node: BtreeNode): void {
    if (this.wset.has(node)) return
    const t = this.trans
    if (!node.lock.trylock(t, 'intent')) throw new TransRestart('upgrade', `node ${node.id}`)
    if (!node.lock.trylock(t, 'write')) {
      node.lock.unlock(t, 'intent')
      throw new TransRestart('upgrade', `node ${node.id} has other readers`)
    }
    node.seq++ // odd: write locked
    this.wset.set(node, node.snapshot())
    node.dirty = true
  }

  private newNode (level: number): BtreeNode {
    const n = this.tree.newNode(level)
    this.created.push(n)
    this.mutate(n)
    return n
  }

  private freeNode (n: BtreeNode): void {
    this.mutate(n)
    this.freedNodes.push(n)
  }

  private readonly load: Loader = id => this.trans.load(id)

  /** routing stack for pos; nodes are write-locked only when modified (mutate) */
  private descend (pos: Pos): Level[] {
    return descend(pos, this.tree.meta.rootId, this.load, () => {})
  }

  private cap (n: BtreeNode): number { return n.isLeaf ? this.leafCap : this.intCap }

  private insertKey (e: Extent): void {
    const stack = this.descend(e)
    const top = stack[stack.length - 1]
    const leaf = top.node
    this.mutate(leaf)
    if (top.idx >= 0 && cmpPos(leaf.extents[top.idx], e) === 0) leaf.extents[top.idx] = e
    else leaf.extents.splice(top.idx + 1, 0, e)
    if (leaf.extents.length > this.leafCap) this.split(stack, stack.length - 1, top.idx + 2 === leaf.extents.length)
  }

  /** is stack[k] the rightmost node of its level? */
  private rightmost (stack: Level[], k: number): boolean {
    for (let j = 0; j < k; j++) if (stack[j].idx !== stack[j].node.children.length - 1) return false
    return true
  }

  /**
   * Split an overfull node in two. When the overflow came from appending at
   * the right edge of the tree (sequential writes), move only the new entry
   * (SQLite's balance_quick) so left nodes stay full instead of half full.
   */
  private split (stack: Level[], k: number, appended: boolean): void {
    const node = stack[k].node
    const mid = appended && this.rightmost(stack, k) ? node.count - 1 : node.count >> 1
    const right = this.newNode(node.level)
    if (node.isLeaf) {
      right.extents = node.extents.splice(mid)
    } else {
      right.keys = node.keys.splice(mid)
      right.children = node.children.splice(mid)
    }
    const min = right.minKey() as Pos
    const sep = { ino: min.ino, off: min.off }
    if (k === 0) {
      const root = this.newNode(node.level + 1)
      root.keys = [{ ino: 0, off: 0 }, sep]
      root.children = [node.id, right.id]
      this.tree.meta.rootId = root.id
      this.tree.meta.height++
      this.tree.rootSeq++
      return
    }
    const parent = stack[k - 1]
    this.mutate(parent.node)
    parent.node.keys.splice(parent.idx + 1, 0, sep)
    parent.node.children.splice(parent.idx + 1, 0, right.id)
    if (parent.node.children.length > this.intCap) this.split(stack, k - 1, parent.idx + 2 === parent.node.children.length)
  }

  private deleteKey (pos: Pos): void {
    const stack = this.descend(pos)
    const top = stack[stack.length - 1]
    if (top.idx < 0 || cmpPos(top.node.extents[top.idx], pos) !== 0) throw new BtreeError('trans_misuse', `delete of missing key ${pos.ino}:${pos.off}`)
    this.mutate(top.node)
    top.node.extents.splice(top.idx, 1)
    this.rebalance(stack, stack.length - 1)
  }

  private rebalance (stack: Level[], k: number): void {
    const node = stack[k].node
    if (k === 0) {
      if (!node.isLeaf && node.children.length === 1) {
        this.tree.meta.rootId = node.children[0]
        this.tree.meta.height--
        this.tree.rootSeq++
        this.freeNode(node)
      }
      return
    }
    const min = Math.floor(this.cap(node) / 2)
    if (node.count >= min) return
    const parent = stack[k - 1].node
    const pi = stack[k - 1].idx
    if (parent.children.length === 1) {
      // an only child (left by a right-edge split) has no sibling: fix the parent instead
      this.rebalance(stack, k - 1)
      return
    }
    this.mutate(parent)
    this.mutate(node)
    if (pi > 0) {
      const left = this.load(parent.children[pi - 1])
      this.mutate(left)
      if (left.count > min) {
        if (node.isLeaf) {
          node.extents.unshift(left.extents.pop() as Extent)
          parent.keys[pi] = { ino: node.extents[0].ino, off: node.extents[0].off }
        } else {
          const kc = left.keys.pop() as Pos
          node.children.unshift(left.children.pop() as number)
          node.keys = [kc, parent.keys[pi], ...node.keys.slice(1)]
          parent.keys[pi] = kc
        }
        return
      }
      if (node.isLeaf) left.extents.push(...node.extents)
      else {
        left.keys.push(parent.keys[pi], ...node.keys.slice(1))
        left.children.push(...node.children)
      }
      parent.keys.splice(pi, 1)
      parent.children.splice(pi, 1)
      this.freeNode(node)
    } else {
      const right = this.load(parent.children[pi + 1])
      this.mutate(right)
      if (right.count > min) {
        if (node.isLeaf) {
          node.extents.push(right.extents.shift() as Extent)
          parent.keys[pi + 1] = { ino: right.extents[0].ino, off: right.extents[0].off }
        } else {
          node.keys.push(parent.keys[pi + 1])
          node.children.push(right.children.shift() as number)
          right.keys.shift()
          parent.keys[pi + 1] = right.keys[0]
        }
        return
      }
      if (node.isLeaf) node.extents.push(...right.extents)
      else {
        node.keys.push(parent.keys[pi + 1], ...right.keys.slice(1))
        node.children.push(...right.children)
      }
      parent.keys.splice(pi + 1, 1)
      parent.children.splice(pi + 1, 1)
      this.freeNode(right)
    }
    this.rebalance(stack, k - 1)
  }

  private seek (pos: Pos): BtreePath {
    const p = new BtreePath('read', pos)
    pathSeek(p, this.tree.meta.rootId, this.load, () => {})
    return p
  }

  /** extents of ino overlapping [start, end), read at commit time */
  private overlapping (ino: number, start: number, end: number): Extent[] {
    const p = this.seek({ ino, off: start })
    const next = (): Extent | null => pathAdvance(p, this.load, () => {}) ? p.current() : null
    const out: Extent[] = []
    let e = p.current()
    if (!e || e.ino !== ino || e.off + e.len <= start) e = next()
    while (e && e.ino === ino && e.off < end) {
      if (e.off + e.len > start) out.push({ ...e })
      e = next()
    }
    return out
  }

  /** the last extent with key <= pos */
  private findKey (pos: Pos): Extent | null {
    return this.seek(pos).current()
  }

  /** unmap [start, end): cut extents at the front, back or middle; return freed blocks */
  cut (ino: number, start: number, end: number): Range[] {
    const freed: Range[] = []
    for (const e of this.overlapping(ino, start, end)) {
      const s = Math.max(e.off, start)
      const t = Math.min(e.off + e.len, end)
      freed.push({ pblk: e.pblk + (s - e.off), len: t - s })
      this.deleteKey(e)
      if (e.off < s) this.insertKey({ ...e, len: s - e.off })
      if (t < e.off + e.len) this.insertKey({ ino, off: t, len: e.off + e.len - t, pblk: e.pblk + (t - e.off), flags: e.flags })
    }
    return freed
  }

  /** overwrite [e.off, e.off+e.len) with e, merging with contiguous neighbours */
  insertExtent (e: Extent): Range[] {
    const freed = this.cut(e.ino, e.off, e.off + e.len)
    let ne = { ...e }
    if (e.off > 0) {
      const left = this.findKey({ ino: e.ino, off: e.off - 1 })
      if (left && left.ino === e.ino && left.off + left.len === e.off && left.pblk + left.len === e.pblk &&
          left.flags === e.flags && left.len + ne.len <= MAX_EXTENT_LEN) {
        this.deleteKey(left)
        ne = { ...ne, off: left.off, pblk: left.pblk, len: left.len + ne.len }
      }
    }
    const right = this.findKey({ ino: e.ino, off: e.off + e.len })
    if (right && right.ino === e.ino && right.off === e.off + e.len && right.pblk === e.pblk + e.len &&
        right.flags === e.flags && right.len + ne.len <= MAX_EXTENT_LEN) {
      this.deleteKey(right)
      ne = { ...ne, len: ne.len + right.len }
    }
    this.insertKey(ne)
    return freed
  }

  /** inside the commit's SQLite transaction */
  persist (): void {
    const tree = this.tree
    const freedIds = new Set(this.freedNodes.map(n => n.id))
    for (const n of this.wset.keys()) if (!freedIds.has(n.id)) tree.cache.write(n)
    for (const id of freedIds) tree.cache.erase(id)
    tree.writeMeta()
  }

  private releaseLocks (): void {
    const t = this.trans
    for (const n of this.wset.keys()) {
      n.seq++ // even again
      n.lock.unlock(t, 'write')
      n.lock.unlock(t, 'intent')
    }
  }

  finish (): void {
    this.releaseLocks()
    for (const n of this.freedNodes) this.tree.cache.drop(n.id)
  }

  rollback (): void {
    for (const [n, snap] of this.wset) {
      n.restore(snap)
      n.dirty = false
    }
    this.releaseLocks()
    for (const n of this.created) this.tree.cache.drop(n.id)
    this.tree.meta.rootId = this.meta.rootId
    this.tree.meta.height = this.meta.height
    this.tree.meta.nextId = this.meta.nextId
    this.tree.rootSeq++
  }
}

// ---- retry wrappers (cf. bcachefs lockrestart_do / commit_do / drop_locks_do) ----

/** Run fn, re-running it from a clean state whenever it raises a restart. */
export async function lockrestartDo<T> (trans: BtreeTrans, fn: (trans: BtreeTrans) => T | Promise<T>): Promise<T> {
  try {
    for (;;) {
      await trans.tree.waitSerial(trans)
      trans.begin()
      try {
        const r = await fn(trans)
        trans.checkPoison()
        return r
      } catch (err) {
        if (!isRestart(err)) throw err
        trans.unlockAll()
        trans.noteRestart(err.reason)
        await new Promise<void>(resolve => setImmediate(resolve)) // let the transaction we collided with finish
      }
    }
  } finally {
    trans.end()
  }
}

/** Synchronous lockrestartDo for bodies that never wait (FS operations). */
export function lockrestartDoSync<T> (trans: BtreeTrans, fn: (trans: BtreeTrans) => T): T {
  try {
    for (;;) {
      trans.begin()
      try {
        return fn(trans)
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

/** lockrestartDo of fn followed by a commit. */
export async function commitDo<T> (trans: BtreeTrans, fn: (trans: BtreeTrans) => T | Promise<T>, hook?: (freed: Range[]) => void): Promise<T> {
  return await lockrestartDo(trans, async t => {
    const r = await fn(t)
    t.commit(hook)
    return r
  })
}

/**
 * The only way to wait inside a transaction: drop every lock, await fn,
 * then relock every path, restarting the transaction if any node changed.
 */
export async function dropLocksDo<T> (trans: BtreeTrans, fn: () => T | Promise<T>): Promise<T> {
  trans.checkPoison()
  trans.unlockAll()
  trans.tree.stats.dropLocks++
  const r = await fn()
  trans.relock()
  return r
}

/**
 * Try the nonblocking step first; only if it cannot proceed (returns
 * undefined), do the blocking work with locks dropped and restart the step,
 * since whatever it had looked at may have changed meanwhile.
 */
export async function nonblockingOrDrop<T> (trans: BtreeTrans, tryStep: () => T | undefined, blocking: () => Promise<void>): Promise<T> {
  const r = tryStep()
  if (r !== undefined) return r
  await dropLocksDo(trans, blocking)
  throw new TransRestart('drop_locks')
}
