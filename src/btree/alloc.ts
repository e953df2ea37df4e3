// Free-space map and block allocator.
//
// Two range sets:
//   avail   - what alloc() may hand out: free blocks minus every live
//             transaction's reservations. In memory only.
//   durable - exactly what the free_buckets table holds: free as of the
//             last committed transaction.
//
// On disk, free_buckets(bucket INTEGER PRIMARY KEY, ranges BLOB) holds the
// durable ranges grouped by where they start: row b has every range whose
// start lies in [b * FREE_BUCKET, (b + 1) * FREE_BUCKET), as LEB128 varint
// pairs (gap, len): the first gap from the bucket's first block, the others
// from the previous range's end (>= 1: ranges never touch). A bucket with
// no range start has no row. One row per free range made a truncate of 1M
// fragmented extents write 1M rows (~60% of its time); a commit now
// rewrites only the buckets it changed (a 4096-block bucket holds at most
// 2048 ranges, ~4 KiB).
//
// A reservation (alloc) comes out of `avail` at once, so no two
// transactions get the same blocks, but `durable` changes only when the
// reserving transaction commits (commitUse). Persisting writes only the
// buckets of `durable` that changed, so one transaction's commit can never write
// another's uncommitted reservation as used (a crash would leak it). A
// transaction that restarts or ends without committing hands its
// reservations back with unreserve().
//
// Blocks freed by a commit go to `durable` inside the commit, then wait in
// `pendingFree` until the commit is durable (markDurable(), after a WAL
// sync): until then a crash brings back the mapping that points at them,
// so their old contents must not be overwritten. Only then are they in
// `avail` again. Between the two, markDurable hands them to `onReusable`
// (discard: the owner punches them out of the data area, asynchronously)
// and they join `avail` only when it calls release(): they are free for
// good and not allocatable meanwhile, so a discard can never hit blocks
// that were handed out again. Until released they count as `pending`.
//
// Invariant (verify): mapped blocks + durable.total = total, when no
// commit is in flight; avail is durable minus outstanding reservations.
//
// Allocation prefers the block right after the file's previous extent
// (hint), then the first range after the hint that fits, so files stay
// contiguous; failing that, the longest range. A caller that will go on
// allocating right after this range (writeback's write point, for runs
// that do not continue their file) asks for a range of at least minRun
// free blocks, so that its next allocations continue there instead of
// filling the one-block holes an aged image is full of.
import type Database from 'better-sqlite3'
import { BtreeError } from './errors'
import { RangeSet, carve, merge, type Range } from './rangeset'

export type { Range }

/** ranges as two arrays (starts, lens) sorted by start: what RangeSet.mergeMany takes, and compact to keep */
interface Sorted { starts: number[], lens: number[] }

function sortedArrays (rs: readonly Range[]): Sorted {
  const inOrder = rs.every((r, i) => i === 0 || rs[i - 1].pblk < r.pblk)
  const o = inOrder ? rs : [...rs].sort((a, b) => a.pblk - b.pblk)
  return { starts: o.map(r => r.pblk), lens: o.map(r => r.len) }
}

/** blocks per free_buckets row (part of the image format) */
export const FREE_BUCKET = 4096

/** append n (a non-negative safe integer) to buf at at as an LEB128 varint; returns the new offset */
function putVarint (buf: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    buf[at++] = (n % 0x80) | 0x80
    n = Math.floor(n / 0x80)
  }
  buf[at++] = n
  return at
}

/** room for a bucket's ranges: at most FREE_BUCKET / 2 of them (they never touch), two varints of <= 8 bytes each */
const scratch = Buffer.alloc(FREE_BUCKET / 2 * 16)

/** the ranges of bucket b of s, encoded; null when no range starts in it */
function encodeBucket (s: RangeSet, b: number): Buffer | null {
  const lo = b * FREE_BUCKET
  const hi = lo + FREE_BUCKET
  let a = s.findLE(lo)
  a = a === null ? s.first() : s.start(a) < lo ? s.next(a) : a
  let at = 0
  let prev = lo
  for (; a && s.start(a) < hi; a = s.next(a)) {
    at = putVarint(scratch, at, s.start(a) - prev)
    at = putVarint(scratch, at, s.len(a))
    prev = s.end(a)
  }
  return at === 0 ? null : Buffer.from(scratch.subarray(0, at))
}

/**
 * free_buckets rows for free ranges given in ascending order (the format 2
 * to 3 upgrade: free_space had one row per range): bucket -> blob, the same
 * encoding encodeBucket gives.
 */
export function bucketsOf (ranges: Iterable<{ start: number, len: number }>): Map<number, Buffer> {
  const out = new Map<number, Buffer>()
  let b = -1
  let at = 0
  let prev = 0
  const flush = (): void => { if (b >= 0 && at > 0) out.set(b, Buffer.from(scratch.subarray(0, at))) }
  for (const r of ranges) {
    const rb = Math.floor(r.start / FREE_BUCKET)
    if (rb !== b) { flush(); b = rb; at = 0; prev = rb * FREE_BUCKET }
    at = putVarint(scratch, at, r.start - prev)
    at = putVarint(scratch, at, r.len)
    prev = r.start + r.len
  }
  flush()
  return out
}

/**
 * Every free range of the map (free_buckets), in order, checked: each row
 * against the format and the device size (decodeBucket), and each range
 * against the one before it, across rows (they never overlap or touch).
 * The first damage throws (node_corrupt) after the ranges before it.
 */
export function decodeFreeMap (db: Database.Database, total: number, put: (start: number, len: number) => void): void {
  let end = -1
  for (const r of db.prepare('SELECT bucket, ranges FROM free_buckets ORDER BY bucket').iterate() as Iterable<{ bucket: number, ranges: Buffer }>) {
    decodeBucket(r.bucket, r.ranges, total, (start, len) => {
      if (start <= end) throw new BtreeError('node_corrupt', `free_buckets row ${r.bucket}: range at ${start} overlaps or touches the previous one`)
      end = start + len
      put(start, len)
    })
  }
}

/** decode row b of free_buckets, checking it against the format and the device size */
export function decodeBucket (b: number, blob: Buffer, total: number, put: (start: number, len: number) => void): void {
  const bad = (why: string): never => { throw new BtreeError('node_corrupt', `free_buckets row ${b}: ${why}`) }
  if (!Number.isSafeInteger(b) || b < 0 || !Buffer.isBuffer(blob) || blob.length === 0) bad('malformed')
  let at = 0
  const next = (): number => {
    let n = 0
    let mul = 1
    for (;;) {
      if (at >= blob.length || mul > 2 ** 49) bad('truncated varint')
      const byte = blob[at++]
      n += (byte & 0x7f) * mul
      if (byte < 0x80) return n
      mul *= 0x80
    }
  }
  const lo = b * FREE_BUCKET
  let prev = lo
  let first = true
  while (at < blob.length) {
    const gap = next()
    const len = next()
    const start = prev + gap
    if ((!first && gap < 1) || len < 1 || start >= lo + FREE_BUCKET || start + len > total) bad(`bad range [${start}, +${len})`)
    put(start, len)
    prev = start + len
    first = false
  }
}

export class Allocator {
  private readonly avail = new RangeSet()
  private readonly durable = new RangeSet(FREE_BUCKET)
  /** freed by commits that may not be durable yet (one entry per commit, in commit order) */
  private pendingFree: Array<{ seq: number, rs: Sorted, blocks: number }> = []
  private pendingBlocks = 0
  /** commits with frees so far (pendingFree's seq) */
  private freeSeq = 0
  readonly total: number
  private stmts: Record<'del' | 'put', Database.Statement> | null = null
  /**
   * Told the ranges of each durable commit's frees (sorted by start)
   * before they become allocatable (discard); they become allocatable when
   * it calls release (at once, or later). Misuse: calling release before
   * the work on the blocks is over (a late punch would destroy data written
   * there since), or never (the blocks leak until unmount); throwing.
   */
  onReusable: ((starts: readonly number[], lens: readonly number[], release: () => void) => void) | null = null

  /** the damage a tolerant load stopped at (null: the whole map read) */
  loadError: string | null = null

  private constructor (total: number) {
    this.total = total
  }

  /**
   * The allocator of a tree, from free_buckets. A damaged map throws
   * (node_corrupt), unless `tolerant` (a read-only tree, which allocates
   * nothing: it only reports free space; fsck), where the map stops at the
   * damage and `loadError` says what it was.
   */
  static load (db: Database.Database, total: number, initialized: boolean, firstBlock = 0, tolerant = false): Allocator {
    const a = new Allocator(total)
    if (!initialized) {
      a.durable.insert(firstBlock, total - firstBlock)
      a.avail.insert(firstBlock, total - firstBlock)
      return a
    }
    try {
      decodeFreeMap(db, total, (start, len) => {
        a.durable.insert(start, len)
        a.avail.insert(start, len)
      })
    } catch (e) {
      if (!tolerant || !(e instanceof BtreeError)) throw e
      a.loadError = e.message
    }
    a.durable.changed?.clear()
    return a
  }

  /** blocks that can be allocated now */
  get free (): number { return this.avail.total }
  /** blocks freed by commits that are not known durable yet (free after the next markDurable) */
  get pending (): number { return this.pendingBlocks }
  /** commits whose frees wait for markDurable (not those handed to onReusable since) */
  get undurableCommits (): number { return this.pendingFree.length }
  /** blocks free as of the last commit (what the image says) */
  get durableFree (): number { return this.durable.total }
  /** free ranges (fragmentation) */
  get fragments (): number { return this.durable.size }
  /** one past the last block committed extents map (firstBlock when none): the free range that ends the device starts there */
  get highWater (): number {
    const d = this.durable
    const a = d.findLE(this.total - 1)
    return a && d.end(a) >= this.total ? d.start(a) : this.total
  }

  /**
   * Reserve up to `want` contiguous blocks, preferring `hint`. Returns a
   * shorter range when no free range is long enough; null when full.
   * Away from hint, the first range after it with at least minRun free
   * blocks is preferred (then any that fits want).
   */
  alloc (want: number, hint = 0, minRun = want): Range | null {
    const s = this.avail
    if (want <= 0 || s.size === 0) return null
    hint = Math.max(0, Math.min(hint, this.total - 1))
    const at = s.findLE(hint)
    const atHint = at && hint < s.end(at) ? s.end(at) - hint : 0
    let r: Range
    if (atHint >= want) r = { pblk: hint, len: want }
    else {
      const from = at ? s.next(at) : s.first()
      const fit = (minRun > want ? s.firstFit(from, minRun) : null) ?? s.firstFit(from, want)
      if (fit) r = { pblk: s.start(fit), len: want }
      else if (atHint > 0) r = { pblk: hint, len: atHint } // continue the file where it is
      else {
        const big = s.longest() as NonNullable<ReturnType<RangeSet['longest']>>
        r = { pblk: s.start(big), len: s.len(big) }
      }
    }
    carve(s, r.pblk, r.len)
    return r
  }

  /** hand a reservation back (its transaction restarted or ended uncommitted) */
  unreserve (r: Range): void {
    this.mergeOrThrow(this.avail, r, 'unreserve')
  }

  /** inside a commit: reserved blocks are now mapped */
  commitUse (r: Range): void {
    if (!carve(this.durable, r.pblk, r.len)) throw new Error(`commit of [${r.pblk}, +${r.len}): not free in the free-space map`)
  }

  /** inside a commit: blocks no longer mapped (all of them, or none and it throws) */
  commitFree (rs: readonly Range[]): void {
    for (const r of rs) if (r.pblk < 0 || r.len <= 0 || r.pblk + r.len > this.total) throw new Error(`free of [${r.pblk}, +${r.len}) outside the device`)
    this.mergeManyOrThrow(this.durable, sortedArrays(rs), 'free')
  }

  /** undo commitUse/commitFree after the commit's SQLite transaction failed */
  undoUse (r: Range): void { this.mergeOrThrow(this.durable, r, 'undo') }
  undoFree (rs: readonly Range[]): void { for (const r of rs) carve(this.durable, r.pblk, r.len) }

  /** the commit is in the image (not necessarily durable): its freed blocks wait for markDurable */
  committed (freed: readonly Range[]): void {
    if (freed.length === 0) return
    const blocks = freed.reduce((n, r) => n + r.len, 0)
    this.pendingFree.push({ seq: ++this.freeSeq, rs: sortedArrays(freed), blocks })
    this.pendingBlocks += blocks
  }

  /** a mark for markDurable: the commits so far */
  get commitMark (): number { return this.freeSeq }

  /**
   * The commits up to mark (commitMark taken before the sync that made
   * them durable; default: all of them) are durable: blocks they freed may
   * be handed out. Misuse: a mark taken after the sync started would free
   * blocks of commits the sync may not cover.
   */
  markDurable (mark = Infinity): void {
    let k = 0
    for (; k < this.pendingFree.length && this.pendingFree[k].seq <= mark; k++) {
      const p = this.pendingFree[k]
      if (this.onReusable) {
        let released = false
        this.onReusable(p.rs.starts, p.rs.lens, () => {
          if (released) return
          released = true
          this.release(p)
        })
      } else {
        this.release(p)
      }
    }
    this.pendingFree.splice(0, k)
  }

  /** a durable commit's freed blocks become allocatable */
  private release (p: { rs: Sorted, blocks: number }): void {
    this.mergeManyOrThrow(this.avail, p.rs, 'release')
    this.pendingBlocks -= p.blocks
  }

  /** merge rs into s, all or nothing */
  private mergeManyOrThrow (s: RangeSet, rs: Sorted, what: string): void {
    const dup = s.mergeMany(rs.starts, rs.lens)
    if (dup >= 0) throw new Error(`${what} of ${rs.starts.length} range(s): block ${dup} is already free`)
  }

  private mergeOrThrow (s: RangeSet, r: Range, what: string): void {
    if (r.len <= 0) return
    const dup = merge(s, r.pblk, r.len)
    if (dup >= 0) throw new Error(`${what} of [${r.pblk}, +${r.len}): block ${dup} is already free`)
  }

  /** the free ranges of the image (durable), ascending (offline tools: fsck --compact) */
  * durableRanges (): Generator<Range> {
    const d = this.durable
    for (let a = d.first(); a; a = d.next(a)) yield { pblk: d.start(a), len: d.len(a) }
  }

  /** is pblk free in the image (not mapped by a committed extent)? */
  isFree (pblk: number): boolean {
    return this.durable.containing(pblk) !== null
  }

  /** the first block of [pblk, pblk+len) that is free in the image, or -1 */
  firstFreeIn (pblk: number, len: number): number {
    const d = this.durable
    const a = d.findLE(pblk)
    if (a && d.end(a) > pblk) return pblk
    const b = a ? d.next(a) : d.first()
    return b && d.start(b) < pblk + len ? d.start(b) : -1
  }

  /** Write the changed buckets of `durable` (inside the commit's SQLite transaction). */
  persist (db: Database.Database): void {
    const changed = this.durable.changed as Set<number>
    if (changed.size === 0) return
    this.stmts ??= {
      del: db.prepare('DELETE FROM free_buckets WHERE bucket = ?'),
      put: db.prepare('INSERT OR REPLACE INTO free_buckets (bucket, ranges) VALUES (?, ?)')
    }
    for (const b of changed) {
      const blob = encodeBucket(this.durable, b)
      if (blob) this.stmts.put.run(b, blob)
      else this.stmts.del.run(b)
    }
  }

  /** the SQLite transaction that persisted the changes committed */
  persisted (): void {
    this.durable.changed?.clear()
  }

  /** invariant violations of both sets (debug checks) */
  check (): string[] {
    return [...this.avail.check().map(e => `avail: ${e}`), ...this.durable.check().map(e => `durable: ${e}`)]
  }
}
