// File data: logical blocks of an inode map through the extent B-tree to
// physical blocks, whose bytes live in the blocks table (one row per 4 KiB
// block, keyed by physical block number).
//
// Every change is an async B-tree transaction step (lockrestartDo); its
// commit writes the block rows and the caller's inode update in the same
// SQLite transaction (the commit hook), so mapping, free space, data and
// size commit together. Nothing here runs inside an outer SQLite
// transaction (the B-tree refuses that).
//
// Truncation and freeing run in bounded steps (TRUNCATE_BATCH extents per
// transaction, yielding to the event loop in between), like bcachefs's
// fpunch loop: no single step blocks other operations for long, and memory
// stays bounded. Crash safety across steps is the caller's (fs.ts records
// the inode as an orphan before the first step; recovery finishes the job).
import type Database from 'better-sqlite3'
import { fsErr } from './errno'
import { BLOCK_SIZE } from './image'
import { ExtentTree, EXT_WRITTEN, lockrestartDo, lockrestartDoSync, transGet, yieldToLoop, type BtreeTrans, type Extent, type Range, type TreeOptions, type TreeStats } from './btree'

const END = Number.MAX_SAFE_INTEGER
/** extents unmapped per truncate step */
export const TRUNCATE_BATCH = 1024

/** runs inside the commit of each truncate step: blocks freed by it, first and last step */
export type TruncateStep = (freedBlocks: number, first: boolean, last: boolean) => void

export class FileData {
  readonly tree: ExtentTree
  private readonly q

  constructor (private readonly db: Database.Database, opts: TreeOptions) {
    this.tree = ExtentTree.open(db, opts)
    this.q = {
      get: db.prepare('SELECT bytes FROM blocks WHERE pblk = ?').pluck(),
      range: db.prepare('SELECT pblk, bytes FROM blocks WHERE pblk >= ? AND pblk < ?'),
      put: db.prepare('INSERT OR REPLACE INTO blocks (pblk, bytes) VALUES (?, ?)'),
      del: db.prepare('DELETE FROM blocks WHERE pblk >= ? AND pblk < ?'),
      delMany: db.prepare('DELETE FROM blocks WHERE pblk IN (SELECT value FROM json_each(?))')
    }
  }

  /** blocks mapped by committed extents */
  get used (): number { return this.tree.usedBlocks() }
  /** free blocks (statfs): allocatable now, or after the checkpoint an allocation runs when it needs them */
  get free (): number { return this.tree.alloc.free + this.tree.alloc.pending }
  get stats (): TreeStats { return this.tree.snapshotStats() }

  /** shape of the tree and free space, for `foliofs stats` */
  summary (): ReturnType<ExtentTree['summary']> {
    return this.tree.summary()
  }

  /** delete the block rows of freed ranges: short ranges in one statement, long ones by range */
  /**
   * Make every commit durable (sync the WAL by a checkpoint), so blocks freed
   * by them may be reused. Synchronous; no SQLite transaction may be open.
   */
  checkpoint (): void {
    this.db.pragma('wal_checkpoint(PASSIVE)')
    this.tree.markDurable()
  }

  /** reserve up to want blocks; when the device is full only because frees are not durable yet, checkpoint and retry */
  private allocOrReclaim (t: BtreeTrans, want: number, hint: number): Range | null {
    const r = t.alloc(want, hint)
    if (r !== null || this.tree.alloc.pending === 0) return r
    this.checkpoint()
    return t.alloc(want, hint)
  }

  private dropRows (freed: Range[]): void {
    const single: number[] = []
    for (const r of freed) {
      if (r.len > 16) this.q.del.run(r.pblk, r.pblk + r.len)
      else for (let b = r.pblk; b < r.pblk + r.len; b++) single.push(b)
    }
    if (single.length) this.q.delMany.run(JSON.stringify(single))
  }

  /** committed extents of ino overlapping [start, end) */
  async extents (ino: number, start = 0, end = END): Promise<Extent[]> {
    return await lockrestartDo(transGet(this.tree), t => t.extentsIn(ino, start, end))
  }

  /** Fill buf[0, n) with bytes [pos, pos+n) of ino; holes read as zeros. */
  async read (ino: number, buf: Buffer, pos: number, n: number): Promise<void> {
    const first = Math.floor(pos / BLOCK_SIZE)
    const last = Math.floor((pos + n - 1) / BLOCK_SIZE)
    const ex = await this.extents(ino, first, last + 1)
    buf.fill(0, 0, n)
    for (const e of ex) {
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
   * place. after(added) runs inside the same commit. Returns blocks allocated.
   */
  async write (ino: number, data: Buffer, pos: number, after: (added: number) => void): Promise<number> {
    const len = data.length
    const first = Math.floor(pos / BLOCK_SIZE)
    const last = Math.floor((pos + len - 1) / BLOCK_SIZE)
    return await lockrestartDo(transGet(this.tree), t => {
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
          const r = this.allocOrReclaim(t, end - cur, hint)
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

  /**
   * One truncate step body: unmap up to TRUNCATE_BATCH extents at or past
   * block keep, and on the first step zero the tail of the last kept block.
   * Returns whether it reached the end of the file.
   */
  private truncateStep (t: BtreeTrans, ino: number, keep: number, tail: number, first: boolean, onStep: TruncateStep): boolean {
    const last = first && tail !== 0 ? t.lookup(ino, keep - 1) : null
    const batch = t.extentsIn(ino, keep, END, TRUNCATE_BATCH + 1)
    const done = batch.length <= TRUNCATE_BATCH
    const upTo = done ? END : batch[TRUNCATE_BATCH].off
    if (batch.length) t.deleteRange(ino, keep, upTo)
    t.commit(freed => {
      this.dropRows(freed)
      if (last) {
        const pblk = last.pblk + (keep - 1 - last.off)
        const old = this.q.get.get(pblk) as Buffer | undefined
        if (old) {
          const block = Buffer.from(old)
          block.fill(0, tail)
          this.q.put.run(pblk, block)
        }
      }
      onStep(freed.reduce((s, r) => s + r.len, 0), first, done)
    })
    return done
  }

  /**
   * Unmap everything at or past size and zero the tail of the last block,
   * in bounded steps; onStep runs inside every step's commit.
   */
  async truncate (ino: number, size: number, onStep: TruncateStep): Promise<void> {
    const keep = Math.ceil(size / BLOCK_SIZE)
    const tail = size % BLOCK_SIZE
    const trans = transGet(this.tree)
    for (let first = true; ; first = false) {
      if (!first) await yieldToLoop() // other FUSE requests run between steps
      const f = first
      if (await lockrestartDo(trans, t => this.truncateStep(t, ino, keep, tail, f, onStep))) return
    }
  }

  /** Offline form of truncate for single-user tools (fsck --repair, recovery before mount). */
  truncateSync (ino: number, size: number, onStep: TruncateStep): void {
    const keep = Math.ceil(size / BLOCK_SIZE)
    const tail = size % BLOCK_SIZE
    const trans = transGet(this.tree)
    for (let first = true; ; first = false) {
      const f = first
      if (lockrestartDoSync(trans, t => this.truncateStep(t, ino, keep, tail, f, onStep))) return
    }
  }
}
