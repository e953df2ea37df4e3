// Read plans: a FUSE READ answered with where its bytes lie in the data
// area instead of the bytes. The libfuse thread that waits for the answer
// reads them into the reply buffer itself (pread), checks their crc32s and
// replies (fuse-native.c, "read plans"). The JS thread only looks the
// mapping up: the bytes never pass through libuv's pool and back to the
// JS thread before the reply, a round trip of two thread wake-ups per MiB
// that bounded a cold sequential read (the JS thread was two thirds idle).
//
// The plan buffer (little endian; its layout is the binding's):
//   0   int32  state: 0 issued; the libfuse thread stores 1 (served) or
//              2 (failed: the READ comes again, to be read without a plan)
//              when it is done with the plan and the reply buffer
//   4   uint32 segments, 8 uint32 blocks, 12 int32 fd of the data area,
//   16  uint32 prefetches, 20 reserved
//   24  segments x { uint32 reply offset, uint32 bytes, int64 data area offset }
//   ..  prefetches x { uint32 0, uint32 bytes, int64 data area offset }
//   ..  blocks x uint32 expected crc32 of reply block i, blocks x uint8 1 = check it
// Holes and unwritten extents are zeroed in the reply buffer before the
// plan is handed over. Prefetches name where the reader's next requests
// lie (PREFETCH_BLOCKS past this one): once its own reads are done the
// libfuse thread asks the host to start reading them (POSIX_FADV_WILLNEED),
// so the next plans find them in the host's page cache. Measured on a cold
// GiB (data area not in the host's cache either), interleaved: 1.25/1.26/
// 1.24 s without, 0.90/0.89/0.85 s with 4 MiB ahead (2, 8 and 16 MiB were
// no better).
//
// The one hazard: the blocks a plan names must keep their contents until
// the libfuse thread has read them, and a commit may unmap and free them
// at any time after the lookup (a truncate, a punch, a copy-on-write
// overwrite). Freed blocks are reused only after onReusable
// (Allocator): whenReadsDone() holds that back until every plan begun
// before it is done. Begun means before its mapping lookup, so a plan
// begun after can no longer map the blocks. The contents the reader gets
// are those of the mapping lookup; the stream's invalidation (stream.ts)
// decides whether they may still be answered, up to the hand-over.
//
// Misuse: begin() after the lookup (a free between the two would not wait
// for it); a ticket neither handed over nor ended (its frees wait for
// ever); writing into the reply buffer after the hand-over.
const HEAD = 24
const SEG = 16

/** blocks past a plan's request whose data area places it names for prefetching (4 MiB) */
export const PREFETCH_BLOCKS = 1024

/** a piece of a plan: `bytes` bytes at data area byte `pos` go to reply byte `at` */
export interface PlanSegment { at: number, bytes: number, pos: number }

/** one read plan, from before its mapping lookup until the libfuse thread is done with it */
export interface PlanTicket {
  /** the plan buffer once handed over; null before */
  plan: Buffer | null
  /** ended in JS: never handed over, or handed over and known not to run */
  ended: boolean
}

export interface PlanStats {
  /** plans handed to the libfuse threads */
  plans: number
  /** bytes of their READs */
  plannedBytes: number
  /** plans whose READ came again (failed in the libfuse thread: I/O error or checksum mismatch) */
  plansFailed: number
  /** frees whose reuse waited for plans in flight */
  reuseWaits: number
}

export class ReadPlans {
  private readonly live = new Set<PlanTicket>()
  private readonly waiting: Array<{ before: PlanTicket[], go: () => void }> = []
  private timer: NodeJS.Timeout | null = null
  readonly stats: PlanStats = { plans: 0, plannedBytes: 0, plansFailed: 0, reuseWaits: 0 }

  /** how often (ms) plans in flight are looked at while a reuse waits for them */
  static readonly POLL_MS = 1

  /** a new ticket: before the mapping lookup of its plan (see Misuse) */
  begin (): PlanTicket {
    if (this.live.size > 64) this.sweep()
    const t: PlanTicket = { plan: null, ended: false }
    this.live.add(t)
    return t
  }

  /** t will not be handed over (or its plan will not run): it holds nothing back any more */
  end (t: PlanTicket): void {
    t.ended = true
    this.live.delete(t)
    this.poll()
  }

  /**
   * The plan of t: data area pieces `segs` of the descriptor fd, for each
   * of `blocks` reply blocks its expected crc where `check` is 1, and data
   * area pieces to prefetch (`at` unused). t counts as in flight until it
   * is ended or its plan has run (handOver, or end if it is not answered).
   */
  build (t: PlanTicket, fd: number, segs: readonly PlanSegment[], crcs: Uint32Array, check: Uint8Array,
    prefetch: readonly PlanSegment[] = []): Buffer {
    const blocks = crcs.length
    const plan = Buffer.alloc(HEAD + SEG * (segs.length + prefetch.length) + 5 * blocks) // own memory, 8-byte aligned: never the pool
    plan.writeUInt32LE(segs.length, 4)
    plan.writeUInt32LE(blocks, 8)
    plan.writeInt32LE(fd, 12)
    plan.writeUInt32LE(prefetch.length, 16)
    let o = HEAD
    for (const s of [...segs, ...prefetch]) {
      plan.writeUInt32LE(s.at, o)
      plan.writeUInt32LE(s.bytes, o + 4)
      plan.writeBigInt64LE(BigInt(s.pos), o + 8)
      o += SEG
    }
    for (let i = 0; i < blocks; i++) plan.writeUInt32LE(crcs[i], o + 4 * i)
    plan.set(check, o + 4 * blocks)
    t.plan = plan
    return plan
  }

  /** t's plan answers a READ of `bytes` bytes: the libfuse thread runs it from here */
  handOver (t: PlanTicket, sink: PlanSink, bytes: number): void {
    sink.ticket = t
    this.stats.plans++
    this.stats.plannedBytes += bytes
  }

  /** what the libfuse thread made of t's plan: 0 not done yet, 1 served, 2 failed */
  static state (t: PlanTicket): number {
    if (!t.plan) return 0
    return Atomics.load(new Int32Array(t.plan.buffer, t.plan.byteOffset, 1), 0)
  }

  /** the READ of a failed plan came again */
  failedOnce (): void { this.stats.plansFailed++ }

  private done (t: PlanTicket): boolean {
    return t.ended || ReadPlans.state(t) !== 0
  }

  /** forget the tickets that are done */
  private sweep (): void {
    for (const t of this.live) if (this.done(t)) this.live.delete(t)
  }

  /** plans in flight (tests, stats) */
  get inFlight (): number {
    this.sweep()
    return this.live.size
  }

  /**
   * Run go once every plan begun before now is done: at once when none is
   * in flight (the usual case), else from a timer (plans last about a
   * read of the data area).
   */
  whenReadsDone (go: () => void): void {
    this.sweep()
    this.poll() // the waits whose plans are done go first (their frees are older)
    if (this.live.size === 0 && this.waiting.length === 0) { go(); return }
    this.stats.reuseWaits++
    this.waiting.push({ before: [...this.live], go })
    this.poll()
  }

  /** frees waiting for plans in flight */
  get waits (): number { return this.waiting.length }

  /** resolves once no free waits for a plan (the plans in flight when it was called have run) */
  async idle (): Promise<void> {
    this.poll()
    if (this.waiting.length === 0) return
    await new Promise<void>(resolve => this.whenReadsDone(resolve))
  }

  /**
   * Resolves once no plan is in flight, or after ms (a libfuse thread
   * that never finishes its plan must not hold an unmount for ever): the
   * data area may close after it.
   */
  async drained (ms = 5000): Promise<void> {
    for (const end = performance.now() + ms; this.inFlight > 0 && performance.now() < end;) {
      await new Promise(resolve => setTimeout(resolve, ReadPlans.POLL_MS))
    }
    this.poll()
  }

  /** run the waits whose tickets are all done; look again in POLL_MS while some are not */
  private poll (): void {
    if (this.waiting.length === 0) return
    const ready: Array<() => void> = []
    for (let k = 0; k < this.waiting.length;) {
      const w = this.waiting[k]
      if (w.before.every(t => this.done(t))) {
        ready.push(w.go)
        this.waiting.splice(k, 1)
      } else k++
    }
    if (this.waiting.length > 0 && !this.timer) {
      this.timer = setTimeout(() => { this.timer = null; this.poll() }, ReadPlans.POLL_MS)
    }
    for (const go of ready) go()
  }
}

/**
 * Where a read may leave a plan instead of reading: the READ being
 * answered (fuse-ops.ts). A read that leaves one has not filled the reply
 * buffer; whoever answers must hand the plan over, or end its ticket.
 */
export interface PlanSink { ticket: PlanTicket | null }
