// FIEMAP through the restart-safe transaction layer (cf. bcachefs
// fs/vfs/fiemap.c, and pagecache.c for the dirty-folio scan).
//
// The walk is a sequence of steps, each one lockrestartDo; a step returns
// what it found and changes no outer state, so a restart just runs it
// again. A step:
//   1. peeks the next extent key at or after pos (bounded by the end);
//   2. in a hole before it (or when there is none), scans the page cache
//      for dirty or writeback folios with trylocks only: the step holds
//      B-tree locks, and waiting for a folio lock there would deadlock
//      against writeback, which takes folio locks first;
//   3. when a trylock fails, falls back to nonblockingOrDrop: the scan
//      runs again with locks dropped, waiting for each folio, and its
//      result is used (reported as delalloc) unless relock finds that the
//      tree changed meanwhile (writeback committed there), which restarts
//      the step. The slowpath is rare by construction: never every step.
//   4. the B-tree takes precedence: the page cache is consulted in holes
//      only; dirty or writeback folios there are DELALLOC | UNKNOWN (no
//      physical address yet).
// A step reports up to STEP_ITEMS items (extents and delalloc runs) so that
// fragmented files do not pay a transaction per extent; extents are copied
// out before the step ends. The caller merges neighbours with the same
// flags and contiguous physical addresses; the last extent of the range
// asked for carries FIEMAP_EXTENT_LAST (as on ext4: of the file, when the
// range runs to its end), unless the caller's array filled up first.
//
// SEEK_DATA and SEEK_HOLE (lseek) walk with the same steps (cf. bcachefs
// bch2_seek_data/bch2_seek_hole): written extents and delalloc runs are
// data; an unwritten (preallocated) extent is a hole except where dirty or
// writeback folios cover it. For them a step also scans the page cache over
// unwritten extents (FIEMAP does not: there the tree takes precedence and
// the extent is unwritten), in the step and the same way as in holes:
// trylocks, then nonblockingOrDrop. Never after the step, on its copied-out
// extent: writeback holds a run's folio locks until its commit has mapped
// them, so a scan that waited for them finds them clean, and only the tree
// read again says that they are now written (relock fails: the step runs
// again).
//
// Units: the ioctl speaks bytes; the tree and the cache speak 4 KiB blocks.
import createDebug from 'debug'
import { isRestart, lockrestartDo, nonblockingOrDrop, transGet, EXT_UNWRITTEN, RESTART_REASONS, type BtreeTrans, type RestartReason } from './btree'
import type { FileData } from './filedata'
import type { PageCache } from './pagecache/cache'
import type { Folio } from './pagecache/folio'
import { BLOCK_SIZE } from './imageerror'

const debug = createDebug('foliofs:fiemap')

export const FIEMAP_FLAG_SYNC = 0x1
export const FIEMAP_FLAG_XATTR = 0x2
export const FIEMAP_FLAGS_COMPAT = FIEMAP_FLAG_SYNC

export const FIEMAP_EXTENT_LAST = 0x1
export const FIEMAP_EXTENT_UNKNOWN = 0x2
export const FIEMAP_EXTENT_DELALLOC = 0x4
export const FIEMAP_EXTENT_UNWRITTEN = 0x800
export const FIEMAP_EXTENT_MERGED = 0x1000


/** items one step reports at most */
const STEP_ITEMS = 64

export interface FiemapExtent { logical: number, physical: number, length: number, flags: number }

export interface FiemapStats {
  /** map() calls started, and those that returned a map (the others threw) */
  calls: number
  completed: number
  steps: number
  trylockFailures: number
  slowpath: number
  restarts: number
  /** restarts by reason (they add up to restarts) */
  restartReasons: Record<RestartReason, number>
  /** most restarts one map() call needed, over all its steps */
  maxRestartsOneCall: number
}

/** one item of a step: a mapped extent or a delalloc run, in blocks */
interface Item { off: number, len: number, pblk: number, flags: number }
interface StepResult { items: Item[], next: number }

/** dirty, or under writeback with its mapping not committed yet: no physical place (read under the folio lock) */
const isDelalloc = (f: Folio): boolean => !f.dropped && (f.dirty || f.writeback)

/** The first run of consecutive delalloc folios among folios fed in index order. */
class RunFinder {
  private start = -1
  private end = -1

  /** can f still belong to the run? (false: stop feeding) */
  wants (f: Folio): boolean { return this.start < 0 || f.index === this.end }

  /** record f's state; false when the run has ended */
  add (f: Folio, delalloc: boolean): boolean {
    if (!delalloc) return this.start < 0 // before a run: keep looking; a clean folio ends one
    if (this.start < 0) this.start = f.index
    this.end = f.index + 1
    return true
  }

  get run (): [number, number] | null { return this.start >= 0 ? [this.start, this.end] : null }
}

export class Fiemap {
  readonly stats: FiemapStats = {
    calls: 0,
    completed: 0,
    steps: 0,
    trylockFailures: 0,
    slowpath: 0,
    restarts: 0,
    restartReasons: Object.fromEntries(RESTART_REASONS.map(r => [r, 0])) as Record<RestartReason, number>,
    maxRestartsOneCall: 0
  }

  constructor (private readonly data: FileData, private readonly cache: PageCache) {}

  /**
   * The first run of dirty or writeback folios in [a, b), trylocking each
   * folio it looks at; undefined on contention (a folio is locked).
   */
  private scanTry (ino: number, a: number, b: number): { run: [number, number] | null } | undefined {
    const rf = new RunFinder()
    for (const f of this.cache.foliosInOrder(ino, a, b)) {
      if (!rf.wants(f)) break
      if (!f.trylock()) { this.stats.trylockFailures++; return undefined }
      const d = isDelalloc(f)
      f.unlock()
      if (!rf.add(f, d)) break
    }
    return { run: rf.run }
  }

  /** the same scan, waiting for folio locks (locks dropped: never inside a step holding B-tree locks) */
  private async scanBlocking (ino: number, a: number, b: number): Promise<{ run: [number, number] | null }> {
    this.stats.slowpath++
    const rf = new RunFinder()
    for (const f of this.cache.foliosInOrder(ino, a, b)) {
      if (!rf.wants(f)) break
      await f.lock()
      const d = isDelalloc(f)
      f.unlock()
      if (!rf.add(f, d)) break
    }
    debug('ino %d: slowpath scan of blocks %d..%d found %o', ino, a, b, rf.run)
    return { run: rf.run }
  }

  /**
   * Inside a step: the first run of dirty or writeback folios in [a, b),
   * trylocks first, else waiting with locks dropped (the step restarts when
   * the tree changed meanwhile; otherwise its iterator is still valid).
   */
  private async scan (t: BtreeTrans, ino: number, a: number, b: number): Promise<[number, number] | null> {
    return (await nonblockingOrDrop(t, () => this.scanTry(ino, a, b), async () => await this.scanBlocking(ino, a, b))).run
  }

  /** one step from block pos, not past end (seek: also delalloc runs over unwritten extents) */
  private async step (trans: BtreeTrans, ino: number, pos: number, end: number, seek = false): Promise<StepResult> {
    this.stats.steps++
    const before = trans.totalRestarts
    try {
      return await lockrestartDo(trans, async t => {
        try {
          return await this.stepBody(t, ino, pos, end, seek)
        } catch (err) {
          if (isRestart(err)) {
            this.stats.restartReasons[err.reason]++
            debug('ino %d step at block %d: restart (%s)', ino, pos, err.reason)
          }
          throw err
        }
      })
    } finally {
      this.stats.restarts += trans.totalRestarts - before
    }
  }

  /**
   * The body of one step (runs again on a restart). With seek, the folios
   * over an unwritten extent are scanned too: its dirty or writeback runs
   * come as delalloc items between unwritten ones (a step may then report
   * one item more than STEP_ITEMS).
   */
  private async stepBody (t: BtreeTrans, ino: number, pos: number, end: number, seek: boolean): Promise<StepResult> {
    const items: Item[] = []
    const delalloc = (s: number, r: number): void => { items.push({ off: s, len: r - s, pblk: 0, flags: FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_UNKNOWN }) }
    let at = pos
    const it = t.iter(ino, at)
    let e = it.peekMax(end)
    while (at < end && items.length < STEP_ITEMS) {
      if (e && e.off <= at) { // mapped: the tree takes precedence
        const to = Math.min(e.off + e.len, end)
        const unwritten = (e.flags & EXT_UNWRITTEN) !== 0
        // (after a scan that dropped locks, e is still current: relock succeeded)
        const run = seek && unwritten ? await this.scan(t, ino, at, to) : null
        const upTo = run ? run[0] : to
        if (upTo > at) items.push({ off: at, len: upTo - at, pblk: e.pblk + (at - e.off), flags: unwritten ? FIEMAP_EXTENT_UNWRITTEN : 0 })
        if (run) delalloc(run[0], run[1])
        at = run ? run[1] : to
        if (at < to) continue // more of this extent to scan
        e = it.next()
        if (e && e.off >= end) e = null
        continue
      }
      const holeEnd = e ? e.off : end
      const run = await this.scan(t, ino, at, holeEnd)
      if (!run) { at = holeEnd; continue }
      delalloc(run[0], run[1])
      at = run[1] // still before e: the iterator stays valid (relock succeeded, or no slowpath ran)
    }
    return { items, next: at }
  }

  /**
   * The map of [start, start+length) bytes of ino, also past the end of the
   * file (as on Linux: extents preallocated with FALLOC_FL_KEEP_SIZE lie
   * there). maxExtents 0 counts only. Returns the extents (merged, at most
   * maxExtents unless counting), and how many there are.
   */
  async map (ino: number, start: number, length: number, maxExtents: number): Promise<{ extents: FiemapExtent[], count: number }> {
    this.stats.calls++
    const first = Math.floor(start / BLOCK_SIZE)
    const end = Math.ceil(Math.min(start + length, Number.MAX_SAFE_INTEGER) / BLOCK_SIZE)
    const out: FiemapExtent[] = []
    let count = 0
    let pending: FiemapExtent | null = null
    const trans = transGet(this.data.tree)
    let pos = first
    let full = false
    const restartsBefore = trans.totalRestarts
    const emit = (x: Item): void => {
      const ext = { logical: x.off * BLOCK_SIZE, physical: x.pblk * BLOCK_SIZE, length: x.len * BLOCK_SIZE, flags: x.flags }
      if (pending && pending.logical + pending.length === ext.logical && pending.flags === ext.flags &&
          (ext.flags & FIEMAP_EXTENT_DELALLOC || pending.physical + pending.length === ext.physical)) {
        pending.length += ext.length
        return
      }
      if (pending) { count++; if (maxExtents > 0) out.push(pending) }
      if (maxExtents > 0 && out.length >= maxExtents) { full = true; pending = null; return }
      pending = ext
    }
    while (pos < end && !full) {
      const r = await this.step(trans, ino, pos, end)
      for (const x of r.items) { emit(x); if (full) break }
      pos = r.next
    }
    if (pending) {
      count++
      if (maxExtents > 0) out.push(pending)
    }
    // the last extent of the range carries LAST, as on ext4 (iomap) and
    // bcachefs: the caller asked for nothing after it (for the whole file,
    // it is the file's last); not when the array filled up before the end
    const last = out[out.length - 1]
    if (last && !full) last.flags |= FIEMAP_EXTENT_LAST
    const restarts = trans.totalRestarts - restartsBefore
    if (restarts > this.stats.maxRestartsOneCall) this.stats.maxRestartsOneCall = restarts
    this.stats.completed++
    return { extents: out, count }
  }

  /** SEEK's items of blocks [pos, end) of ino, a step at a time: unwritten items are holes, the others data */
  private async * seekItems (ino: number, pos: number, end: number): AsyncGenerator<Item> {
    const trans = transGet(this.data.tree)
    while (pos < end) {
      const r = await this.step(trans, ino, pos, end, true)
      yield * r.items
      if (r.items.length === 0) return
      pos = r.next
    }
  }

  /** SEEK_DATA: the first byte of data at or after offset, null past the last (ENXIO) */
  async seekData (ino: number, size: number, offset: number): Promise<number | null> {
    if (offset >= size) return null
    for await (const x of this.seekItems(ino, Math.floor(offset / BLOCK_SIZE), Math.ceil(size / BLOCK_SIZE))) {
      if (x.flags & FIEMAP_EXTENT_UNWRITTEN) continue
      return Math.max(offset, x.off * BLOCK_SIZE)
    }
    return null
  }

  /** SEEK_HOLE: the first byte of a hole at or after offset (the end of the file is one), null past it (ENXIO) */
  async seekHole (ino: number, size: number, offset: number): Promise<number | null> {
    if (offset >= size) return null
    let data = Math.floor(offset / BLOCK_SIZE) // data runs without a gap up to here
    const hole = (): number => Math.min(size, Math.max(offset, data * BLOCK_SIZE))
    for await (const x of this.seekItems(ino, data, Math.ceil(size / BLOCK_SIZE))) {
      if (x.off > data || x.flags & FIEMAP_EXTENT_UNWRITTEN) return hole()
      data = x.off + x.len
    }
    return hole()
  }
}

// ---- the private ioctl's buffer (struct fiemap, linux/fiemap.h) ----------
//   struct fiemap (32 bytes): u64 fm_start, u64 fm_length, u32 fm_flags,
//     u32 fm_mapped_extents, u32 fm_extent_count, u32 fm_reserved
//   struct fiemap_extent (56 bytes): u64 fe_logical, u64 fe_physical,
//     u64 fe_length, u64 fe_reserved64[2], u32 fe_flags, u32 fe_reserved[3]
// Little-endian (the host's). A FUSE ioctl that fails copies nothing back,
// but EBADR must hand back the unsupported flags: the private ioctl then
// succeeds with fm_reserved = EBADR and fm_flags = those bits, and the
// LD_PRELOAD shim turns that into -1/EBADR.
export const FIEMAP_HEADER = 32
export const FIEMAP_EXTENT_SIZE = 56
export const FIEMAP_MAX_PER_CALL = 291
export const EBADR = 53

export interface FiemapRequest { start: number, length: number, flags: number, extentCount: number }

const u64 = (b: Buffer, at: number): number => Number(b.readBigUInt64LE(at))

export function decodeRequest (b: Buffer): FiemapRequest {
  return { start: u64(b, 0), length: u64(b, 8), flags: b.readUInt32LE(16), extentCount: b.readUInt32LE(24) }
}

export function encodeReply (b: Buffer, mapped: number, extents: FiemapExtent[]): void {
  b.writeUInt32LE(mapped, 20)
  b.writeUInt32LE(0, 28)
  let at = FIEMAP_HEADER
  for (const e of extents) {
    b.fill(0, at, at + FIEMAP_EXTENT_SIZE)
    b.writeBigUInt64LE(BigInt(e.logical), at)
    b.writeBigUInt64LE(BigInt(e.physical), at + 8)
    b.writeBigUInt64LE(BigInt(e.length), at + 16)
    b.writeUInt32LE(e.flags, at + 40)
    at += FIEMAP_EXTENT_SIZE
  }
}

export function encodeBadFlags (b: Buffer, bad: number): void {
  b.writeUInt32LE(bad, 16)
  b.writeUInt32LE(0, 20)
  b.writeUInt32LE(EBADR, 28)
}
