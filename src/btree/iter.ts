// Iterators over one inode's extents (cf. bcachefs btree_iter): a path
// owned by the iterator plus a position. Everything an iterator visits is
// read-locked through its transaction and stays in the transaction's read
// set until the step ends, so relock after dropLocksDo validates all of it.
//
// Returned extents are the node's own objects: copy them ({ ...e }) before
// the step ends or the transaction commits; never mutate them.
import type { Extent } from './node'
import { BtreePath, pathAdvance, pathRetreat, type NodeSource } from './path'

export interface IterOwner {
  /** a read path positioned at the last key <= (ino, off) */
  seekPath: (ino: number, off: number) => BtreePath
  readonly source: NodeSource
}

export class BtreeIter {
  private path: BtreePath
  private started = false

  constructor (private readonly owner: IterOwner, readonly ino: number, private pos: number) {
    this.path = owner.seekPath(ino, pos)
  }

  private mine (e: Extent | null): Extent | null {
    return e !== null && e.ino === this.ino ? e : null
  }

  /** re-position at off (cf. bch2_btree_iter_set_pos) */
  setPos (off: number): void {
    this.pos = off
    this.started = false
    this.path = this.owner.seekPath(this.ino, off)
  }

  /** the extent containing the position, else the first one after it, else null */
  peek (): Extent | null {
    this.started = true
    const e = this.path.current()
    if (e && e.ino === this.ino && e.off + e.len > this.pos) return e
    return this.next()
  }

  /** like peek, but null unless the extent starts before end */
  peekMax (end: number): Extent | null {
    const e = this.peek()
    return e && e.off < end ? e : null
  }

  next (): Extent | null {
    if (!this.started) return this.peek()
    return pathAdvance(this.path, this.owner.source) ? this.mine(this.path.current()) : null
  }

  /** the extent before the current position */
  prev (): Extent | null {
    this.started = true
    return pathRetreat(this.path, this.owner.source) ? this.mine(this.path.current()) : null
  }
}
