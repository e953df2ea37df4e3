// Buffered file I/O through the page cache (cf. bcachefs fs/vfs/buffered-io.c).
//
// write: lock each folio, fill it first if the write covers it only partly
//   and it is not uptodate (read-modify-write; beyond EOF it is zeros),
//   copy in, mark dirty, unlock. No B-tree transaction, no allocation, no
//   SQLite write. Writeback gives the data its place later (delalloc).
// read: copy uptodate folios; fill a run of missing ones with one mapping
//   lookup and async reads (holes read as zeros without I/O). Sequential
//   readers of uncached data are streamed past the folio cache (stream.ts:
//   read straight into the reply buffer, or from chunks read ahead); when
//   that cannot be done, they get folio readahead that grows to
//   READAHEAD_MAX folios.
// Folios of blocks at or past EOF never hold stale bytes: truncate drops
//   them and zeroes the tail of the last one; extending a file zeroes the
//   tail of its old last block (zeroTail), since the data area may still
//   hold bytes there that a crash left behind.
import { FOLIO_SIZE, type Folio } from './folio'
import type { PageCache } from './cache'
import type { FileData } from '../filedata'
import { ChecksumError } from '../datacsum'
import { ReadStreams, directable } from './stream'
import type { PlanSink } from '../readplan'

const READAHEAD_MIN = 8 //  32 KiB
const READAHEAD_MAX = 2048 // 8 MiB: the kernel's requests are 1 MiB; keep several ahead
/** readahead fills at most this many folios each, and at most READAHEAD_IN_FLIGHT of them at once per inode */
const READAHEAD_CHUNK = 512
const READAHEAD_IN_FLIGHT = 4

/** a reader's position: the folio after the furthest it read, and its readahead window */
interface ReadState { next: number, window: number }

/**
 * Does a read of folios [first, first+n) continue the reader at st? Also
 * when it lands a little before or after where the last one ended: the
 * kernel sends a sequential reader's requests several at a time, and they
 * arrive out of order now and then (a read of 8448 before the one of 8192
 * ended); calling that random dropped the window back to its minimum,
 * and readahead never got ahead of a sequential reader.
 */
function isSequential (st: ReadState, first: number, n: number): boolean {
  return Math.abs(first - st.next) <= 2 * n
}

export class BufferedIO {
  private readonly ra = new Map<number, ReadState>()
  /** where the last readahead of each inode stopped looking */
  private readonly raFront = new Map<number, number>()
  /** asynchronous readahead fills in flight, per inode: their folio ranges, settled (never rejected) when done */
  private readonly prefetching = new Map<number, Array<{ from: number, to: number, done: Promise<void> }>>()

  /** sequential reads of uncached data (drop-behind) */
  readonly streams: ReadStreams

  /**
   * sizeOf(ino): the file's size now (never a value read before an await:
   * truncate may run meanwhile); streamBytes: the streaming reads' budget,
   * out of the cache's bound (the default, a quarter of the cache and at
   * most 64 MiB, gives 8 readers at once their 8 MiB windows)
   */
  constructor (readonly cache: PageCache, private readonly data: FileData, private readonly sizeOf: (ino: number) => number, streamBytes: number) {
    this.streams = new ReadStreams(cache, data, sizeOf, streamBytes)
    cache.onShrink = () => this.streams.drain()
    data.onMapChange = ino => this.streams.invalidate(ino)
  }

  /**
   * Fill folios (locked by the caller, consecutive indices) from the data
   * area. Blocks that fail their checksum are removed from the cache (a
   * later read tries the disk again) and the ChecksumError is thrown; the
   * other folios are uptodate all the same.
   */
  private async fill (ino: number, folios: Folio[]): Promise<void> {
    const first = folios[0].index
    const onDisk = Math.ceil(this.sizeOf(ino) / FOLIO_SIZE) // blocks past EOF are zeros, no I/O
    const n = Math.max(0, Math.min(folios.length, onDisk - first))
    let damaged: ChecksumError | null = null
    if (n > 0) {
      try {
        await this.data.readBlocks(ino, first, folios.slice(0, n).map(f => f.data))
      } catch (err) {
        if (!(err instanceof ChecksumError)) throw err
        damaged = err
      }
    }
    for (let k = n; k < folios.length; k++) folios[k].data.fill(0)
    const bad = new Set(damaged?.blocks)
    for (const f of folios) {
      if (bad.has(f.index)) this.cache.remove(f)
      else f.uptodate = true
    }
    if (damaged) throw damaged
  }

  /** fill, or on failure remove the folios (never uptodate: a later reader tries again); the caller unlocks */
  private async fillOrForget (ino: number, folios: Folio[]): Promise<void> {
    try {
      await this.fill(ino, folios)
    } catch (err) {
      if (!(err instanceof ChecksumError)) for (const f of folios) this.cache.remove(f)
      throw err
    }
  }

  /** new folios for [from, to), locked (none of them may be cached yet) */
  private newLocked (ino: number, from: number, to: number): Folio[] {
    const run: Folio[] = []
    for (let k = from; k < to; k++) {
      const f = this.cache.getOrCreate(ino, k)
      f.trylock() // new: always succeeds
      run.push(f)
    }
    return run
  }

  /**
   * Read bytes [pos, pos+n) of ino into buf (n already clamped to EOF).
   * Folios being filled or written by someone else are waited for.
   */
  async read (ino: number, buf: Buffer, pos: number, n: number, sink?: PlanSink): Promise<void> {
    if (n <= 0) return
    const first = Math.floor(pos / FOLIO_SIZE)
    const last = Math.floor((pos + n - 1) / FOLIO_SIZE)
    const st = this.ra.get(ino)
    const sequential = st !== undefined && isSequential(st, first, last - first + 1)
    const window = sequential ? Math.min(READAHEAD_MAX, Math.max(st.window * 2, last - first + 1)) : READAHEAD_MIN
    const next = sequential ? Math.max(st.next, last + 1) : last + 1
    // a big request is streamed (read directly) in any order: with a
    // readahead window of several requests, the kernel's arrive out of
    // order, and through folios they ran at a third of the speed
    const streamed = sequential || directable(buf, pos, n) ? await this.streams.read(ino, buf, pos, n, window, sink) : 'unable'
    if (streamed === 'served') {
      this.ra.set(ino, { next, window })
      return
    }
    // folio readahead only where streaming could not serve the reader (else
    // the folios it caches ahead would keep the reader off the stream)
    const ahead = sequential && streamed === 'unable'
    for (let idx = first; idx <= last;) {
      let f = this.cache.get(ino, idx)
      if (f && f.uptodate) {
        this.cache.stats.hits++
        this.copyOut(f, buf, pos, n)
        idx++
        continue
      }
      const fill = f ? this.prefetching.get(ino)?.find(x => idx >= x.from && idx < x.to) : undefined
      if (fill) { // readahead is filling it: one wait for the whole fill, not a lock wait per folio
        await fill.done
        continue // look again: uptodate now, or gone (a failed fill: read on demand)
      }
      if (f) { // someone is filling or writing it: wait, then look again
        await f.lock()
        try {
          if (!f.uptodate && !f.dropped) await this.fill(ino, [f])
          if (!f.dropped) this.copyOut(f, buf, pos, n)
        } finally { f.unlock() }
        if (f.dropped) continue // truncated meanwhile: look it up again
        idx++
        continue
      }
      // a run of missing folios, extended by readahead when sequential
      let end = idx + 1
      const eofBlock = Math.ceil(this.sizeOf(ino) / FOLIO_SIZE)
      const limit = Math.max(last + 1, Math.min(eofBlock, last + 1 + (ahead ? window : 0)))
      while (end < limit && !this.cache.get(ino, end)) end++
      const run = this.newLocked(ino, idx, end)
      this.cache.stats.misses += Math.min(end, last + 1) - idx
      this.cache.stats.readaheadFolios += Math.max(0, end - (last + 1))
      try {
        try {
          await this.fillOrForget(ino, run)
        } catch (err) {
          // a damaged block only readahead wanted fails nobody (it is not cached: a reader of it gets EIO)
          if (!(err instanceof ChecksumError) || err.blocks.some(b => b >= idx && b <= last)) throw err
        }
        for (const g of run) if (g.index <= last) this.copyOut(g, buf, pos, n)
      } finally {
        for (const g of run) g.unlock()
      }
      idx = Math.min(end, last + 1)
    }
    this.ra.set(ino, { next, window })
    if (ahead) this.readahead(ino, next, window)
    this.cache.evict()
  }

  /**
   * Asynchronous readahead: a sequential reader that is inside the window
   * gets the next window filled in the background, so its I/O overlaps
   * with the reader's consumption instead of stalling every window.
   */
  private readahead (ino: number, from: number, window: number): void {
    const eofBlock = Math.ceil(this.sizeOf(ino) / FOLIO_SIZE)
    const horizon = Math.min(eofBlock, from + window)
    const skipCached = (k: number): number => { while (k < horizon && this.cache.peek(ino, k)) k++; return k } // cached or in flight
    // look from where the last readahead of ino ended, not through the whole window again (unless the reader is elsewhere now)
    let front = this.raFront.get(ino) ?? from
    if (front < from || front > horizon) front = from
    let start = skipCached(front)
    if (start >= horizon || start - from > window / 2) return // far enough ahead already
    while (start < horizon && (this.prefetching.get(ino)?.length ?? 0) < READAHEAD_IN_FLIGHT) {
      let end = start
      while (end < Math.min(horizon, start + READAHEAD_CHUNK) && !this.cache.peek(ino, end)) end++
      const run = this.newLocked(ino, start, end)
      this.cache.stats.readaheadFolios += run.length
      const done = this.fillOrForget(ino, run)
        .catch(() => {}) // a reader will try again, synchronously
        .finally(() => { // (settles after `fill` below is set)
          for (const g of run) g.unlock()
          const left = (this.prefetching.get(ino) ?? []).filter(x => x !== fill)
          if (left.length) this.prefetching.set(ino, left)
          else this.prefetching.delete(ino)
        })
      const fill = { from: start, to: end, done }
      this.prefetching.set(ino, [...(this.prefetching.get(ino) ?? []), fill])
      start = skipCached(end)
    }
    this.raFront.set(ino, start)
  }

  private copyOut (f: Folio, buf: Buffer, pos: number, n: number): void {
    const fstart = f.index * FOLIO_SIZE
    const from = Math.max(pos, fstart)
    const to = Math.min(pos + n, fstart + FOLIO_SIZE)
    if (to > from) f.data.copy(buf, from - pos, from - fstart, to - fstart)
  }

  /**
   * The folio for idx, locked and uptodate, if that needs no wait: free,
   * and uptodate or about to be overwritten whole (then its contents are
   * undefined: the caller must write all of it before unlocking). Else null
   * (nothing held): the caller awaits lockedUptodate. Keeps the write path
   * free of a promise per folio.
   */
  private lockedUptodateNow (ino: number, idx: number, whole: boolean): Folio | null {
    const f = this.cache.getOrCreate(ino, idx)
    if (!f.trylock()) return null
    if (f.uptodate) return f
    if (whole) return f
    f.unlock()
    return null
  }

  /** the folio for idx, locked and uptodate (filled from the data area if needed; if whole, see lockedUptodateNow) */
  private async lockedUptodate (ino: number, idx: number, whole: boolean): Promise<Folio> {
    for (;;) {
      const f = this.lockedUptodateNow(ino, idx, whole)
      if (f) return f
      const g = this.cache.getOrCreate(ino, idx)
      await g.lock()
      if (g.dropped) { g.unlock(); continue } // truncated while we waited
      if (!g.uptodate && !whole) {
        try {
          await this.fillOrForget(ino, [g])
        } catch (err) {
          g.unlock()
          throw err
        }
      }
      return g
    }
  }

  /** Copy data into the cache at pos (the caller checked size limits and space). */
  async write (ino: number, data: Buffer, pos: number): Promise<void> {
    this.streams.invalidate(ino)
    const len = data.length
    const first = Math.floor(pos / FOLIO_SIZE)
    const last = Math.floor((pos + len - 1) / FOLIO_SIZE)
    for (let idx = first; idx <= last; idx++) {
      const fstart = idx * FOLIO_SIZE
      const from = Math.max(pos, fstart)
      const to = Math.min(pos + len, fstart + FOLIO_SIZE)
      const whole = from === fstart && to === fstart + FOLIO_SIZE
      const f = this.lockedUptodateNow(ino, idx, whole) ?? await this.lockedUptodate(ino, idx, whole)
      try {
        data.copy(f.data, from - fstart, from - pos, to - pos)
        f.uptodate = true
        this.cache.markDirty(f)
      } finally {
        f.unlock()
      }
    }
    this.cache.evict()
  }

  /** folios a write of [pos, pos+len) would newly make dirty (space accounting) */
  newlyDirty (ino: number, pos: number, len: number): number {
    const first = Math.floor(pos / FOLIO_SIZE)
    const last = Math.floor((pos + len - 1) / FOLIO_SIZE)
    let n = 0
    for (let idx = first; idx <= last; idx++) if (!this.cache.get(ino, idx)?.dirty) n++
    return n
  }

  /**
   * Zero the bytes of the block containing offset size that lie at or past
   * size (a shrink's new tail, or an extension's old one); the folio turns
   * dirty only when they were not zeros already.
   */
  async zeroTail (ino: number, size: number): Promise<void> {
    this.streams.invalidate(ino)
    const off = size % FOLIO_SIZE
    if (off === 0) return
    const idx = Math.floor(size / FOLIO_SIZE)
    const f = await this.lockedUptodate(ino, idx, false)
    try {
      // already zeros (nearly always: a write's last folio is zero past
      // its end, a shrink zeroed it): nothing to write back, and no block
      // to take from a full filesystem (a dirty folio needs one)
      if (f.data.subarray(off).some(b => b !== 0)) {
        f.data.fill(0, off)
        this.cache.markDirty(f)
      }
    } finally {
      f.unlock()
    }
  }

  /** Drop every folio of ino at or past index from (waiting for their locks: writeback, readers). */
  async dropFrom (ino: number, from: number, to = Infinity): Promise<void> {
    this.streams.invalidate(ino)
    for (const f of this.cache.folioRange(ino, from, to)) {
      await f.lock()
      this.cache.remove(f)
      f.unlock()
    }
    if (from === 0) { this.ra.delete(ino); this.raFront.delete(ino) }
  }
}
