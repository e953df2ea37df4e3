// File data: logical blocks of an inode map through the extent B-tree to
// physical blocks of the data area (dataarea.ts). This is the layer under
// the page cache: it looks mappings up, reads blocks, allocates and
// commits writeback runs, and truncates. It never writes file data itself
// (writeback does, through `area`).
//
// Every change is an async B-tree transaction step (lockrestartDo); its
// commit runs the caller's inode update in the same SQLite transaction (the
// commit hook), so mapping, free space and size commit together. Nothing
// here runs inside an outer SQLite transaction (the B-tree refuses that).
//
// Truncation and freeing run in bounded steps (one transaction each,
// yielding to the event loop in between), like bcachefs's fpunch loop: no
// single step blocks other operations for long, and memory stays bounded.
// A step unmaps at most TRUNCATE_BATCH_MAX extents; how many it takes
// adapts to time: the next step aims at TRUNCATE_STEP_MS given what the
// last one took per extent (at most doubling, at least TRUNCATE_BATCH_MIN),
// so a fast machine takes few big steps and a loaded one many small ones.
// Crash safety across steps is the caller's (fs.ts records the inode as an
// orphan before the first step; recovery finishes the job).
import { flushBatch } from './sqltx'
import * as fs from 'fs'
import * as os from 'os'
import { promisify } from 'util'
import type Database from 'better-sqlite3'
import { fsErr } from './errno'
import { BLOCK_SIZE } from './imageerror'
import type { DataArea } from './dataarea'
import { CrcThread } from './crcthread'
import { ChecksumError, DataCsums } from './datacsum'
import { Discard } from './discard'
import { ReadPlans, type PlanSegment, type PlanTicket } from './readplan'
import { BtreeError, ExtentTree, EXT_UNWRITTEN, EXT_WRITTEN, lockrestartDo, lockrestartDoSync, MAX_EXTENT_LEN, transGet, yieldToLoop, type BtreeTrans, type Extent, type Range, type TreeOptions, type TreeStats } from './btree'

const END = Number.MAX_SAFE_INTEGER
/**
 * free blocks (1 MiB) a run at writeback's write point looks for
 * (allocRun): fewer and the runs of a pass land in the holes of an aged
 * image, one write each (a data area write costs the main thread a
 * thread-pool hand-off, ~0.1-0.3 ms here)
 */
export const WRITE_POINT_BLOCKS = 256

/** extents unmapped by the first truncate step; later ones adapt (see above) */
export const TRUNCATE_BATCH = 1024
export const TRUNCATE_BATCH_MIN = 128
export const TRUNCATE_BATCH_MAX = 4096
/** what a truncate step aims to take (the synchronous part) */
export const TRUNCATE_STEP_MS = 3

/** truncate counters (foliofs stats, field btree) */
export interface TruncateStats {
  /** truncate/unlink steps run (one transaction each) */
  truncateSteps: number
  /** extents those steps unmapped */
  truncateExtents: number
  /** longest truncate step, ms */
  maxTruncateStepMs: number
}

export interface FileDataOptions extends TreeOptions {
  /** punch freed blocks (default: on, where the host supports it; never on a read-only image) */
  discard?: boolean
  /**
   * the clock truncate and unlink steps are timed by (default
   * performance.now). Their batch sizes follow it, so a test that counts
   * steps injects one whose steps take a fixed time; with the real clock
   * the count depends on the machine's load.
   */
  stepClock?: () => number
}

/** one writeback run to commit (FileData.commitRuns) */
export interface RunCommit {
  ino: number
  /** its first block */
  start: number
  /** where its blocks went (allocRun's reservation, in block order) */
  pieces: Range[]
  /** crc32 of each block written */
  crcs: Uint32Array
  /** runs inside the commit: blocks mapped, blocks freed (the inode update) */
  hook: (addedBlocks: number, freedBlocks: number) => void
}

/** runs inside the commit of each truncate step: blocks freed by it, first and last step */
export type TruncateStep = (freedBlocks: number, first: boolean, last: boolean) => void

const fdatasync = promisify(fs.fdatasync)

export class FileData {
  readonly tree: ExtentTree
  private readonly truncateStats: TruncateStats = { truncateSteps: 0, truncateExtents: 0, maxTruncateStepMs: 0 }
  /**
   * SQLite's WAL file, for syncCommits. Opened with the image (openWal):
   * Linux reports a failed writeback to each file description open when
   * it happened, but to one opened later only if no sync saw it yet, and
   * SQLite's own syncs (its automatic checkpoints) see it and tell no one.
   */
  private walFd: number | null = null
  /** the WAL again, for checkpoint's synchronous sync (a description of its own: syncCommits may be syncing walFd meanwhile) */
  private ckptFd: number | null = null
  /**
   * The WAL again, for the binding's syncs (commitsToSync(true)): a file
   * description of its own, so that a failed writeback, which Linux
   * reports once per open file description, reaches syncCommits too and
   * not only whichever sync met it first (walFailure)
   */
  private handOffFd: number | null = null
  /** per-block crcs of written data (datacsum.ts) */
  readonly csums: DataCsums
  /** computes them off the main thread (crcthread.ts) */
  readonly crc = new CrcThread()
  /** data area blocks whose mismatch was logged already (one log line per block, not per read) */
  private readonly logged = new Set<number>()

  /**
   * Why the extent tree is known damaged (a node failed its page checks
   * when read), or null. From then on nothing is written: every mutating
   * operation here fails with EROFS, and the filesystem refuses metadata
   * changes too (FolioFs.tx), so an image known corrupt is never written
   * (mount checks every page first; this catches damage that appears
   * while mounted). Reads of what the damaged node maps fail with EIO.
   */
  damaged: string | null = null

  /**
   * Called inside every commit that changes the mapping of an inode
   * (writeback, truncate and punch steps, preallocation): what was read
   * of its data before may be stale (the page cache's streaming reads).
   * Must not throw, write or wait.
   */
  onMapChange: ((ino: number) => void) | null = null

  /** punches freed blocks out of the data area once they are free for good (discard.ts) */
  readonly discard: Discard

  /** reads the libfuse threads make themselves (readplan.ts): freed blocks wait for those in flight before reuse */
  readonly plans = new ReadPlans()

  /** times truncate steps (nextBatch); tests inject a fixed one, as the batch sizes depend on it */
  private readonly now: () => number

  constructor (private readonly db: Database.Database, readonly area: DataArea, opts: FileDataOptions) {
    this.now = opts.stepClock ?? (() => performance.now())
    this.discard = new Discard(area.descriptor, (opts.discard ?? true) && !db.readonly)
    this.tree = ExtentTree.open(db, {
      ...opts,
      onReusable: (starts, lens, release) => this.plans.whenReadsDone(() => this.discard.reusable(starts, lens, release))
    })
    this.csums = new DataCsums(db)
    if (!db.readonly) this.openWal()
  }

  /** open walFd, handOffFd and ckptFd; false when there is no WAL file (no commit since the image was opened) */
  private openWal (): boolean {
    try {
      this.walFd ??= fs.openSync(`${this.db.name}-wal`, 'r')
      this.handOffFd ??= fs.openSync(`${this.db.name}-wal`, 'r')
      this.ckptFd ??= fs.openSync(`${this.db.name}-wal`, 'r')
      return true
    } catch {
      return false
    }
  }

  /**
   * Make every commit so far durable without blocking the event loop:
   * fdatasync SQLite's WAL file on the thread pool. SQLite (synchronous =
   * NORMAL) has written each commit's frames there at commit; the sync is
   * what synchronous = FULL would do at every commit, and what a
   * checkpoint does first. Blocks freed by the commits it covers become
   * allocatable. Before the first commit there is no WAL: a checkpoint.
   */
  syncCommits (): Promise<void> {
    // One sync of walFd at a time: two at once on one file description,
    // Linux reports a failed writeback to the first to look only, and the
    // other, answered 0, would call commits durable whose frames are lost
    // (if its callback ran before the failed one's). Callers arriving
    // while one runs share the next, which starts after it (and after
    // their commits).
    if (this.walSyncNext !== null) return this.walSyncNext
    if (this.walSyncRunning === null) return this.startWalSync()
    const next = this.walSyncRunning.catch(() => {}).then(() => {
      this.walSyncNext = null
      return this.startWalSync()
    })
    this.walSyncNext = next
    return next
  }

  /** the WAL sync in flight (syncCommits), and the one queued after it */
  private walSyncRunning: Promise<void> | null = null
  private walSyncNext: Promise<void> | null = null

  /** fdatasync of a WAL descriptor on the thread pool (tests emulate the host's failures here) */
  walDatasync: (fd: number) => Promise<void> = fdatasync

  private startWalSync (): Promise<void> {
    const run = (async () => {
      const mark = this.tree.commitMark
      const fd = this.commitsToSync()
      if (fd === null) return
      try {
        await this.walDatasync(fd)
      } catch (err) {
        this.failWal(err)
      }
      this.checkWal() // the binding's sync of the same commits may have failed meanwhile
      this.tree.markDurable(mark)
    })()
    const running = run.finally(() => { if (this.walSyncRunning === running) this.walSyncRunning = null })
    this.walSyncRunning = running
    return running
  }

  /**
   * Why a sync of SQLite's WAL failed (the first failure), or null.
   * Sticky, and fatal for the mount: Linux reports a failed writeback once
   * per open file description and marks its pages clean, so the next
   * fdatasync succeeds although the lost frames never reached the disk,
   * and a crash then loses what an fsync answered 0 for, and brings back
   * mappings of blocks discard has punched since. So from then on no
   * commit is called durable (no markDurable: freed blocks are neither
   * reused nor punched), every sync fails with EIO, and FolioFs refuses
   * changes as after a failed group commit; unmounting exits 7. Failures
   * of the binding's syncs (commitsToSync(true)) come in through
   * handOffSyncErrno.
   */
  walFailure: unknown = null
  /** the binding's sticky errno of a failed handed-off WAL sync (0: none); the mount sets it */
  handOffSyncErrno: () => number = () => 0

  /** EIO once a sync of the WAL failed, here or in the binding (walFailure) */
  checkWal (): void {
    if (this.walFailure === null) {
      const errno = this.handOffSyncErrno()
      if (errno !== 0) this.failWal(new Error(`fdatasync: ${Object.entries(os.constants.errno).find(([, v]) => v === errno)?.[0] ?? errno}`))
    }
    if (this.walFailure !== null) throw fsErr('EIO', `a sync of the metadata log failed: ${String(this.walFailure)}`)
  }

  /** record the first failed WAL sync (walFailure), with one log line */
  private failWal (err: unknown): void {
    if (this.walFailure !== null) return
    this.walFailure = err
    process.stderr.write(`foliofs: a sync of the metadata log (${this.db.name}-wal) failed, so recent changes may not be on disk: refusing further changes and syncs: ${String(err)}\n`)
  }

  /**
   * The descriptor whose fdatasync makes every commit so far durable
   * (SQLite's WAL), or null once they are durable already (no WAL yet: a
   * checkpoint did it). The caller syncs it; blocks freed by the commits
   * stay unusable until a later syncCommits or checkpoint. Misuse: closing
   * it (it stays open until closeWal); answering before the sync.
   */
  commitsToSync (handOff = false): number | null {
    this.checkWal()
    flushBatch(this.db) // the metadata group commit (sqltx.ts) goes into the WAL first
    if (this.walFd === null || this.handOffFd === null || this.ckptFd === null) {
      if (!this.openWal()) {
        this.checkpoint()
        return null
      }
    }
    return handOff ? this.handOffFd : this.walFd
  }

  /**
   * The data area is shorter than the data the extents map (cut short by
   * a copy or a full disk): its size, and one past the last byte mapped
   * data needs; null when it is whole, or when the tree cannot be read (a
   * damaged tree is refused or reported on its own).
   */
  shortArea (): { size: number, needed: number } | null {
    const size = this.area.size()
    try {
      const end = this.tree.writtenPast(Math.floor(size / BLOCK_SIZE))
      return end === null ? null : { size, needed: end * BLOCK_SIZE }
    } catch {
      return null
    }
  }

  /**
   * The first extent that maps blocks the free-space map calls free (a
   * map damaged in a way its encoding and crc cannot show: the allocator
   * would hand those blocks to new writes, over the file's data), as
   * verify() words it; null when there is none, or when the tree has more
   * than maxNodes nodes (the check reads every node: ~0.5 us an extent
   * here; fsck checks any size).
   */
  mappedFree (maxNodes: number): string | null {
    if (this.tree.summary().nodes > maxNodes) return null
    try {
      return this.tree.verify().find(e => / maps free block /.test(e)) ?? null
    } catch {
      return null // a tree that cannot even be walked: refused elsewhere, or by its first use
    }
  }

  /** close the WAL descriptor syncCommits keeps (before the database closes), and stop the crc thread */
  closeWal (): void {
    this.crc.close()
    for (const fd of [this.walFd, this.handOffFd, this.ckptFd]) if (fd !== null) fs.closeSync(fd)
    this.walFd = this.handOffFd = this.ckptFd = null
  }

  /** blocks mapped by committed extents */
  get used (): number { return this.tree.usedBlocks() }
  /** free blocks (statfs): allocatable now, or after the checkpoint an allocation runs when it needs them */
  get free (): number { return this.tree.freeBlocks() + this.tree.pendingFreeBlocks() }
  get stats (): TreeStats & TruncateStats { return { ...this.tree.snapshotStats(), ...this.truncateStats } }

  /** shape of the tree and free space, for `foliofs stats` */
  summary (): ReturnType<ExtentTree['summary']> {
    return this.tree.summary()
  }

  /**
   * Make every commit durable (sync the WAL by a checkpoint), so blocks freed
   * by them may be reused. Synchronous; no SQLite transaction may be open.
   */
  checkpoint (): void {
    this.checkWal()
    flushBatch(this.db)
    try {
      this.db.pragma('wal_checkpoint(PASSIVE)')
    } catch (err) {
      if ((err as { code?: string }).code?.startsWith('SQLITE_IOERR') === true) this.failWal(err)
      throw err
    }
    // the checkpoint syncs the WAL through SQLite's descriptor, and the
    // pragma answers a failure as 'busy' (an automatic checkpoint ignores
    // it): a sync of our own descriptor sees a failure whoever met it
    if (this.ckptFd !== null) {
      try {
        fs.fdatasyncSync(this.ckptFd)
      } catch (err) {
        this.failWal(err)
      }
      this.checkWal()
    }
    this.tree.markDurable()
  }

  /**
   * After a crash: the punches pending then (blocks freed by durable
   * commits, not yet punched out of the data area) died with the daemon,
   * and the host kept those blocks allocated. Punch every free range once,
   * synchronously, before anything is allocated: ~3 us a range that is a
   * hole already, ~90 us one that is not (ext4 here). The state SQLite
   * recovered is made durable first (a checkpoint syncs the WAL): a power
   * loss must not bring back a mapping that points at a punched block.
   * Returns the blocks punched (0 with discard off).
   */
  redoDiscards (): number {
    if (!this.discard.stats.enabled) return 0
    this.checkpoint()
    const before = this.discard.stats.blocks
    this.discard.punchAll(this.tree.freeRanges())
    return this.discard.stats.blocks - before
  }

  /** reserve up to want blocks; when the device is full only because frees are not durable yet, checkpoint and retry */
  private allocOrReclaim (t: BtreeTrans, want: number, hint: number, minRun = 0): Range | null {
    // one extent maps at most MAX_EXTENT_LEN blocks: a larger run from an
    // empty area (fallocate of over 4 GiB) made insertExtent refuse it as
    // misuse, and the caller saw EIO
    const len = Math.min(want, MAX_EXTENT_LEN)
    const r = t.alloc(len, hint, minRun)
    if (r !== null || this.tree.pendingFreeBlocks() === 0) return r
    this.checkpoint()
    return t.alloc(len, hint, minRun)
  }

  /** a node failed its checks: remember it (one log line), so nothing more is written */
  private noteDamage (err: unknown): void {
    if (!(err instanceof BtreeError) || err.code !== 'node_corrupt' || this.damaged) return
    this.damaged = err.message
    process.stderr.write(`foliofs: extent tree damaged (${err.message}): read-only from now on; unmount and see foliofs fsck\n`)
  }

  /** run fn, noting a damaged node; writes refuse (EROFS) once the tree is known damaged */
  private async guard<T> (write: boolean, fn: () => Promise<T>): Promise<T> {
    if (write && this.damaged) throw fsErr('EROFS', `extent tree damaged: ${this.damaged}`)
    try {
      return await fn()
    } catch (err) {
      this.noteDamage(err)
      throw err
    }
  }

  /** committed extents of ino overlapping [start, end) */
  async extents (ino: number, start = 0, end = END): Promise<Extent[]> {
    return await this.guard(false, async () => await lockrestartDo(transGet(this.tree), t => t.extentsIn(ino, start, end)))
  }

  /**
   * How many of these blocks of ino (ascending) no extent maps: what their
   * writeback will add to its block count (stat's delayed-allocation
   * blocks; copy-on-write frees one block for each mapped one it
   * rewrites). Synchronous, for stat: null when it cannot look now
   * (another transaction holds node locks, or the tree is damaged).
   */
  unmappedAmong (ino: number, blocks: number[]): number | null {
    if (blocks.length === 0) return 0
    if (this.tree.lockHolders > 0 || this.damaged) return null
    let ex: Extent[]
    try {
      ex = lockrestartDoSync(transGet(this.tree), t => t.extentsIn(ino, blocks[0], blocks[blocks.length - 1] + 1))
    } catch (err) {
      this.noteDamage(err)
      return null
    }
    let n = 0
    let k = 0
    for (const b of blocks) {
      while (k < ex.length && ex[k].off + ex[k].len <= b) k++
      if (k === ex.length || ex[k].off > b) n++
    }
    return n
  }

  /**
   * Fill dest with blocks [first, first + n) of ino: n buffers of a block
   * each, or one buffer of n blocks (a span: one read and one crc message
   * a piece, however many blocks). Holes and unwritten extents read as
   * zeros. The caller keeps the mapping of these blocks from changing
   * before the I/O is done, or will not use what it read if it changed:
   * folio locks (writeback and truncate take them first), or the streaming
   * reads' invalidation (onMapChange). Every block read from the data area
   * is checked against its crc: a ChecksumError (EIO) names the blocks
   * that mismatched; the others are filled all the same.
   */
  async readBlocks (ino: number, first: number, dest: Buffer[] | Buffer): Promise<void> {
    const span = !Array.isArray(dest)
    const n = span ? dest.length / BLOCK_SIZE : dest.length
    const part = (lo: number, hi: number): Buffer[] | Buffer => span ? dest.subarray(lo * BLOCK_SIZE, hi * BLOCK_SIZE) : dest.slice(lo, hi)
    const zero = (lo: number, hi: number): void => {
      if (span) dest.fill(0, lo * BLOCK_SIZE, hi * BLOCK_SIZE)
      else for (let i = lo; i < hi; i++) dest[i].fill(0)
    }
    const io: Array<Promise<void>> = []
    const pieces: Array<{ lo: number, pblk: number, mem: Buffer[] | Buffer }> = []
    for (const w of await this.written(ino, first, n, zero)) {
      const piece = { lo: w.lo, pblk: w.pblk, mem: part(w.lo - first, w.lo - first + w.len) }
      pieces.push(piece)
      io.push(this.area.read(Array.isArray(piece.mem) ? piece.mem : [piece.mem], piece.pblk))
    }
    // every read has ended before this settles, also when one failed: the
    // caller may then reuse or free dest (a reply buffer of the binding)
    const ended = await Promise.allSettled(io)
    for (const r of ended) if (r.status === 'rejected') throw r.reason
    const crcs = await Promise.all(pieces.map(async p => this.csums.enabled
      ? await this.crc.crcs(p.mem)
      : new Uint32Array(Array.isArray(p.mem) ? p.mem.length : p.mem.length / BLOCK_SIZE))) // not looked at: every block counts as unverified
    const bad: number[] = []
    for (const [k, p] of pieces.entries()) {
      for (const i of this.csums.verify(p.pblk, crcs[k]).bad) {
        bad.push(p.lo + i)
        this.logMismatch(ino, p.lo + i, p.pblk + i)
      }
    }
    if (bad.length) throw new ChecksumError(ino, bad)
  }

  /**
   * The written pieces of blocks [first, first + n) of ino, ascending:
   * logical block lo and len blocks at data area block pblk. Holes and
   * unwritten extents are handed to zero (block indices from first).
   */
  private async written (ino: number, first: number, n: number, zero: (lo: number, hi: number) => void): Promise<Array<{ lo: number, len: number, pblk: number }>> {
    const end = first + n
    const out: Array<{ lo: number, len: number, pblk: number }> = []
    let at = first
    for (const e of await this.extents(ino, first, end)) {
      const lo = Math.max(e.off, first)
      const hi = Math.min(e.off + e.len, end)
      zero(at - first, Math.max(at, lo) - first)
      if (e.flags & EXT_UNWRITTEN) zero(lo - first, hi - first)
      else if (hi > lo) out.push({ lo, len: hi - lo, pblk: e.pblk + (lo - e.off) })
      at = Math.max(at, hi)
    }
    zero(at - first, n)
    return out
  }

  /**
   * A read plan (readplan.ts) of blocks [first, first + dest.length / BLOCK_SIZE)
   * of ino into dest, a READ's reply buffer:
   * holes and unwritten extents zeroed in dest now, the written blocks
   * named with their crcs, and the written blocks among the `ahead` after
   * them named for prefetching (the reader's next requests). t was begun
   * before this call (the lookup is in here). The caller hands the plan
   * over only if the contents did not change meanwhile (as for readBlocks).
   */
  async planBlocks (t: PlanTicket, ino: number, first: number, dest: Buffer, ahead: number): Promise<Buffer> {
    const n = dest.length / BLOCK_SIZE
    const zero = (lo: number, hi: number): void => { if (lo < n) dest.fill(0, lo * BLOCK_SIZE, Math.min(hi, n) * BLOCK_SIZE) }
    const crcs = new Uint32Array(n)
    const check = new Uint8Array(n)
    const segs: PlanSegment[] = []
    const prefetch: PlanSegment[] = []
    for (const p of await this.written(ino, first, n + ahead, zero)) {
      const inReply = Math.max(0, Math.min(p.len, first + n - p.lo))
      if (inReply > 0) {
        this.csums.expected(p.pblk, inReply, crcs.subarray(p.lo - first), check.subarray(p.lo - first))
        segs.push({ at: (p.lo - first) * BLOCK_SIZE, bytes: inReply * BLOCK_SIZE, pos: p.pblk * BLOCK_SIZE })
      }
      if (inReply < p.len) prefetch.push({ at: 0, bytes: (p.len - inReply) * BLOCK_SIZE, pos: (p.pblk + inReply) * BLOCK_SIZE })
    }
    return this.plans.build(t, this.area.descriptor, segs, crcs, check, prefetch)
  }

  /** the log line of a checksum mismatch (once per data area block and mount; the stats count every read) */
  private logMismatch (ino: number, block: number, pblk: number): void {
    if (this.logged.has(pblk)) return
    if (this.logged.size < 10000) this.logged.add(pblk)
    process.stderr.write(`foliofs: inode ${ino}: data checksum mismatch in block ${block} (data area block ${pblk}): reads of it fail with EIO; see foliofs fsck --verify-data\n`)
  }

  /**
   * Writeback step 1: reserve len blocks for blocks [start, start+len) of
   * ino, contiguous with the file's previous extent where possible, or at
   * pblk `after` (the end of the caller's previous run of ino, reserved and
   * not committed yet: the tree does not know it). A run that continues
   * nothing (an overwrite, a file's first blocks) goes to `writePoint`, the
   * end of the caller's previous run of any file, in a free range of at
   * least WRITE_POINT_BLOCKS there or after it: the runs of a pass then
   * follow each other, and their writes gather into a few large ones even
   * on an aged image. The reservation outlives the step: commitRun()
   * adopts it, unreserve() gives it back.
   */
  async allocRun (ino: number, start: number, len: number, after?: number, writePoint?: number): Promise<Range[]> {
    return await this.guard(true, async () => await this.afterDiscards(async () => await lockrestartDo(transGet(this.tree), t => {
      const cont = after ?? t.continuation(ino, start)
      const atWritePoint = cont === null && writePoint !== undefined
      let hint = cont ?? writePoint ?? t.allocHint(ino, start)
      for (let done = 0; done < len;) {
        const r = this.allocOrReclaim(t, len - done, hint, atWritePoint ? WRITE_POINT_BLOCKS : 0)
        if (!r) throw fsErr('ENOSPC', `writeback of inode ${ino}`)
        done += r.len
        hint = r.pblk + r.len
      }
      return t.detachReserved()
    })))
  }

  /**
   * Run an allocating step; on ENOSPC while freed blocks wait for read
   * plans in flight or for their punches (they are free but not
   * allocatable until then: readplan.ts, discard.ts), wait for those and
   * run it again.
   */
  private async afterDiscards<T> (step: () => Promise<T>): Promise<T> {
    for (;;) {
      try {
        return await step()
      } catch (err) {
        if ((err as { code?: string }).code !== 'ENOSPC' || (this.discard.stats.inFlight === 0 && this.plans.waits === 0)) throw err
        await this.reusableSettled()
      }
    }
  }

  /** every free made durable so far is allocatable: its read plans have run and its punches are done */
  async reusableSettled (): Promise<void> {
    await this.plans.idle()
    await this.discard.idle()
  }

  /**
   * Writeback step 5: map each run's blocks [start, ...) of its inode to
   * its pieces, freeing what they replace, all runs in ONE B-tree step (one
   * SQLite commit however many files: a commit costs ~200 us, a run of a
   * small file much less). crcs (one per block, in order: the crc32s of
   * the data written, crcthread.ts) are recorded in the same commit, and
   * each run's hook runs inside it with the blocks it added and freed. All
   * or nothing: on failure no run is committed (the caller may retry them
   * one at a time to find the one that fails). `attempt` runs before each
   * try of the commit (hooks of a try that rolled back ran for nothing).
   */
  async commitRuns (runs: RunCommit[], attempt?: () => void): Promise<void> {
    await this.guard(true, async () => await lockrestartDo(transGet(this.tree), t => {
      attempt?.()
      for (const r of runs) {
        t.adoptReserved(r.pieces)
        let off = r.start
        for (const p of r.pieces) {
          t.insertExtent({ ino: r.ino, off, len: p.len, pblk: p.pblk, flags: EXT_WRITTEN })
          off += p.len
        }
      }
      t.commit((_freed, byOp) => {
        let op = 0
        for (const r of runs) {
          let k = 0
          let freed = 0
          for (const p of r.pieces) {
            this.csums.record(p.pblk, r.crcs.subarray(k, k + p.len))
            k += p.len
            for (const f of byOp[op++]) freed += f.len
          }
          r.hook(k, freed)
          this.onMapChange?.(r.ino)
        }
      })
    }))
  }

  /** give back a reservation from allocRun that will not be committed */
  unreserve (pieces: Range[]): void {
    this.tree.unreserve(pieces)
  }

  /**
   * One truncate (or punch) step body: unmap up to batch extents in
   * [keep, end). Returns whether it reached end, and how long it took (it
   * is synchronous).
   */
  private truncateStep (t: BtreeTrans, ino: number, keep: number, batch: number, first: boolean, onStep: TruncateStep, end = END): { done: boolean, ms: number } {
    const t0 = this.now()
    const { count, stop } = t.extentsAhead(ino, keep, end, batch)
    if (count) t.deleteRange(ino, keep, stop)
    const done = stop === end
    t.commit(freed => {
      onStep(freed.reduce((s, r) => s + r.len, 0), first, done)
      this.onMapChange?.(ino)
    })
    const ms = this.now() - t0
    this.noteTruncateStep(count, ms)
    return { done, ms }
  }

  private noteTruncateStep (extents: number, ms: number): void {
    const s = this.truncateStats
    s.truncateSteps++
    s.truncateExtents += extents
    if (ms > s.maxTruncateStepMs) s.maxTruncateStepMs = ms
  }

  /** the next step's batch: aim at TRUNCATE_STEP_MS given what this one took (at most doubling) */
  private nextBatch (batch: number, ms: number): number {
    const fit = batch * TRUNCATE_STEP_MS / Math.max(ms, 0.01)
    return Math.round(Math.min(2 * batch, TRUNCATE_BATCH_MAX, Math.max(TRUNCATE_BATCH_MIN, fit)))
  }

  /**
   * Unmap every block at or past size, in bounded steps; onStep runs
   * inside every step's commit. (The tail of the last kept block is the
   * page cache's business: it zeroes it in a folio that writeback writes.)
   */
  async truncate (ino: number, size: number, onStep: TruncateStep): Promise<void> {
    await this.unmap(ino, Math.ceil(size / BLOCK_SIZE), END, onStep)
  }

  /**
   * Unmap every block of each of inos (freeing deleted files: reaper.ts),
   * several files per step: a step takes files in order until it has
   * counted `batch` extents, so a thousand small files cost one B-tree
   * commit, not a thousand. A file bigger than what is left of a step is
   * finished by the next ones. onStep(ino, freed, last) runs inside each
   * commit for every file the step touched; last: none of its blocks is
   * mapped any more. Bounded and adaptive like truncate's steps.
   */
  async unmapFiles (inos: number[], onStep: (ino: number, freed: number, last: boolean) => void): Promise<void> {
    await this.guard(true, async () => {
      const trans = transGet(this.tree)
      let batch = TRUNCATE_BATCH
      for (let rest = inos, first = true; rest.length > 0; first = false) {
        if (!first) await yieldToLoop() // other FUSE requests run between steps
        const b = batch
        const r = await lockrestartDo(trans, t => this.unmapFilesStep(t, rest, b, onStep))
        rest = r.rest
        batch = this.nextBatch(batch, r.ms)
      }
    })
  }

  /** One unmapFiles step: returns the files it did not finish (the first may be partly unmapped) and how long it took. */
  private unmapFilesStep (t: BtreeTrans, inos: number[], batch: number, onStep: (ino: number, freed: number, last: boolean) => void): { rest: number[], ms: number } {
    const t0 = this.now()
    const touched: Array<{ ino: number, last: boolean }> = []
    let budget = batch
    let k = 0
    while (k < inos.length && budget > 0) {
      const ino = inos[k]
      // budget > 0: the first extent always counts, so stop > 0 and
      // deleteRange queues exactly one update per touched file (byOp below)
      const { count, stop } = t.extentsAhead(ino, 0, END, budget)
      t.deleteRange(ino, 0, stop)
      budget -= count
      const last = stop === END
      touched.push({ ino, last })
      if (last) k++
      else break
    }
    t.commit((_freed, byOp) => {
      touched.forEach((f, j) => {
        onStep(f.ino, byOp[j].reduce((n, r) => n + r.len, 0), f.last)
        this.onMapChange?.(f.ino)
      })
    })
    const ms = this.now() - t0
    this.noteTruncateStep(batch - budget, ms)
    return { rest: inos.slice(k), ms }
  }

  /** Unmap blocks [from, to) of ino (punch a hole), in bounded steps like truncate. */
  async unmap (ino: number, from: number, to: number, onStep: TruncateStep): Promise<void> {
    await this.guard(true, async () => { await this.unmapSteps(ino, from, to, onStep) })
  }

  private async unmapSteps (ino: number, from: number, to: number, onStep: TruncateStep): Promise<void> {
    const trans = transGet(this.tree)
    let batch = TRUNCATE_BATCH
    for (let first = true; ; first = false) {
      if (!first) await yieldToLoop() // other FUSE requests run between steps
      const f = first
      const { done, ms } = await lockrestartDo(trans, t => this.truncateStep(t, ino, from, batch, f, onStep, to))
      if (done) return
      batch = this.nextBatch(batch, ms)
    }
  }

  /** does block blk of ino read as zeros from the tree alone (a hole, or an unwritten extent)? Folios are the caller's to look at */
  async readsZeros (ino: number, blk: number): Promise<boolean> {
    const e = (await this.extents(ino, blk, blk + 1))[0]
    return e === undefined || e.off > blk || e.off + e.len <= blk || (e.flags & EXT_UNWRITTEN) !== 0
  }

  /** blocks of [from, to) of ino that no extent maps */
  async holeBlocks (ino: number, from: number, to: number): Promise<number> {
    let holes = 0
    let at = from
    for (const e of await this.extents(ino, from, to)) {
      if (e.off > at) holes += e.off - at
      at = Math.max(at, e.off + e.len)
    }
    return holes + Math.max(0, to - at)
  }

  /**
   * Preallocate (fallocate): map the holes of blocks [from, to) of ino to
   * new unwritten extents, which read as zeros until writeback writes
   * there. ENOSPC, with nothing changed, when the holes need more blocks
   * than are free beside those `promised` to dirty data; only a concurrent writer taking the space between that
   * check and the last step can leave part of the range preallocated (as
   * ext4 does). Bounded steps; onStep(added) runs inside each commit.
   */
  async preallocate (ino: number, from: number, to: number, onStep: (added: number) => void, promised = 0): Promise<void> {
    await this.guard(true, async () => { await this.preallocateSteps(ino, from, to, onStep, promised) })
  }

  /** promised: free blocks that data already accepted will take at writeback (dirty folios): not the caller's to take */
  private async preallocateSteps (ino: number, from: number, to: number, onStep: (added: number) => void, promised: number): Promise<void> {
    if (await this.holeBlocks(ino, from, to) + promised > this.free) throw fsErr('ENOSPC', `fallocate of inode ${ino}`)
    const trans = transGet(this.tree)
    for (let pos = from; pos < to;) {
      if (pos > from) await yieldToLoop()
      const at = pos
      pos = await this.afterDiscards(async () => await lockrestartDo(trans, t => this.preallocateStep(t, ino, at, to, onStep)))
    }
  }

  /** one preallocate step: up to TRUNCATE_BATCH new extents in the holes of [pos, to); returns where the next starts */
  private preallocateStep (t: BtreeTrans, ino: number, pos: number, to: number, onStep: (added: number) => void): number {
    const ex = t.extentsIn(ino, pos, to, TRUNCATE_BATCH)
    // each hole ends where an extent starts; after the last, at `to` when the batch saw every extent
    const bounds = ex.map(e => [e.off, e.off + e.len])
    if (ex.length < TRUNCATE_BATCH) bounds.push([to, to])
    let at = pos
    let added = 0
    let pieces = 0
    let hint = t.allocHint(ino, at)
    for (const [start, end] of bounds) {
      while (at < start && pieces < TRUNCATE_BATCH) {
        const r = this.allocOrReclaim(t, start - at, hint)
        if (!r) throw fsErr('ENOSPC', `fallocate of inode ${ino}`)
        t.insertExtent({ ino, off: at, len: r.len, pblk: r.pblk, flags: EXT_UNWRITTEN })
        at += r.len
        added += r.len
        pieces++
        hint = r.pblk + r.len
      }
      if (at < start) break // this step's share is done
      at = Math.max(at, end)
    }
    t.commit(() => {
      onStep(added)
      this.onMapChange?.(ino)
    })
    return Math.min(at, to)
  }

  /** Offline form of truncate for single-user tools (recovery before mount). */
  truncateSync (ino: number, size: number, onStep: TruncateStep): void {
    const keep = Math.ceil(size / BLOCK_SIZE)
    const trans = transGet(this.tree)
    for (let first = true; ; first = false) {
      const f = first
      if (lockrestartDoSync(trans, t => this.truncateStep(t, ino, keep, TRUNCATE_BATCH_MAX, f, onStep)).done) return
    }
  }
}
