// Commit-time tree edits: apply queued updates to nodes, with splits,
// borrows, merges and undo (cf. bcachefs btree_update_interior.c).
//
// The Applier runs synchronously inside BtreeTrans.commit(). It re-descends
// from the root for every edit (the committing transaction's own paths may
// be stale after its earlier edits) and write-locks each node before its
// first change, snapshotting it for rollback. It never waits: a node it
// cannot write-lock is an 'upgrade' restart of the whole transaction.
//
// Invariants kept (and checked by ExtentTree.verify):
//  - leaf keys (ino, off) strictly ascending across the whole level;
//  - interior keys[i] is a lower bound of every key under children[i]
//    (keys[0] acts as -infinity), keys ascending;
//  - no non-root node is empty, none exceeds its page capacity;
//  - extents of one inode never overlap, len in [1, MAX_EXTENT_LEN];
//  - extent and key objects in a node are never changed in place (edits
//    put new objects in), so a node's rollback snapshot copies only arrays.
//
// Misuse: nodes loaded here must not be evicted before finish()/rollback()
// (the cache never evicts in get(), only at trim() after the commit).
import { BtreeError } from './errors'
import { type BtreeNode, type Extent, type Pos, cmpPos, interiorCapacity, leafCapacity } from './node'
import { BtreePath, descend, pathSeek, pathSeekGE, type Level, type NodeSource } from './path'
import type { Range } from './rangeset'
import type { ExtentTree } from './tree'

export const MAX_EXTENT_LEN = 1 << 20

/** what the Applier needs from its transaction */
export interface ApplyOwner {
  readonly tree: ExtentTree
  /** raise a restart (the transaction records it) */
  restart: (reason: 'upgrade', detail: string) => never
  readonly owner: import('./locks').LockOwner
}

type Snapshot = ReturnType<BtreeNode['snapshot']>

export class Applier {
  private readonly wset = new Map<BtreeNode, Snapshot>()
  private readonly created: BtreeNode[] = []
  private readonly freedNodes: BtreeNode[] = []
  private readonly meta: { rootId: number, height: number, nextId: number }
  private readonly leafCap: number
  private readonly intCap: number
  private readonly src: NodeSource

  constructor (private readonly t: ApplyOwner) {
    this.meta = { ...t.tree.meta }
    this.leafCap = leafCapacity(t.tree.pageSize)
    this.intCap = interiorCapacity(t.tree.pageSize)
    this.src = { load: id => this.tree.cache.get(id), lock: () => {} }
  }

  private get tree (): ExtentTree { return this.t.tree }

  /** write-lock node for modification (intent then write), snapshot it once */
  private mutate (node: BtreeNode): void {
    if (this.wset.has(node)) return
    const o = this.t.owner
    if (!node.lock.trylock(o, 'intent')) this.t.restart('upgrade', `node ${node.id}`)
    if (!node.lock.trylock(o, 'write')) {
      node.lock.unlock(o, 'intent')
      this.t.restart('upgrade', `node ${node.id} has other readers`)
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

  private descend (pos: Pos): Level[] {
    return descend(pos, this.tree.meta.rootId, this.src, 'read')
  }

  private seek (pos: Pos): BtreePath {
    const p = new BtreePath('read', pos)
    pathSeek(p, this.tree.meta.rootId, this.src)
    return p
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

  /** fix an underfull node at stack[k]: shrink the root, borrow from a sibling, or merge */
  private rebalance (stack: Level[], k: number): void {
    const node = stack[k].node
    if (k === 0) {
      if (!node.isLeaf && node.children.length === 1) {
        this.tree.meta.rootId = node.children[0]
        this.tree.meta.height--
        this.freeNode(node)
      } else if (!node.isLeaf && node.children.length === 0) {
        this.mutate(node) // everything below went away: the root becomes an empty leaf
        node.level = 0
        node.keys = []
        node.children = []
        this.tree.meta.height = 1
      }
      return
    }
    const min = Math.floor(this.cap(node) / 2)
    if (node.count >= min) return
    const parent = stack[k - 1].node
    const pi = stack[k - 1].idx
    if (node.count === 0) {
      // an empty node just leaves its parent (also when it is an only
      // child). Removing child 0 keeps keys[0]: it is the parent's lower
      // bound, and keys routed to the parent below the next separator land
      // in the new child 0 (raising keys[0] broke key order at the next split)
      this.mutate(parent)
      parent.keys.splice(pi === 0 && parent.keys.length > 1 ? 1 : pi, 1)
      parent.children.splice(pi, 1)
      this.freeNode(node)
      this.rebalance(stack, k - 1)
      return
    }
    if (parent.children.length === 1) {
      // an only child (left by a right-edge split) has no sibling: fix the parent instead
      this.rebalance(stack, k - 1)
      return
    }
    this.mutate(parent)
    this.mutate(node)
    if (pi > 0) {
      const left = this.tree.cache.get(parent.children[pi - 1])
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
      const right = this.tree.cache.get(parent.children[pi + 1])
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

  /** the last extent with key <= pos */
  private findKey (pos: Pos): Extent | null {
    return this.seek(pos).current()
  }

  /**
   * Unmap [start, end) of ino: cut extents at the front, back or middle and
   * return the freed blocks. Whole extents are removed a leaf at a time (one
   * splice and one rebalance per leaf), so cost is O(extents + leaves).
   */
  applyCut (ino: number, start: number, end: number): Range[] {
    const freed: Range[] = []
    if (end <= start) return freed
    // an extent that begins before start and reaches into the range
    const head = this.findKey({ ino, off: start })
    if (head && head.ino === ino && head.off < start && head.off + head.len > start) {
      const e = { ...head }
      const t = Math.min(e.off + e.len, end)
      freed.push({ pblk: e.pblk + (start - e.off), len: t - start })
      this.deleteKey(e)
      this.insertKey({ ...e, len: start - e.off })
      if (t < e.off + e.len) {
        this.insertKey({ ino, off: t, len: e.off + e.len - t, pblk: e.pblk + (t - e.off), flags: e.flags })
        return freed
      }
    }
    // every other overlapping extent starts at or after start
    for (;;) {
      const p = new BtreePath('read', { ino, off: start })
      pathSeekGE(p, this.tree.meta.rootId, this.src)
      const leafLv = p.leaf
      const leaf = leafLv.node
      const i = leafLv.idx
      let j = i
      while (j < leaf.extents.length && leaf.extents[j].ino === ino && leaf.extents[j].off + leaf.extents[j].len <= end) j++
      if (j > i) {
        this.mutate(leaf)
        for (const e of leaf.extents.splice(i, j - i)) freed.push({ pblk: e.pblk, len: e.len })
        this.rebalance(p.levels, p.levels.length - 1)
        continue
      }
      const e = p.current()
      if (e && e.ino === ino && e.off < end) { // reaches past end: keep its tail
        const tail = { ...e }
        freed.push({ pblk: tail.pblk, len: end - tail.off })
        this.deleteKey(tail)
        this.insertKey({ ino, off: end, len: tail.off + tail.len - end, pblk: tail.pblk + (end - tail.off), flags: tail.flags })
      }
      return freed
    }
  }

  /** map [e.off, e.off+e.len) to e, replacing what was there, merging with contiguous neighbours */
  applyInsert (e: Extent): Range[] {
    const freed = this.applyCut(e.ino, e.off, e.off + e.len)
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

  /** write every changed node and the meta (inside the commit's SQLite transaction) */
  persist (): void {
    const tree = this.tree
    const freedIds = new Set(this.freedNodes.map(n => n.id))
    for (const n of this.wset.keys()) if (!freedIds.has(n.id)) tree.cache.write(n)
    for (const id of freedIds) tree.cache.erase(id)
    tree.writeMeta()
  }

  private releaseLocks (): void {
    const o = this.t.owner
    for (const n of this.wset.keys()) {
      n.seq++ // even again
      n.lock.unlock(o, 'write')
      n.lock.unlock(o, 'intent')
    }
  }

  /** the commit is in the image */
  finish (): void {
    this.releaseLocks()
    for (const n of this.freedNodes) this.tree.cache.drop(n.id)
  }

  /** undo every edit (a restart during apply, or the SQLite transaction failed) */
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
  }
}
