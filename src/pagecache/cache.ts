// The page cache: per-inode folio indexes, memory accounting and eviction.
//
// Every folio of every inode is in `byIno` (ino -> InoFolios: index ->
// folio, plus an ordered index of the chunks of CHUNK indices that hold
// folios, so a range is visited in index order at a cost proportional to
// the folios in it, not to the inode's folios or the range's length) and in
// `clock`, a Set in insertion order that the CLOCK hand walks: a folio
// whose reference bit is set gets a second chance (bit cleared, moved to
// the back); a clean, unlocked folio without it is evicted. Dirty folios,
// folios under writeback and locked folios are never evicted; writers are
// throttled instead (writeback.ts) so dirty data stays below its limit.
//
// Counters (dirty, writeback) are kept here, so every state change of a
// folio goes through markDirty/clearDirty/setWriteback.
import createDebug from 'debug'
import { BufferPool, Folio, FOLIO_SIZE } from './folio'

const debug = createDebug('foliofs:pagecache')

export interface CacheStats {
  hits: number
  misses: number
  evictions: number
  readaheadFolios: number
}

/** folio indices per chunk of the ordered index */
const CHUNK = 64

/** lowest i with a[i] >= x in the ascending array a */
function lowerBound (a: number[], x: number): number {
  let lo = 0
  let hi = a.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (a[mid] < x) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** one inode's folios: by index, and the ascending chunk numbers that hold any (with their folio counts) */
class InoFolios {
  readonly byIndex = new Map<number, Folio>()
  private readonly chunks: number[] = []
  private readonly inChunk = new Map<number, number>()

  get size (): number { return this.byIndex.size }

  add (f: Folio): void {
    this.byIndex.set(f.index, f)
    const c = Math.floor(f.index / CHUNK)
    const n = this.inChunk.get(c) ?? 0
    this.inChunk.set(c, n + 1)
    if (n > 0) return
    const last = this.chunks.length - 1
    if (last < 0 || this.chunks[last] < c) this.chunks.push(c) // appending: the common case
    else this.chunks.splice(lowerBound(this.chunks, c), 0, c)
  }

  delete (index: number): void {
    if (!this.byIndex.delete(index)) return
    const c = Math.floor(index / CHUNK)
    const n = (this.inChunk.get(c) ?? 1) - 1
    if (n > 0) { this.inChunk.set(c, n); return }
    this.inChunk.delete(c)
    this.chunks.splice(lowerBound(this.chunks, c), 1)
  }

  /** the first chunk number >= c that holds folios, if any */
  chunkFrom (c: number): number | undefined {
    const i = lowerBound(this.chunks, c)
    return i < this.chunks.length ? this.chunks[i] : undefined
  }
}

export class PageCache {
  private readonly byIno = new Map<number, InoFolios>()
  private readonly clock = new Set<Folio>()
  private readonly pool: BufferPool
  private dirty = 0
  private inWriteback = 0
  /** dirty folios per inode (writeback picks inodes from here) */
  private readonly dirtyByIno = new Map<number, Set<Folio>>()
  readonly stats: CacheStats = { hits: 0, misses: 0, evictions: 0, readaheadFolios: 0 }
  /** bytes of the bound held outside folios (streaming read chunks: stream.ts); folios get the rest */
  reserved = 0

  constructor (readonly maxBytes: number) {
    this.pool = new BufferPool(Math.ceil(maxBytes / FOLIO_SIZE / 8))
  }

  get folios (): number { return this.clock.size }
  get bytes (): number { return this.clock.size * FOLIO_SIZE }
  get dirtyFolios (): number { return this.dirty }
  /**
   * Folios writeback has taken out of the dirty count whose blocks it has
   * not reserved yet (Writeback.startLocked, while its allocation waits,
   * e.g. for the punches of a big delete): space they are still owed.
   * Without it the space check let other writers into those blocks, and
   * writeback then failed with ENOSPC for data already answered.
   */
  placing = 0
  /** blocks dirty data will still take at writeback: dirty folios, and those being placed */
  get owedBlocks (): number { return this.dirty + this.placing }
  get dirtyBytes (): number { return this.dirty * FOLIO_SIZE }
  get writebackFolios (): number { return this.inWriteback }

  /** the cached folio, if any (marks it referenced) */
  get (ino: number, index: number): Folio | undefined {
    const f = this.byIno.get(ino)?.byIndex.get(index)
    if (f) f.referenced = true
    return f
  }

  /** the cached folio, if any, without marking it referenced (FIEMAP, SEEK_DATA: lookups that are not uses) */
  peek (ino: number, index: number): Folio | undefined {
    return this.byIno.get(ino)?.byIndex.get(index)
  }

  /** the cached folio, or a new one (not uptodate, contents undefined) */
  getOrCreate (ino: number, index: number): Folio {
    let m = this.byIno.get(ino)
    const f = m?.byIndex.get(index)
    if (f) { f.referenced = true; return f }
    if (!m) { m = new InoFolios(); this.byIno.set(ino, m) }
    const n = new Folio(ino, index, this.pool.take())
    m.add(n)
    this.clock.add(n)
    return n
  }

  /** f changed (or must be written again): dirty, and no longer as the data journal has it */
  markDirty (f: Folio): void {
    f.journaled = false
    if (f.dirty) return
    f.dirty = true
    f.dirtiedAt = Date.now()
    this.dirty++
    let set = this.dirtyByIno.get(f.ino)
    if (!set) { set = new Set(); this.dirtyByIno.set(f.ino, set) }
    set.add(f)
  }

  clearDirty (f: Folio): void {
    if (!f.dirty) return
    f.dirty = false
    this.dirty--
    const set = this.dirtyByIno.get(f.ino)
    set?.delete(f)
    if (set?.size === 0) this.dirtyByIno.delete(f.ino)
  }

  setWriteback (f: Folio, on: boolean): void {
    if (f.writeback === on) return
    f.writeback = on
    this.inWriteback += on ? 1 : -1
  }

  /** inodes that have dirty folios */
  dirtyInodes (): number[] {
    return [...this.dirtyByIno.keys()]
  }

  dirtyCount (ino: number): number {
    return this.dirtyByIno.get(ino)?.size ?? 0
  }

  /** dirty folios of ino with index in [from, to), ascending */
  dirtyOf (ino: number, from = 0, to = Infinity): Folio[] {
    const out: Folio[] = []
    for (const f of this.dirtyByIno.get(ino) ?? []) if (f.index >= from && f.index < to) out.push(f)
    return out.sort((a, b) => a.index - b.index)
  }

  /**
   * ino's dirty folios not in the data journal, ascending, if there are at
   * most `limit` (else null: too many), and the highest index of its dirty
   * folios (-1: none). One pass over the dirty set, sorting the few only.
   */
  unjournaledOf (ino: number, limit: number): { folios: Folio[] | null, maxIndex: number } {
    let out: Folio[] | null = []
    let maxIndex = -1
    for (const f of this.dirtyByIno.get(ino) ?? []) {
      if (f.index > maxIndex) maxIndex = f.index
      if (f.journaled || out === null) continue
      out.push(f)
      if (out.length > limit) out = null
    }
    return { folios: out === null ? null : out.sort((a, b) => a.index - b.index), maxIndex }
  }

  /** the oldest dirtiedAt among ino's dirty folios (Infinity if none) */
  oldestDirty (ino: number): number {
    let t = Infinity
    for (const f of this.dirtyByIno.get(ino) ?? []) if (f.dirtiedAt < t) t = f.dirtiedAt
    return t
  }

  /** cached folios of ino with index in [from, to), ascending */
  folioRange (ino: number, from: number, to = Infinity): Folio[] {
    return [...this.foliosInOrder(ino, from, to)]
  }

  /**
   * Cached folios of ino with index in [from, to), ascending, lazily: a
   * caller that stops early pays only for what it looked at. Costs
   * O(log chunks) per chunk holding folios in the range plus CHUNK probes
   * each, whatever the range's length. Safe while the cache changes
   * between yields (a folio added behind the cursor is not seen, one
   * removed ahead of it is not yielded).
   */
  * foliosInOrder (ino: number, from: number, to = Infinity): Generator<Folio> {
    let i = from
    while (i < to) {
      const m = this.byIno.get(ino)
      const c = m?.chunkFrom(Math.floor(i / CHUNK))
      if (c === undefined) return
      const hi = Math.min(to, (c + 1) * CHUNK)
      for (let k = Math.max(i, c * CHUNK); k < hi; k++) {
        const f = this.byIno.get(ino)?.byIndex.get(k)
        if (f) yield f
      }
      i = hi
    }
  }

  /** remove a folio the caller holds locked (truncate, unlink); its lock stays with the caller */
  remove (f: Folio): void {
    if (f.dropped) return
    this.clearDirty(f)
    const m = this.byIno.get(f.ino)
    m?.delete(f.index)
    if (m && m.size === 0) this.byIno.delete(f.ino)
    this.clock.delete(f)
    f.dropped = true
    f.uptodate = false
    this.pool.give(f.data)
  }

  /**
   * Evict clean, unlocked, idle folios (CLOCK) until the cache fits in
   * limit bytes (its bound less what streaming reads hold; less under
   * memory pressure). Returns
   * false if it cannot (everything left is dirty, under writeback or
   * locked: the caller throttles writers).
   */
  evict (limit = this.maxBytes - this.reserved): boolean {
    const max = Math.floor(limit / FOLIO_SIZE)
    if (this.clock.size <= max) return true
    const target = max - Math.max(1, max >> 6) // a little headroom: evict in batches
    const before = this.clock.size
    let budget = this.clock.size * 2 // each folio seen at most twice
    for (const f of this.clock) {
      if (this.clock.size <= target || budget-- <= 0) break
      if (f.dirty || f.writeback || f.isLocked) continue
      if (f.referenced) {
        f.referenced = false
        this.clock.delete(f)
        this.clock.add(f) // second chance: to the back
        continue
      }
      this.remove(f)
      this.stats.evictions++
    }
    debug('evicted %d folios; %d cached (%d dirty, %d under writeback), %d fit', before - this.clock.size, this.clock.size, this.dirty, this.inWriteback, max)
    return this.clock.size <= max
  }

  /** memory pressure: give back clean folios down to a quarter of what is cached, and the recycled buffers */
  shrink (): void {
    this.evict(Math.floor(this.clock.size / 4) * FOLIO_SIZE)
    this.pool.drain()
    this.onShrink?.()
  }

  /** what else gives memory back under pressure (the streaming reads' recycled chunks) */
  onShrink: (() => void) | null = null
}
