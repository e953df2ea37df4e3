// Writeback with delayed allocation (cf. bcachefs fs/vfs/buffered-io.c):
// dirty folios get their physical location only here.
//
// A run is a set of dirty folios of one inode with consecutive indices.
// For each run:
//   1. lock its folios (ascending), keep those still dirty, clear dirty and
//      set writeback: a write arriving now waits for the folio lock, and
//      one that came before the lock is in the data we write;
//   2. allocate blocks for the whole run in one B-tree step (contiguous
//      where possible, continuing the file), holding the reservation past
//      the step (detachReserved);
//   3. write the folios to the newly allocated blocks with async I/O,
//      still holding the folio locks: copy-on-write, never in place, so a
//      crash leaves the old data or the new, never a torn block;
//   4. fdatasync the data area, so the data is durable before any commit
//      that maps it (ordered mode);
//   5. commit the new extents and the crc32 of every block written
//      (datacsum.ts: taken under the folio locks before the I/O, so it
//      is the crc of exactly the bytes written) in one B-tree step (adoptReserved); the
//      blocks they replace are freed, reusable once that commit is durable;
//      the inode's on-disk size advances to the end of written data only;
//   6. clear writeback and unlock.
// On failure the folios are dirty again and the reservation is returned.
//
// Passes are serialized (one at a time): background passes (dirty data
// older than expireMs, or more dirty data than dirtyBackground), fsync of
// one inode, sync of everything (unmount, SIGTERM). Writers wait in
// throttle() while dirty data exceeds dirtyLimit.
import { readFileSync } from 'fs'
import createDebug from 'debug'
import type { FileData } from '../filedata'
import { blockCrcs } from '../datacsum'
import type { Folio } from './folio'
import type { PageCache } from './cache'

const debug = createDebug('foliofs:writeback')

/** folios per run at most (8 MiB) */
export const MAX_RUN = 2048

/** folios (ascending) cut into runs of consecutive indices, at most max long */
function * runsOf (folios: Folio[], max: number): Generator<Folio[]> {
  for (let i = 0; i < folios.length;) {
    let j = i + 1
    while (j < folios.length && j - i < max && folios[j].index === folios[j - 1].index + 1) j++
    yield folios.slice(i, j)
    i = j
  }
}

export interface WritebackLimits {
  /** dirty bytes above which a background pass starts */
  dirtyBackground: number
  /** dirty bytes above which writers wait */
  dirtyLimit: number
  /** dirty data older than this is written back by the background timer */
  expireMs: number
  /** fault injection: hold a run's folio locks this long after writing it (FIEMAP contention tests) */
  delayMs: number
  /** is the system short of memory? (checked by the background timer; memoryLow() by default) */
  memoryLow?: () => boolean
}

/**
 * The system is short of memory when less than a twentieth of it (at
 * least 64 MiB) is available (/proc/meminfo MemAvailable: free memory plus
 * what the kernel can reclaim). False where that cannot be read.
 */
export function memoryLow (): boolean {
  let text: string
  try { text = readFileSync('/proc/meminfo', 'utf8') } catch { return false }
  const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN)
  const avail = kb('MemAvailable')
  const total = kb('MemTotal')
  if (!Number.isFinite(avail) || !Number.isFinite(total)) return false
  return avail < Math.max(64 * 1024, total / 20)
}

export interface WritebackStats {
  passes: number
  runs: number
  folios: number
  bytes: number
  throttled: number
  errors: number
  /** background ticks that found the system short of memory (everything dirty written back, clean folios given back) */
  memoryPressure: number
}

/** runs inside a run's commit: update the inode (on-disk size up to endBlock, blocks, times) */
export type RunCommitted = (ino: number, startBlock: number, endBlock: number, addedBlocks: number, freedBlocks: number) => void

export class Writeback {
  private chain: Promise<void> = Promise.resolve()
  private background: Promise<void> | null = null
  private timer: NodeJS.Timeout | null = null
  private waiters: Array<() => void> = []
  lastError: Error | null = null
  readonly stats: WritebackStats = { passes: 0, runs: 0, folios: 0, bytes: 0, throttled: 0, errors: 0, memoryPressure: 0 }

  constructor (
    private readonly cache: PageCache,
    private readonly data: FileData,
    private readonly committed: RunCommitted,
    readonly limits: WritebackLimits
  ) {}

  /** run fn after every pass before it (passes never overlap) */
  private serialize<T> (fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn)
    this.chain = p.then(() => {}, () => {})
    return p
  }

  /** write back ino's dirty folios with index in [from, to) */
  async inode (ino: number, from = 0, to = Infinity): Promise<void> {
    await this.serialize(async () => { await this.pass([ino], from, to) })
  }

  /** write back everything dirty */
  async all (): Promise<void> {
    await this.serialize(async () => { await this.pass(this.cache.dirtyInodes()) })
  }

  private async pass (inos: number[], from = 0, to = Infinity): Promise<void> {
    this.stats.passes++
    const t0 = performance.now()
    const runs0 = this.stats.runs
    const bytes0 = this.stats.bytes
    let firstErr: unknown = null
    for (const ino of inos) {
      for (const run of runsOf(this.cache.dirtyOf(ino, from, to), MAX_RUN)) {
        try {
          await this.writeRun(ino, run)
        } catch (err) {
          firstErr ??= err
        }
      }
    }
    this.wakeWaiters()
    debug('pass over inodes %o: %d runs, %d bytes in %d ms; %d bytes dirty left', inos, this.stats.runs - runs0,
      this.stats.bytes - bytes0, Math.round(performance.now() - t0), this.cache.dirtyBytes)
    if (firstErr) throw firstErr
  }

  private async writeRun (ino: number, run: Folio[]): Promise<void> {
    for (const f of run) await f.lock()
    const live: Folio[] = []
    for (const f of run) {
      if (!f.dropped && f.dirty) live.push(f)
      else f.unlock()
    }
    try {
      // still-dirty folios may no longer be consecutive
      for (const part of runsOf(live, MAX_RUN)) await this.writeLocked(ino, part)
    } finally {
      for (const f of live) f.unlock()
    }
  }

  /** steps 2-5 for consecutive folios the caller holds locked */
  private async writeLocked (ino: number, run: Folio[]): Promise<void> {
    const start = run[0].index
    for (const f of run) { this.cache.clearDirty(f); this.cache.setWriteback(f, true) }
    try {
      const pieces = await this.data.allocRun(ino, start, run.length)
      let committed = false
      try {
        // the folios are locked: their bytes are what is written and checksummed
        const crcs = blockCrcs(run.map(f => f.data))
        let k = 0
        for (const p of pieces) {
          await this.data.area.write(run.slice(k, k + p.len).map(f => f.data), p.pblk)
          k += p.len
        }
        await this.data.area.datasync()
        if (this.limits.delayMs > 0) await new Promise(resolve => setTimeout(resolve, this.limits.delayMs))
        await this.data.commitRun(ino, start, pieces, crcs, (added, freed) => this.committed(ino, start, start + run.length, added, freed))
        committed = true
      } finally {
        if (!committed) this.data.unreserve(pieces)
      }
      this.stats.runs++
      this.stats.folios += run.length
      this.stats.bytes += run.length * 4096
    } catch (err) {
      for (const f of run) if (!f.dropped) this.cache.markDirty(f)
      this.stats.errors++
      this.lastError = err as Error
      debug('writeback of inode %d blocks %d+%d failed: %o', ino, start, run.length, err)
      throw err
    } finally {
      for (const f of run) this.cache.setWriteback(f, false)
    }
  }

  // ---- background writeback and throttling ------------------------------

  /** start a background pass if one is due and none runs */
  kick (force = false): void {
    if (this.background) return
    const now = Date.now()
    const over = this.cache.dirtyBytes > this.limits.dirtyBackground
    const inos = this.cache.dirtyInodes().filter(ino => force || over || now - this.cache.oldestDirty(ino) >= this.limits.expireMs)
    if (inos.length === 0) return
    this.background = this.serialize(async () => { await this.pass(inos) })
      .catch(err => { debug('background writeback: %o', err) })
      .finally(() => { this.background = null; this.wakeWaiters() })
  }

  /** writers call this first: wait while dirty data is over the limit */
  async throttle (): Promise<void> {
    if (this.cache.dirtyBytes <= this.limits.dirtyBackground) return
    this.kick(true)
    if (this.cache.dirtyBytes <= this.limits.dirtyLimit) return
    this.stats.throttled++
    debug('throttling a writer: %d bytes dirty (limit %d)', this.cache.dirtyBytes, this.limits.dirtyLimit)
    while (this.cache.dirtyBytes > this.limits.dirtyBackground) {
      this.kick(true)
      if (!this.background) return // nothing can be written back (errors): do not hang writers
      await new Promise<void>(resolve => this.waiters.push(resolve))
    }
  }

  private wakeWaiters (): void {
    const w = this.waiters
    this.waiters = []
    for (const wake of w) wake()
  }

  /**
   * One background tick: under memory pressure write back everything dirty
   * (so it can be evicted) and give back clean folios; otherwise expire old
   * dirty data.
   */
  tick (): void {
    if ((this.limits.memoryLow ?? memoryLow)()) {
      this.stats.memoryPressure++
      debug('memory pressure: writing back %d dirty bytes, shrinking the cache from %d bytes', this.cache.dirtyBytes, this.cache.bytes)
      this.cache.shrink()
      this.kick(true)
      return
    }
    this.kick()
  }

  /** background timer: a tick once a second */
  start (): void {
    if (this.timer) return
    this.timer = setInterval(() => this.tick(), 1000)
    this.timer.unref()
  }

  stop (): void {
    if (this.timer) clearInterval(this.timer)
    this.timer = null
  }
}
