// Writeback with delayed allocation (cf. bcachefs fs/vfs/buffered-io.c):
// dirty folios get their physical location only here.
//
// A run is a set of dirty folios of one inode with consecutive indices.
// A pass writes runs in two stages that overlap (a pipeline):
//   write stage, one run after another:
//   1. lock its folios (ascending), keep those still dirty, clear dirty and
//      set writeback: a write arriving now waits for the folio lock, and
//      one that came before the lock is in the data we write;
//   2. allocate blocks for the whole run in one B-tree step (contiguous
//      where possible, continuing the file, or the run written just before
//      it when that is not committed yet; a run that continues nothing, an
//      overwrite or a new file, goes to the write point: where the pass's
//      previous run ended, in a free range of WRITE_POINT_BLOCKS), holding
//      the reservation past the step (detachReserved);
//   3. take the crc32 of every block (datacsum.ts: under the folio locks,
//      so it is the crc of exactly the bytes written) and write the folios
//      to the newly allocated blocks with async I/O, still holding the
//      folio locks: copy-on-write, never in place, so a crash leaves the
//      old data or the new, never a torn block;
//   commit stage, a batch at a time (every run written since the last one):
//   4. fdatasync the data area once, so the whole batch's data is durable
//      before any commit that maps it (ordered mode);
//   5. commit the runs' new extents and crcs, many runs (of any files)
//      per B-tree step (adoptReserved; COMMIT_GROUP): the blocks they
//      replace are freed, reusable once that commit is durable; each
//      inode's on-disk size advances to the end of written data only;
//   6. clear writeback and unlock.
// While a batch syncs (the disk's time, most of a pass's), the write stage
// goes on with the next runs, and the next fdatasync covers them all: one
// sync per batch instead of one per run. Runs written but not committed
// are bounded (maxInFlight) so that they never pin the whole cache.
// On failure a run's folios are dirty again and its reservation is returned.
//
// Passes are serialized (one at a time): background passes (dirty data
// older than expireMs, or more dirty data than dirtyBackground), fsync of
// one inode, sync of everything (unmount, SIGTERM). Writers wait in
// throttle() while dirty data exceeds dirtyLimit.
// A background pass yields: when an fsync (its pass, or its journal step)
// waits for its turn, the background pass starts no more runs, finishes
// the ones in flight and ends, and a new one is queued behind the fsync.
// An fsync then waits for one window of runs, not for everything old
// (a database's fsyncs waited up to 1.5 s behind the writeback of its
// earlier fsyncs' scattered blocks).
import { readFileSync } from 'fs'
import createDebug from 'debug'
import type { FileData } from '../filedata'
import type { Range } from '../btree'
import { FOLIO_SIZE, type Folio } from './folio'
import { fsErr } from '../errno'
import type { PageCache } from './cache'
import { cgroupMemoryLow } from '../memlimit'

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

/**
 * extents committed by one B-tree step at most (the runs of a batch are
 * cut into groups of about this many). One SQLite commit per run cost
 * ~200 us: most of the writeback of many small files. The bound keeps a
 * step short (it is synchronous: requests wait for it).
 */
export const COMMIT_GROUP = 128

/** the batch's runs in groups of about COMMIT_GROUP extents (a run is never split) */
function * groupsOf (batch: Written[]): Generator<Written[]> {
  for (let i = 0; i < batch.length;) {
    let j = i
    for (let n = 0; j < batch.length && (j === i || n + batch[j].pieces.length <= COMMIT_GROUP); j++) n += batch[j].pieces.length
    yield batch.slice(i, j)
    i = j
  }
}

/** runs written and not yet committed, in bytes, at most (by default) */
export const MAX_IN_FLIGHT = 64 << 20

/** a run the write stage wrote (its folios locked, under writeback) and the commit stage commits */
interface Written {
  ino: number
  start: number
  folios: Folio[]
  pieces: Range[]
  crcs: Uint32Array
  /** the data area's syncFailures before the run was written (DataArea.writtenSafely) */
  syncFailures: number
}

/** where the next run of ino should go when it starts at index: after the run written just before it */
interface Hint { ino: number, index: number, pblk: number }

/** a run whose blocks are allocated and whose write was started (startLocked) */
interface Started {
  /** the write: the run, written and still locked */
  io: Promise<Written>
  bytes: number
  /** where the run after it should go */
  next: Hint
}

/**
 * runs whose writes may be in flight at once in a pass, and their bytes
 * at most: allocation stays in order (a run's place depends on the one
 * before), only the I/O overlaps. One run at a time left the disk and the
 * crc thread idle between the many small runs of small files.
 */
export const WRITE_WINDOW = 64
export const WRITE_WINDOW_BYTES = 16 << 20

/** blocks one gathered write takes at most (WriteGather; a larger run goes alone) */
export const GATHER_MAX_BLOCKS = 1024

type Waiter = { resolve: () => void, reject: (err: unknown) => void }

/**
 * Writes of runs whose blocks follow each other in the data area, started
 * in the same turn of the event loop, go out as one write. The allocator
 * places the runs of a pass one after another (the first free space after
 * where each file is), so the many one-block runs of small files or of
 * random overwrites become a few large writes. A gathered write goes out
 * at the end of the turn, or as soon as the next write does not follow
 * it; each caller's promise settles with it (a failure fails them all).
 */
class WriteGather {
  private pend: { pblk: number, end: number, bufs: Buffer[], waiters: Waiter[] } | null = null

  constructor (private readonly write: (bufs: Buffer[], pblk: number) => Promise<void>) {}

  /** write bufs (whole blocks, in order) at pblk, with the ones before it if they end there */
  add (bufs: Buffer[], pblk: number): Promise<void> {
    const blocks = bufs.reduce((n, b) => n + b.length / FOLIO_SIZE, 0)
    let p = this.pend
    if (!p || p.end !== pblk || (p.end - p.pblk) + blocks > GATHER_MAX_BLOCKS) {
      this.flush()
      p = this.pend = { pblk, end: pblk, bufs: [], waiters: [] }
      setImmediate(() => { if (this.pend === p) this.flush() })
    }
    for (const b of bufs) p.bufs.push(b)
    p.end += blocks
    const q = p
    return new Promise((resolve, reject) => q.waiters.push({ resolve, reject }))
  }

  private flush (): void {
    const p = this.pend
    if (!p) return
    this.pend = null
    this.write(p.bufs, p.pblk).then(() => { for (const w of p.waiters) w.resolve() }, err => { for (const w of p.waiters) w.reject(err) })
  }
}

/** the write stage's runs in flight (WRITE_WINDOW) */
class WriteWindow {
  private readonly inFlight: Array<{ done: Promise<void>, bytes: number }> = []
  private bytes = 0

  /** done never rejects */
  add (done: Promise<void>, bytes: number): void {
    this.inFlight.push({ done, bytes })
    this.bytes += bytes
  }

  /** wait until there is room for one more run */
  async bound (): Promise<void> {
    await this.retireWhile(() => this.inFlight.length >= WRITE_WINDOW || this.bytes >= WRITE_WINDOW_BYTES)
  }

  async idle (): Promise<void> {
    await this.retireWhile(() => true)
  }

  /** wait for the oldest run in flight while there is one and more() */
  private async retireWhile (more: () => boolean): Promise<void> {
    while (this.inFlight.length > 0 && more()) {
      const w = this.inFlight.shift()!
      await w.done
      this.bytes -= w.bytes
    }
  }
}

const bytesOf = (w: Written): number => w.folios.length * FOLIO_SIZE

/**
 * The commit stage of one pass: batches of written runs, one at a time,
 * each taking every run written while the one before it synced. Errors
 * go to the pass's list.
 */
class CommitStage {
  private queue: Written[] = []
  private running: Promise<void> | null = null
  private queuedBytes = 0
  batches = 0

  constructor (private readonly wb: Writeback, private readonly errors: unknown[]) {}

  add (w: Written): void {
    this.queue.push(w)
    this.queuedBytes += bytesOf(w)
    this.kick()
  }

  private kick (): void {
    if (this.running || this.queue.length === 0) return
    this.running = this.loop()
  }

  private async loop (): Promise<void> {
    try {
      while (this.queue.length) {
        const batch = this.queue
        this.queue = []
        this.batches++
        const err = await this.wb.commitBatch(batch)
        this.queuedBytes -= batch.reduce((s, w) => s + bytesOf(w), 0)
        if (err) this.errors.push(err)
      }
    } finally {
      this.running = null // synchronously with the last look at the queue: add() after this starts a new loop
    }
  }

  /** wait while more than max bytes are written and not committed */
  async bound (max: number): Promise<void> {
    this.kick()
    while (this.running && this.queuedBytes > max) await this.running
  }

  /** wait until every run added is committed or failed */
  async idle (): Promise<void> {
    this.kick()
    while (this.running) { await this.running; this.kick() }
  }
}

export interface WritebackLimits {
  /** dirty bytes above which a background pass starts */
  dirtyBackground: number
  /** dirty bytes above which writers wait */
  dirtyLimit: number
  /** dirty data older than this is written back by the background timer */
  expireMs: number
  /** bytes written and not yet committed at most (MAX_IN_FLIGHT by default) */
  maxInFlight?: number
  /** fault injection: hold a run's folio locks this long after writing it (FIEMAP contention tests) */
  delayMs: number
  /** is the system short of memory? (checked by the background timer; memoryLow() by default) */
  memoryLow?: () => boolean
}

/**
 * The system is short of memory when less than a twentieth of it (at
 * least 64 MiB) is available (/proc/meminfo MemAvailable: free memory plus
 * what the kernel can reclaim), or when a memory cgroup of the daemon (a
 * container's --memory) is short of its own limit (memlimit.ts). False
 * where neither can be read.
 */
export function memoryLow (): boolean {
  return hostMemoryLow() || cgroupMemoryLow()
}

function hostMemoryLow (): boolean {
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
  /** background passes that ended early to let an fsync go first (and went on after it) */
  yielded: number
}

/**
 * runs inside a run's commit: update the inode (on-disk size up to
 * endBlock, blocks, times). What it returns runs once the commit is done
 * (in-memory state that must not change if the commit rolls back).
 */
export type RunCommitted = (ino: number, startBlock: number, endBlock: number, addedBlocks: number, freedBlocks: number) => (() => void) | undefined

export class Writeback {
  private chain: Promise<void> = Promise.resolve()
  private background: Promise<void> | null = null
  private timer: NodeJS.Timeout | null = null
  private waiters: Array<() => void> = []
  /** fsyncs queued behind a pass (serialize) that has not started them yet: a background pass yields to them */
  private urgent = 0
  lastError: Error | null = null
  readonly stats: WritebackStats = { passes: 0, runs: 0, folios: 0, bytes: 0, throttled: 0, errors: 0, memoryPressure: 0, yielded: 0 }

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

  /**
   * serialize for an fsync: a background pass running or queued before it
   * yields (pass) instead of running to its end
   */
  private serializeUrgent<T> (fn: () => Promise<T>): Promise<T> {
    this.urgent++
    let started = false
    const begin = (): void => { if (!started) { started = true; this.urgent-- } }
    const p = this.serialize(async () => { begin(); return await fn() })
    p.catch(() => {}).finally(begin) // a pass before it that throws never starts it: the count still drops
    return p
  }

  /** an fsync's step that must run between passes (none runs while it does; passes after it wait) */
  async exclusive<T> (fn: () => Promise<T>): Promise<T> {
    return await this.serializeUrgent(fn)
  }

  /** fsync: write back ino's dirty folios with index in [from, to) */
  async inode (ino: number, from = 0, to = Infinity): Promise<void> {
    await this.serializeUrgent(async () => { await this.pass([ino], from, to) })
  }

  /** write back everything dirty */
  async all (): Promise<void> {
    await this.serialize(async () => { await this.pass(this.cache.dirtyInodes()) })
  }

  /**
   * Write back inos' dirty folios in [from, to). A background pass
   * (yields) stops starting runs once an fsync waits (urgent) and it has
   * started one: returns true when it stopped early, its in-flight runs
   * committed and the rest still dirty.
   */
  private async pass (inos: number[], from = 0, to = Infinity, yields = false): Promise<boolean> {
    this.stats.passes++
    let stopped = false
    let begun = 0 // runs started
    const t0 = performance.now()
    const runs0 = this.stats.runs
    const bytes0 = this.stats.bytes
    const errors: unknown[] = []
    const commits = new CommitStage(this, errors)
    const writes = new WriteWindow()
    const gather = new WriteGather(async (bufs, pblk) => { await this.data.area.write(bufs, pblk) })
    let next: Hint | null = null // where the run started last ends (any inode): the write point
    // runs reach the commit stage in the order they were started, whatever
    // order their writes end in: a file's runs commit in order, so its
    // on-disk size never passes a run that is not mapped yet
    let inOrder: Promise<void> = Promise.resolve()
    outer: for (const ino of inos) {
      for (const run of runsOf(this.cache.dirtyOf(ino, from, to), MAX_RUN)) {
        if (yields && this.urgent > 0 && begun > 0) { stopped = true; break outer }
        const { started, error } = await this.writeRun(ino, run, next, gather)
        begun += started.length
        for (const s of started) {
          const settled = s.io.then(w => ({ w, err: null }), err => ({ w: null, err })) // handled now, not when its turn comes
          inOrder = inOrder.then(async () => {
            const r = await settled
            if (r.w) commits.add(r.w)
            else errors.push(r.err)
          })
          writes.add(inOrder, s.bytes)
          next = s.next
        }
        if (error) errors.push(error)
        await writes.bound()
        await commits.bound(this.limits.maxInFlight ?? MAX_IN_FLIGHT)
      }
    }
    await writes.idle()
    await commits.idle()
    this.wakeWaiters()
    debug('pass over inodes %o: %d runs, %d bytes in %d ms, %d syncs; %d bytes dirty left%s', inos, this.stats.runs - runs0,
      this.stats.bytes - bytes0, Math.round(performance.now() - t0), commits.batches, this.cache.dirtyBytes, stopped ? ' (yielded to an fsync)' : '')
    if (errors.length) throw errors[0]
    return stopped
  }

  /**
   * Write stage for one run: lock it, and start writing each part still
   * dirty (locked folios may have been written or dropped meanwhile: the
   * parts are what is left, cut where it is no longer consecutive).
   * Returns the parts started (their allocation done, their I/O in flight:
   * each `io` gives the written run, still locked, for the commit stage),
   * also when a later part failed to start, and that failure if any; what
   * it does not return it has unlocked.
   */
  private async writeRun (ino: number, run: Folio[], hint: Hint | null, gather: WriteGather): Promise<{ started: Started[], error: unknown }> {
    for (const f of run) await f.lock()
    const live: Folio[] = []
    for (const f of run) {
      if (!f.dropped && f.dirty) live.push(f)
      else f.unlock()
    }
    const out: Started[] = []
    const parts = [...runsOf(live, MAX_RUN)]
    try {
      for (const part of parts) {
        const h = hint !== null && hint.ino === ino && hint.index === part[0].index ? hint.pblk : undefined
        const s = await this.startLocked(ino, part, h, hint?.pblk, gather)
        out.push(s)
        hint = s.next
      }
    } catch (err) {
      for (const part of parts.slice(out.length + 1)) for (const f of part) f.unlock() // the failed one: startLocked did
      return { started: out, error: err }
    }
    return { started: out, error: null }
  }

  /**
   * Steps 2-3 for consecutive folios the caller holds locked: allocate
   * (awaited: the next run's hint depends on it), then checksum and write
   * them (the returned `io`). On failure of either they are dirty again and
   * unlocked (and `io` rejects).
   */
  private async startLocked (ino: number, run: Folio[], hint: number | undefined, writePoint: number | undefined, gather: WriteGather): Promise<Started> {
    const start = run[0].index
    for (const f of run) { this.cache.clearDirty(f); this.cache.setWriteback(f, true) }
    let pieces: Range[]
    this.cache.placing += run.length // owed blocks until the reservation holds them
    try {
      pieces = await this.data.allocRun(ino, start, run.length, hint, writePoint)
    } catch (err) {
      this.cache.placing -= run.length
      this.failed({ ino, start, folios: run, pieces: [], crcs: new Uint32Array(0), syncFailures: 0 }, err)
      throw err
    }
    this.cache.placing -= run.length
    const io = (async (): Promise<Written> => {
      // the folios are locked: their bytes are what is written and
      // checksummed (on the crc thread, while the writes run)
      const bufs = run.map(f => f.data)
      const syncFailures = this.data.area.syncFailures
      const crcs = this.data.crc.crcs(bufs)
      try {
        let k = 0
        try {
          for (const p of pieces) {
            await gather.add(bufs.slice(k, k + p.len), p.pblk)
            k += p.len
          }
        } finally {
          await crcs.catch(() => {}) // the buffers stay unchanged until it is done
        }
        return { ino, start, folios: run, pieces, crcs: await crcs, syncFailures }
      } catch (err) {
        this.failed({ ino, start, folios: run, pieces, crcs: new Uint32Array(0), syncFailures }, err)
        throw err
      }
    })()
    const last = pieces[pieces.length - 1]
    return { io, bytes: run.length * FOLIO_SIZE, next: { ino, index: start + run.length, pblk: last.pblk + last.len } }
  }

  /**
   * Steps 4-6 for a batch of written runs: one fdatasync, then their
   * commits, a group of runs per B-tree step. Each run ends committed or
   * failed (dirty again); returns the first error. A group that fails is
   * committed again one run at a time, so that one failing run does not
   * fail the others.
   */
  async commitBatch (batch: Written[]): Promise<unknown> {
    try {
      await this.data.area.datasync()
    } catch (err) {
      for (const w of batch) this.failed(w, err)
      return err
    }
    // runs written before another batch's sync failed: that failure may
    // have been theirs (reported once, to that sync), so written again
    let first: unknown = null
    const lost = batch.filter(w => !this.data.area.writtenSafely(w.syncFailures))
    if (lost.length > 0) {
      first = fsErr('EIO', 'a sync of the data area failed after these blocks were written: written again')
      for (const w of lost) this.failed(w, first)
      batch = batch.filter(w => this.data.area.writtenSafely(w.syncFailures))
    }
    if (this.limits.delayMs > 0) await new Promise(resolve => setTimeout(resolve, this.limits.delayMs))
    for (const group of groupsOf(batch)) {
      const err = await this.commitGroup(group)
      if (err === null) continue
      if (group.length === 1) { first ??= err; continue }
      for (const w of group) {
        const e = await this.commitGroup([w]) // every one of them, even after a failure
        first ??= e
      }
    }
    return first
  }

  /** commit these runs in one B-tree step and finish them; on failure a lone run has failed, a group is left as it was */
  private async commitGroup (group: Written[]): Promise<unknown> {
    let after: Array<() => void> = []
    try {
      await this.data.commitRuns(group.map(w => ({
        ino: w.ino,
        start: w.start,
        pieces: w.pieces,
        crcs: w.crcs,
        hook: (added, freed) => {
          const fn = this.committed(w.ino, w.start, w.start + w.folios.length, added, freed)
          if (fn) after.push(fn)
        }
      })), () => { after = [] })
    } catch (err) {
      if (group.length === 1) this.failed(group[0], err)
      return err
    }
    for (const fn of after) fn()
    for (const w of group) {
      for (const f of w.folios) { this.cache.setWriteback(f, false); f.unlock() }
      this.stats.runs++
      this.stats.folios += w.folios.length
      this.stats.bytes += bytesOf(w)
    }
    return null
  }

  /** a run that will not be committed: its reservation back, its folios dirty again and unlocked */
  private failed (w: Written, err: unknown): void {
    if (w.pieces.length) this.data.unreserve(w.pieces)
    for (const f of w.folios) {
      if (!f.dropped) this.cache.markDirty(f)
      this.cache.setWriteback(f, false)
      f.unlock()
    }
    this.stats.errors++
    this.lastError = err as Error
    debug('writeback of inode %d blocks %d+%d failed: %o', w.ino, w.start, w.folios.length, err)
    this.logFailure(w.ino, err)
  }

  /** when each kind of writeback failure (its errno) was last logged */
  private readonly failureLogged = new Map<string, number>()

  /**
   * One line in the daemon's log (stderr: --log) for a failed writeback,
   * at most once a minute for each errno: a failure that keeps coming
   * back (a host disk answering EIO) retried in silence, seen only in
   * stats and the debug log.
   */
  private logFailure (ino: number, err: unknown): void {
    const code = (err as { code?: string }).code ?? 'error'
    const now = Date.now()
    if (now - (this.failureLogged.get(code) ?? -Infinity) < 60_000) return
    this.failureLogged.set(code, now)
    const msg = err instanceof Error ? err.message : String(err)
    process.stderr.write(`foliofs: writeback of inode ${ino} failed (${msg}): its data stays dirty and is tried again; ${this.stats.errors} failed run(s) so far (foliofs stats); logged once a minute\n`)
  }

  // ---- background writeback and throttling ------------------------------

  /** start a background pass if one is due and none runs */
  kick (force = false): void {
    if (this.background) return
    const now = Date.now()
    const over = this.cache.dirtyBytes > this.limits.dirtyBackground
    const inos = this.cache.dirtyInodes().filter(ino => force || over || now - this.cache.oldestDirty(ino) >= this.limits.expireMs)
    if (inos.length === 0) return
    let yielded = false
    this.background = this.serialize(async () => { yielded = await this.pass(inos, 0, Infinity, true) })
      .catch(err => { debug('background writeback: %o', err) })
      .finally(() => {
        this.background = null
        if (yielded) { this.stats.yielded++; this.kick(force) } // queued behind the fsyncs it yielded to
        this.wakeWaiters()
      })
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
      const errors = this.stats.errors
      const written = this.stats.bytes
      await new Promise<void>(resolve => this.waiters.push(resolve))
      // a pass that failed and wrote nothing (ENOSPC, an I/O error) would
      // fail again at once, without any I/O: looping on it never yielded
      // to the event loop, and no request was answered any more. The
      // writer goes on; its own checks answer it (reserveSpace: ENOSPC).
      if (this.stats.errors > errors && this.stats.bytes === written) return
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
