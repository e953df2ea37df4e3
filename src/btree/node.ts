// B-tree nodes and their page format. A node is one fixed-size page stored
// as one SQLite row. Like an SQLite b-tree page it starts with a small
// header (type, cell count, level) followed by sorted cells; unlike SQLite,
// cells are fixed-size (no cell pointer array or varints) because keys and
// values are fixed-width, which makes a page a plain sorted array.
//
//   header (16 bytes)
//     0  u8   page type: 0x0d leaf, 0x05 interior (SQLite's table page types)
//     1  u8   format version (1)
//     2  u16  number of cells
//     4  u32  level (0 = leaf)
//     8  u32  crc32 of bytes 12..pageSize
//    12  u32  page size
//   leaf cell (32 bytes):      ino u64 | off u64 | pblk u64 | len u32 | flags u32
//   interior cell (24 bytes):  ino u64 | off u64 | child node id u64
// All integers big-endian; u64 values stay below 2^53 (exact in JS numbers).
import { crc32 } from '../crc'
import { BtreeError } from './errors'
import { NodeLock } from './locks'

export const PAGE_LEAF = 0x0d
export const PAGE_INTERIOR = 0x05
export const HEADER_SIZE = 16
export const LEAF_CELL = 32
export const INTERIOR_CELL = 24

/** extent flags */
export const EXT_WRITTEN = 0
export const EXT_UNWRITTEN = 1

export interface Pos { ino: number, off: number }
export interface Extent extends Pos { len: number, pblk: number, flags: number }

export const cmpPos = (a: Pos, b: Pos): number => (a.ino - b.ino) || (a.off - b.off)

export const leafCapacity = (pageSize: number): number => Math.floor((pageSize - HEADER_SIZE) / LEAF_CELL)
export const interiorCapacity = (pageSize: number): number => Math.floor((pageSize - HEADER_SIZE) / INTERIOR_CELL)

export class BtreeNode {
  readonly id: number
  level: number
  /** leaf: extents sorted by (ino, off) */
  extents: Extent[]
  /** interior: keys[i] is the lowest key that may live in children[i] (keys[0] acts as -infinity) */
  keys: Pos[]
  children: number[]
  /** bumped on every write lock and unlock: odd while write locked */
  seq = 0
  dirty = false
  /** transactions whose read set holds this node (the cache keeps pinned nodes) */
  pins = 0
  /** node cache LRU clock */
  lastUse = 0
  readonly lock = new NodeLock()

  constructor (id: number, level: number) {
    this.id = id
    this.level = level
    this.extents = []
    this.keys = []
    this.children = []
  }

  get isLeaf (): boolean { return this.level === 0 }
  get count (): number { return this.isLeaf ? this.extents.length : this.children.length }

  /** lowest key in this node */
  minKey (): Pos | undefined {
    return this.isLeaf ? this.extents[0] : this.keys[0]
  }

  /** index of the child that covers pos (interior nodes) */
  childIndex (pos: Pos): number {
    let lo = 1
    let hi = this.keys.length - 1
    let ans = 0
    while (lo <= hi) {
      const mid = (lo + hi) >> 1
      if (cmpPos(this.keys[mid], pos) <= 0) { ans = mid; lo = mid + 1 } else hi = mid - 1
    }
    return ans
  }

  /** leaf: index of the last extent with key <= pos, or -1 */
  seekLE (pos: Pos): number {
    let lo = 0
    let hi = this.extents.length - 1
    let ans = -1
    while (lo <= hi) {
      const mid = (lo + hi) >> 1
      if (cmpPos(this.extents[mid], pos) <= 0) { ans = mid; lo = mid + 1 } else hi = mid - 1
    }
    return ans
  }

  /**
   * For rollback. Shallow: extent and key objects in a node are never
   * changed in place (edits replace them; readers get copies), so copying
   * the arrays is enough (copying every extent of every leaf a truncate
   * touched was a million allocations per million extents).
   */
  snapshot (): { level: number, extents: Extent[], keys: Pos[], children: number[] } {
    return { level: this.level, extents: this.extents.slice(), keys: this.keys.slice(), children: this.children.slice() }
  }

  restore (s: { level: number, extents: Extent[], keys: Pos[], children: number[] }): void {
    this.level = s.level
    this.extents = s.extents
    this.keys = s.keys
    this.children = s.children
  }
}

function putU64 (b: Buffer, at: number, v: number): void {
  b.writeUInt32BE(Math.floor(v / 0x100000000), at)
  b.writeUInt32BE(v >>> 0, at + 4)
}

function getU64 (b: Buffer, at: number): number {
  return b.readUInt32BE(at) * 0x100000000 + b.readUInt32BE(at + 4)
}

export function serializeNode (n: BtreeNode, pageSize: number): Buffer {
  const cap = n.isLeaf ? leafCapacity(pageSize) : interiorCapacity(pageSize)
  if (n.count > cap) throw new BtreeError('trans_misuse', `node ${n.id} overfull (${n.count} > ${cap})`)
  const b = Buffer.alloc(pageSize)
  b[0] = n.isLeaf ? PAGE_LEAF : PAGE_INTERIOR
  b[1] = 1
  b.writeUInt16BE(n.count, 2)
  b.writeUInt32BE(n.level, 4)
  b.writeUInt32BE(pageSize, 12)
  let at = HEADER_SIZE
  if (n.isLeaf) {
    for (const e of n.extents) {
      putU64(b, at, e.ino); putU64(b, at + 8, e.off); putU64(b, at + 16, e.pblk)
      b.writeUInt32BE(e.len, at + 24); b.writeUInt32BE(e.flags, at + 28)
      at += LEAF_CELL
    }
  } else {
    for (let i = 0; i < n.children.length; i++) {
      putU64(b, at, n.keys[i].ino); putU64(b, at + 8, n.keys[i].off); putU64(b, at + 16, n.children[i])
      at += INTERIOR_CELL
    }
  }
  b.writeUInt32BE(crc32(b.subarray(12)), 8)
  return b
}

/**
 * The checks of a page that need no node built: size, type, page size
 * field, crc32, cell count. What is wrong, or null. (Mount runs it over
 * every page; deserializeNode runs it and also checks key order.)
 */
export function pageProblem (b: Buffer, pageSize: number): string | null {
  if (b.length !== pageSize) return `page is ${b.length} bytes, expected ${pageSize}`
  if (b[0] !== PAGE_LEAF && b[0] !== PAGE_INTERIOR) return `bad page type 0x${b[0].toString(16)}`
  if (b.readUInt32BE(12) !== pageSize) return 'page size field mismatch'
  if (b.readUInt32BE(8) !== crc32(b.subarray(12))) return 'checksum mismatch'
  const leaf = b[0] === PAGE_LEAF
  if (leaf !== (b.readUInt32BE(4) === 0)) return 'page type does not match level'
  if (b.readUInt16BE(2) > (leaf ? leafCapacity(pageSize) : interiorCapacity(pageSize))) return 'cell count too large'
  return null
}

export function deserializeNode (id: number, b: Buffer, pageSize: number): BtreeNode {
  const bad = (why: string): never => { throw new BtreeError('node_corrupt', `node ${id}: ${why}`) }
  const problem = pageProblem(b, pageSize)
  if (problem) bad(problem)
  const leaf = b[0] === PAGE_LEAF
  const count = b.readUInt16BE(2)
  const level = b.readUInt32BE(4)
  const n = new BtreeNode(id, level)
  let at = HEADER_SIZE
  for (let i = 0; i < count; i++) {
    if (leaf) {
      n.extents.push({ ino: getU64(b, at), off: getU64(b, at + 8), pblk: getU64(b, at + 16), len: b.readUInt32BE(at + 24), flags: b.readUInt32BE(at + 28) })
      at += LEAF_CELL
    } else {
      n.keys.push({ ino: getU64(b, at), off: getU64(b, at + 8) })
      n.children.push(getU64(b, at + 16))
      at += INTERIOR_CELL
    }
  }
  const ks: Pos[] = leaf ? n.extents : n.keys
  for (let i = 1; i < ks.length; i++) if (cmpPos(ks[i - 1], ks[i]) >= 0) bad('keys out of order')
  return n
}
