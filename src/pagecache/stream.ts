// Streaming reads: a sequential reader of data that is not in the page
// cache is served from large chunks read ahead of it, which bypass the
// folio cache (drop-behind).
//
// Why: a cold sequential read through 4 KiB folios spent more of the main
// thread on per-folio bookkeeping (create, index, evict, recycle: 262,144
// folios a GiB) and per-folio copies than on anything else, and ran at a
// fifth of the in-memory ceiling. The kernel keeps what it reads in its own
// page cache of the FUSE file; a second copy in the daemon's folio cache
// is not read again by a streaming reader and only evicts the working set
// of everyone else.
//
// Model: one stream per inode, made of chunks of CHUNK_BLOCKS blocks
// aligned in the file (chunk k holds blocks [k * CHUNK_BLOCKS, ...)). A
// chunk is filled by one FileData.readBlocks: one mapping lookup, vectored
// reads of the data area into one buffer, crc32 checks (datacsum.ts). A sequential read none of whose blocks has
// a folio in the cache is copied out of the chunks covering it; fills of
// the chunks of its readahead window start at the same time, so the data
// area's I/O overlaps with the reader's requests.
//
// Direct reads: a request of a whole chunk or more (the kernel's readahead
// sends 1 MiB requests, several in flight and not always in order,
// whatever size the reader asks for; BufferedIO streams them in any
// order) whose reply buffer can take whole blocks is read by FileData.
// readBlocks straight into that buffer: no chunk, no copy on the main
// thread, and the kernel's requests in flight are the readahead. Measured
// on a cold GiB (same run, interleaved): 784/717/693 MB/s through chunks,
// 835/794/827 direct. Chunks remain for smaller requests (O_DIRECT
// readers, a smaller max_read), where one chunk fill serves many requests
// and reads ahead of them.
//
// Coherence (the point of everything below): a chunk holds the file's
// contents as of its fill, so it may be used only while nothing has
// changed them since the fill began (a direct read likewise: its bytes are
// answered only if nothing changed since its mapping lookup began):
//  - Folios take precedence: a read that finds a folio of any of its
//    blocks in the cache (dirty data above all) is not served here.
//  - invalidate(ino) retires every chunk of the inode, filled or in flight,
//    and marks its direct reads in flight gone (they answer 'unable', and
//    the caller reads through the folios).
//    It runs on every change of the inode's mapping (FileData.onMapChange:
//    writeback commits, truncate and punch steps, preallocation), inside
//    the commit, and on every write, tail zeroing and folio drop
//    (BufferedIO).
//  Together: contents change either in a folio, which is seen first, or by
//  a mapping commit, which invalidates; a folio leaves the cache clean
//  (after the commit that wrote it) or by a drop, which invalidates.
// A chunk that fails (I/O error, checksum mismatch) is retired too, and the
// read goes through the folio path, which reports the exact blocks (EIO)
// and caches the good ones.
//
// Memory: chunk buffers count against the page cache's bound
// (PageCache.reserved) and never exceed the budget; a chunk is freed once
// its bytes have all been copied out, or its reader is CHUNKS_BEHIND
// chunks past it. A retired chunk's buffer is recycled only when its fill
// has settled (the data area read may still be writing into it).
//
// Misuse: using a chunk's bytes after an await without looking at `gone`
// again; starting a fill or a direct read without registering it in its
// stream first (an invalidation between its mapping lookup and its
// registration would be missed); forgetting a stream while a direct read
// of it is in flight (invalidate would not find it).
import { FOLIO_SIZE } from './folio'
import type { PageCache } from './cache'
import type { FileData } from '../filedata'
import { PREFETCH_BLOCKS, type PlanSink } from '../readplan'

/** blocks per chunk: 1 MiB, the kernel's largest read request */
export const CHUNK_BLOCKS = 256
const CHUNK_BYTES = CHUNK_BLOCKS * FOLIO_SIZE
/** chunk fills in flight per stream */
const FILLS_IN_FLIGHT = 4
/** a chunk this many chunks behind its reader is freed even if not all of it was read */
const CHUNKS_BEHIND = 2
/** recycled chunk buffers kept (the rest go back to the garbage collector) */
const KEEP_FREE = 16
/** a stream not read for this long (ms) is idle: another's readahead may take its chunks */
const IDLE_MS = 1000
/** streams kept without chunks (their readahead front): beyond this many, the empty ones are forgotten */
const KEEP_STREAMS = 64

/** a chunk's memory: shared (the crc thread reads it without a copy) */
type ChunkMem = Buffer

interface Chunk {
  /** chunk number in the file */
  readonly k: number
  /** blocks filled: CHUNK_BLOCKS, fewer at EOF */
  readonly blocks: number
  readonly mem: ChunkMem
  /** retired: never read its bytes again (its buffer goes back when `settled`) */
  gone: boolean
  settled: boolean
  ok: boolean
  /** bytes copied out of it so far */
  copied: number
  done: Promise<void>
}

/**
 * Can a request of n bytes at pos into buf be read directly (a whole
 * chunk or more, from a block boundary, into a reply buffer with room for
 * all its blocks)? Such requests come from the kernel's readahead, several
 * at once and not always in order; they are streamed whether or not they
 * continue the reader (BufferedIO.read).
 */
export function directable (buf: Buffer, pos: number, n: number): boolean {
  const first = Math.floor(pos / FOLIO_SIZE)
  const last = Math.floor((pos + n - 1) / FOLIO_SIZE)
  return buf.length >= CHUNK_BYTES && pos % FOLIO_SIZE === 0 && buf.length >= (last + 1 - first) * FOLIO_SIZE
}

/** a direct read in flight (registered in its stream until it settles) */
interface DirectRead { gone: boolean }

class Stream {
  readonly chunks = new Map<number, Chunk>()
  readonly direct = new Set<DirectRead>()
  filling = 0
  /** when its reader last came (performance.now()): the least recently read stream gives up its chunks first */
  used = 0
  /** the highest chunk number filled since the stream began: readahead never fills one again (its reader moved on; one out of order still gets it on demand) */
  front = -1
}

/** what read() did: served; refused because folios of the range are cached; or could not (budget, failure) */
export type StreamAnswer = 'served' | 'cached' | 'unable'

export interface StreamStats {
  /** bytes answered from chunks */
  streamedBytes: number
  /** chunks filled from the data area */
  chunkFills: number
  /** chunks retired before all their bytes were read (invalidated, failed, passed by their reader) */
  chunksWasted: number
  /** bytes of streamedBytes read straight into the reply (direct reads) */
  directBytes: number
  /** direct reads not answered (invalidated or failed: read again through the folios) */
  directRetried: number
}

export class ReadStreams {
  private readonly streams = new Map<number, Stream>()
  private readonly free: ChunkMem[] = []
  /** chunk buffers that exist (in chunks, retired and still filling, or free) */
  private allocated = 0
  readonly stats: StreamStats = { streamedBytes: 0, chunkFills: 0, chunksWasted: 0, directBytes: 0, directRetried: 0 }

  /** budget: bytes of chunk buffers at most (below CHUNK_BYTES * 2 streaming is off) */
  constructor (private readonly cache: PageCache, private readonly data: FileData,
    private readonly sizeOf: (ino: number) => number, private readonly budget: number) {}

  get enabled (): boolean { return this.budget >= 2 * CHUNK_BYTES }

  /** no folio of blocks [first, last] of ino is cached */
  private uncached (ino: number, first: number, last: number): boolean {
    return this.cache.foliosInOrder(ino, first, last + 1).next().done === true
  }

  /**
   * Serve a sequential read of bytes [pos, pos+n) of ino (n > 0, clamped to
   * EOF) from the stream, and start fills of the chunks up to `ahead`
   * blocks past it. Copies nothing unless it answers 'served'.
   */
  async read (ino: number, buf: Buffer, pos: number, n: number, ahead: number, sink?: PlanSink): Promise<StreamAnswer> {
    if (!this.enabled) return 'unable'
    const first = Math.floor(pos / FOLIO_SIZE)
    const last = Math.floor((pos + n - 1) / FOLIO_SIZE)
    if (!this.uncached(ino, first, last)) return 'cached'
    const k0 = Math.floor(first / CHUNK_BLOCKS)
    const k1 = Math.floor(last / CHUNK_BLOCKS)
    const eofBlock = Math.ceil(this.sizeOf(ino) / FOLIO_SIZE)
    let s = this.streams.get(ino)
    if (!s) {
      if (this.streams.size >= KEEP_STREAMS) this.forgetEmpty()
      s = new Stream()
      this.streams.set(ino, s)
    }
    s.used = performance.now()
    for (const c of s.chunks.values()) if (c.k < k0 - CHUNKS_BEHIND) this.retire(s, c)
    // a request of a whole chunk or more comes from the kernel's readahead:
    // read directly, unless chunks filled for the smaller requests before
    // it (a reader's first ones) hold all of it; no chunk is read ahead of
    // it any more
    const big = directable(buf, pos, n)
    if (big) {
      let held = true
      for (let k = k0; k <= k1 && held; k++) held = s.chunks.has(k)
      if (!held) return await this.readDirect(ino, s, buf, first, last, n, eofBlock, sink)
    }
    const need: Chunk[] = []
    for (let k = k0; k <= k1; k++) {
      const c = s.chunks.get(k) ?? this.fill(ino, s, k, eofBlock, k1, false)
      if (!c) return 'unable'
      need.push(c)
    }
    const kEnd = Math.floor((Math.min(eofBlock, last + 1 + ahead) - 1) / CHUNK_BLOCKS)
    if (s.front > kEnd + CHUNKS_BEHIND) s.front = k1 // the reader started over (not a request or two out of order)
    for (let k = Math.max(k1, s.front) + 1; !big && k <= kEnd && s.filling < FILLS_IN_FLIGHT; k++) {
      if (!s.chunks.has(k) && !this.fill(ino, s, k, eofBlock, k1, true)) break
    }
    for (const c of need) await c.done
    // after the awaits: a write, commit or drop may have come in meanwhile
    // (a chunk filled short, at the EOF of then, does not cover blocks the file has grown by since)
    const usable = need.every(c => !c.gone && c.ok && Math.min(last, (c.k + 1) * CHUNK_BLOCKS - 1) < c.k * CHUNK_BLOCKS + c.blocks)
    if (!usable || !this.uncached(ino, first, last)) {
      for (const c of need) if (!c.gone && !c.ok) this.retire(s, c)
      return 'unable'
    }
    for (const c of need) {
      const cstart = c.k * CHUNK_BYTES
      const from = Math.max(pos, cstart)
      const to = Math.min(pos + n, cstart + c.blocks * FOLIO_SIZE)
      c.mem.copy(buf, from - pos, from - cstart, to - cstart)
      c.copied += to - from
      if (c.copied >= c.blocks * FOLIO_SIZE) this.retire(s, c, false)
    }
    this.stats.streamedBytes += n
    return 'served'
  }

  /**
   * A direct read of blocks [first, last] into buf (which has room for all
   * of them; the caller answers n bytes of it). 'unable' when invalidated
   * or failed meanwhile: the caller reads through the folios, which
   * overwrite buf and report a damaged block exactly.
   */
  private async readDirect (ino: number, s: Stream, buf: Buffer, first: number, last: number, n: number, eofBlock: number, sink?: PlanSink): Promise<StreamAnswer> {
    const d: DirectRead = { gone: false }
    s.direct.add(d) // registered before the mapping lookup (see Misuse)
    const dest = buf.subarray(0, (last + 1 - first) * FOLIO_SIZE)
    const plans = this.data.plans
    const t = sink ? plans.begin() : null // begun before the mapping lookup too (readplan.ts)
    let ok = true
    try {
      if (t) await this.data.planBlocks(t, ino, first, dest, Math.max(0, Math.min(PREFETCH_BLOCKS, eofBlock - (last + 1))))
      else await this.data.readBlocks(ino, first, dest)
    } catch {
      ok = false
    } finally {
      s.direct.delete(d)
    }
    if (!ok || d.gone || !this.uncached(ino, first, last)) {
      if (t) plans.end(t)
      this.stats.directRetried++
      return 'unable'
    }
    if (t && sink) plans.handOver(t, sink, n) // the libfuse thread reads the bytes
    this.stats.streamedBytes += n
    this.stats.directBytes += n
    return 'served'
  }

  /** startFill, and when the budget is spent, again after reclaim(s, k1, ahead) */
  private fill (ino: number, s: Stream, k: number, eofBlock: number, k1: number, ahead: boolean): Chunk | null {
    return this.startFill(ino, s, k, eofBlock) ?? (this.reclaim(s, k1, ahead) ? this.startFill(ino, s, k, eofBlock) : null)
  }

  /** a new chunk k of ino, registered and being filled; null if the budget is spent */
  private startFill (ino: number, s: Stream, k: number, eofBlock: number): Chunk | null {
    const blocks = Math.min(CHUNK_BLOCKS, eofBlock - k * CHUNK_BLOCKS)
    if (blocks <= 0) return null
    const mem = this.take()
    if (!mem) return null
    const c: Chunk = { k, blocks, mem, gone: false, settled: false, ok: false, copied: 0, done: Promise.resolve() }
    s.chunks.set(k, c) // registered before the mapping lookup (see Misuse)
    s.front = Math.max(s.front, k)
    s.filling++
    this.stats.chunkFills++
    c.done = this.data.readBlocks(ino, k * CHUNK_BLOCKS, mem.subarray(0, blocks * FOLIO_SIZE))
      .then(() => { c.ok = true }, () => { c.ok = false })
      .finally(() => {
        c.settled = true
        s.filling--
        if (c.gone) this.give(c.mem)
      })
    return c
  }

  /** retire c (wasted: not all of it was read) */
  private retire (s: Stream, c: Chunk, wasted = true): void {
    if (c.gone) return
    c.gone = true
    if (s.chunks.get(c.k) === c) s.chunks.delete(c.k)
    if (wasted) this.stats.chunksWasted++
    if (c.settled) this.give(c.mem)
  }

  /**
   * The budget is spent and s's reader needs a chunk (its next one if
   * ahead, else one it reads now): retire the filled chunks of the least
   * recently read other stream (a reader that stopped leaves its chunks
   * read ahead behind); for readahead only those of idle streams (two
   * active readers would take each other's turn by turn); for a chunk read
   * now s's own beyond k1 last. Whether a buffer can be had now (chunks
   * still filling give theirs back only when they settle).
   */
  private reclaim (s: Stream, k1: number, ahead: boolean): boolean {
    const others = [...this.streams.values()]
      .filter(o => o !== s && o.chunks.size > 0 && (!ahead || performance.now() - o.used > IDLE_MS))
      .sort((a, b) => a.used - b.used)
    for (const o of ahead ? others : [...others, s]) {
      for (const c of [...o.chunks.values()]) if (c.settled && (o !== s || c.k > k1)) this.retire(o, c)
      if (this.canTake()) return true
    }
    return false
  }

  private canTake (): boolean {
    return this.free.length > 0 || (this.allocated + 1) * CHUNK_BYTES <= this.budget
  }

  /** forget the streams that hold no chunk and have no direct read in flight */
  private forgetEmpty (): void {
    for (const [ino, s] of this.streams) if (s.chunks.size === 0 && s.direct.size === 0) this.streams.delete(ino)
  }

  /** The contents of ino may have changed: none of its chunks is used again. */
  invalidate (ino: number): void {
    const s = this.streams.get(ino)
    if (!s) return
    for (const c of [...s.chunks.values()]) this.retire(s, c)
    for (const d of s.direct) d.gone = true
    this.streams.delete(ino) // its readahead starts over
  }

  private take (): ChunkMem | null {
    const m = this.free.pop()
    if (m) return m
    if (!this.canTake()) return null
    this.allocated++
    this.cache.reserved += CHUNK_BYTES
    return Buffer.from(new SharedArrayBuffer(CHUNK_BYTES))
  }

  private give (m: ChunkMem): void {
    if (this.free.length < KEEP_FREE) { this.free.push(m); return }
    this.allocated--
    this.cache.reserved -= CHUNK_BYTES
  }

  /** memory pressure: retire every filled chunk, and let go of the recycled buffers */
  drain (): void {
    for (const s of this.streams.values()) for (const c of [...s.chunks.values()]) if (c.settled) this.retire(s, c)
    this.allocated -= this.free.length
    this.cache.reserved -= this.free.length * CHUNK_BYTES
    this.free.length = 0
  }

  /** the chunk numbers ino's stream holds, filled or in flight (tests, debugging) */
  chunksOf (ino: number): number[] {
    return [...(this.streams.get(ino)?.chunks.keys() ?? [])].sort((a, b) => a - b)
  }

  /** bytes of chunk buffers that exist */
  get bytes (): number { return this.allocated * CHUNK_BYTES }
}
