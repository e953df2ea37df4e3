// Paths: a root-to-leaf list of (node, seq, index) positioned at a key.
//
// These are pure walking primitives. They take a NodeSource that loads and
// locks; the transaction's source records every node it locks in its read
// set (trans.ts), the commit-time source locks nothing (the committer
// already holds what it needs, interior.ts). A Level's idx is the child
// index in interior levels and the key index in the leaf.
//
// Misuse to avoid: a path is a snapshot of positions in node objects. It is
// valid only while the nodes are locked or their sequence numbers are
// re-checked (relock); never keep walking a path after dropping locks.
import { type BtreeNode, type Extent, type Pos } from './node'
import type { LockType } from './locks'

export interface Level { node: BtreeNode, idx: number }

export interface NodeSource {
  load: (id: number) => BtreeNode
  lock: (node: BtreeNode, type: LockType) => void
}

export class BtreePath {
  levels: Level[] = []
  constructor (readonly lockType: 'read' | 'intent', public pos: Pos) {}

  get leaf (): Level { return this.levels[this.levels.length - 1] }

  /** the leaf entry the path points at, or null (before the first / after the last) */
  current (): Extent | null {
    const l = this.leaf
    return l.idx >= 0 && l.idx < l.node.extents.length ? l.node.extents[l.idx] : null
  }
}

/** Root-to-leaf levels routed by pos; the leaf index is the last key <= pos in that leaf, or -1. */
export function descend (pos: Pos, rootId: number, src: NodeSource, type: LockType): Level[] {
  const levels: Level[] = []
  let node = src.load(rootId)
  for (;;) {
    src.lock(node, type)
    if (node.isLeaf) {
      levels.push({ node, idx: node.seekLE(pos) })
      return levels
    }
    const i = node.childIndex(pos)
    levels.push({ node, idx: i })
    node = src.load(node.children[i])
  }
}

/**
 * Position p at the last key <= p.pos. Separators are lower bounds of
 * their child, so that key may sit at the end of the previous leaf: step
 * back into it when the leaf has none <= pos.
 */
export function pathSeek (p: BtreePath, rootId: number, src: NodeSource): void {
  p.levels = descend(p.pos, rootId, src, p.lockType)
  if (p.leaf.idx < 0) pathRetreat(p, src)
}

/** Position p at the first key >= pos (current() is null past the last key). */
export function pathSeekGE (p: BtreePath, rootId: number, src: NodeSource): void {
  pathSeek(p, rootId, src)
  const e = p.current()
  if (e === null || (e.ino - p.pos.ino || e.off - p.pos.off) < 0) pathAdvance(p, src)
}

/** Step p to the next leaf entry, across leaves. False at the end of the tree. */
export function pathAdvance (p: BtreePath, src: NodeSource): boolean {
  const L = p.levels.length - 1
  const leaf = p.levels[L]
  if (leaf.idx + 1 < leaf.node.extents.length) { leaf.idx++; return true }
  let l = L - 1
  while (l >= 0 && p.levels[l].idx + 1 >= p.levels[l].node.children.length) l--
  if (l < 0) { leaf.idx = leaf.node.extents.length; return false }
  p.levels[l].idx++
  for (let k = l + 1; k <= L; k++) {
    const parent = p.levels[k - 1]
    const node = src.load(parent.node.children[parent.idx])
    src.lock(node, p.lockType)
    p.levels[k] = { node, idx: 0 }
  }
  return p.leaf.node.extents.length > 0
}

/** Step p to the previous leaf entry, across leaves. False at the start of the tree. */
export function pathRetreat (p: BtreePath, src: NodeSource): boolean {
  const L = p.levels.length - 1
  const leaf = p.levels[L]
  if (leaf.idx - 1 >= 0) { leaf.idx--; return true }
  let l = L - 1
  while (l >= 0 && p.levels[l].idx === 0) l--
  if (l < 0) { leaf.idx = -1; return false }
  p.levels[l].idx--
  for (let k = l + 1; k <= L; k++) {
    const parent = p.levels[k - 1]
    const node = src.load(parent.node.children[parent.idx])
    src.lock(node, p.lockType)
    p.levels[k] = { node, idx: node.count - 1 }
  }
  return p.leaf.idx >= 0
}
