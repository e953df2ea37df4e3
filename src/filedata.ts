// File data: logical blocks of an inode map through the extent B-tree to
// physical blocks, whose bytes live in the blocks table (one row per 4 KiB
// block, keyed by physical block number). Every change runs as a B-tree
// transaction (lockrestartDoSync) whose commit hook writes the block rows,
// so the mapping, the free-space map and the data commit together.
import type Database from 'better-sqlite3'
import { fsErr } from './errno'
import { BLOCK_SIZE } from './image'
import { ExtentTree, type TreeOptions, type TreeStats } from './btree/tree'
import { lockrestartDoSync } from './btree/trans'
import type { Range } from './btree/alloc'
import { EXT_WRITTEN, type Extent } from './btree/node'

const END = Number.MAX_SAFE_INTEGER

export class FileData {
  tree: ExtentTree
  private readonly q

  constructor (private readonly db: Database.Database, private readonly opts: TreeOptions) {
    this.tree = ExtentTree.open(db, opts)
    this.q = {
      get: db.prepare('SELECT bytes FROM blocks WHERE pblk = ?').pluck(),
      range: db.prepare('SELECT pblk, bytes FROM blocks WHERE pblk >= ? AND pblk < ?'),
      put: db.prepare('INSERT OR REPLACE INTO blocks (pblk, bytes) VALUES (?, ?)'),
      del: db.prepare('DELETE FROM blocks WHERE pblk >= ? AND pblk < ?')
    }
  }

  get used (): number { return this.tree.alloc.total - this.tree.alloc.free }
  get stats (): TreeStats { return this.tree.snapshotStats() }

  /** shape of the tree and free space, for `foliofs stats` */
  summary (): { height: number, freeFragments: number } {
    return { height: this.tree.meta.height, freeFragments: this.tree.alloc.fragments }
  }

  /** Re-read tree and free space from the image (after a failed outer commit). */
  reload (): void {
    const stats = this.tree.stats
    this.tree = ExtentTree.open(this.db, this.opts)
    Object.assign(this.tree.stats, stats)
  }

  private dropRows (freed: Range[]): void {
    for (const r of freed) this.q.del.run(r.pblk, r.pblk + r.len)
  }

  extents (ino: number, start = 0, end = END): Extent[] {
    return lockrestartDoSync(this.tree.trans(), t => t.extentsIn(ino, start, end))
  }

  /** Fill buf[0, n) with bytes [pos, pos+n) of ino; holes read as zeros. */
  read (ino: number, buf: Buffer, pos: number, n: number): void {
    buf.fill(0, 0, n)
    const first = Math.floor(pos / BLOCK_SIZE)
    const last = Math.floor((pos + n - 1) / BLOCK_SIZE)
    for (const e of this.extents(ino, first, last + 1)) {
      const lo = Math.max(e.off, first)
      const hi = Math.min(e.off + e.len, last + 1)
      for (const r of this.q.range.iterate(e.pblk + (lo - e.off), e.pblk + (hi - e.off)) as Iterable<{ pblk: number, bytes: Buffer }>) {
        const bstart = (e.off + (r.pblk - e.pblk)) * BLOCK_SIZE
        const from = Math.max(pos, bstart)
        const to = Math.min(pos + n, bstart + r.bytes.length)
        if (to > from) r.bytes.copy(buf, from - pos, from - bstart, to - bstart)
      }
    }
  }

  /**
   * Write data at pos. Holes get newly allocated blocks, contiguous with the
   * file's previous extent where possible; mapped blocks are overwritten in
   * place. after() runs inside the same commit. Returns blocks allocated.
   */
  write (ino: number, data: Buffer, pos: number, after: (added: number) => void): number {
    const len = data.length
    const first = Math.floor(pos / BLOCK_SIZE)
    const last = Math.floor((pos + len - 1) / BLOCK_SIZE)
    return lockrestartDoSync(this.tree.trans(), t => {
      const map = new Map<number, number>() // logical block -> physical block
      const fresh = new Set<number>()
      for (const e of t.extentsIn(ino, first, last + 1)) {
        for (let b = Math.max(e.off, first); b < Math.min(e.off + e.len, last + 1); b++) map.set(b, e.pblk + (b - e.off))
      }
      let added = 0
      for (let b = first; b <= last;) {
        if (map.has(b)) { b++; continue }
        let end = b
        while (end <= last && !map.has(end)) end++
        let hint = t.allocHint(ino, b)
        for (let cur = b; cur < end;) {
          const r = t.alloc(end - cur, hint)
          if (!r) throw fsErr('ENOSPC')
          t.insertExtent({ ino, off: cur, len: r.len, pblk: r.pblk, flags: EXT_WRITTEN })
          for (let k = 0; k < r.len; k++) { map.set(cur + k, r.pblk + k); fresh.add(cur + k) }
          cur += r.len
          added += r.len
          hint = r.pblk + r.len
        }
        b = end
      }
      t.commit(freed => {
        this.dropRows(freed)
        for (let b = first; b <= last; b++) {
          const pblk = map.get(b) as number
          const bstart = b * BLOCK_SIZE
          const from = Math.max(pos, bstart)
          const to = Math.min(pos + len, bstart + BLOCK_SIZE)
          let block: Buffer
          if (from === bstart && to === bstart + BLOCK_SIZE) {
            block = Buffer.from(data.subarray(from - pos, to - pos)) // copy: FUSE buffers are detached after the reply
          } else {
            block = Buffer.alloc(BLOCK_SIZE)
            if (!fresh.has(b)) (this.q.get.get(pblk) as Buffer | undefined)?.copy(block)
            data.copy(block, from - bstart, from - pos, to - pos)
          }
          this.q.put.run(pblk, block)
        }
        after(added)
      })
      return added
    })
  }

  /** Unmap everything at or past size and zero the tail of the last block. Returns blocks freed. */
  truncate (ino: number, size: number): number {
    const keep = Math.ceil(size / BLOCK_SIZE)
    const tail = size % BLOCK_SIZE
    return lockrestartDoSync(this.tree.trans(), t => {
      const last = tail !== 0 ? t.lookup(ino, keep - 1) : null
      t.deleteRange(ino, keep, END)
      let n = 0
      t.commit(freed => {
        this.dropRows(freed)
        n = freed.reduce((s, r) => s + r.len, 0)
        if (last) {
          const pblk = last.pblk + (keep - 1 - last.off)
          const old = this.q.get.get(pblk) as Buffer | undefined
          if (old) {
            const block = Buffer.from(old)
            block.fill(0, tail)
            this.q.put.run(pblk, block)
          }
        }
      })
      return n
    })
  }

  /** Unmap and free all of ino's blocks. Returns blocks freed. */
  free (ino: number): number {
    return this.truncate(ino, 0)
  }
}
