// Freeing deleted files in the background, many per commit.
//
// A file loses its last name (unlink, rename over it) or its last handle
// with nothing else holding it: it is an *orphan* (fs.ts records it in the
// `orphans` table in the same transaction that removes the name), and its
// blocks must go back to free space. Before this file, the operation that
// made the orphan waited for that: one B-tree commit per file, behind the
// metadata batch's own commit. `rm -rf` of 3000 written 4 KiB files took
// 2.73 s against 0.46 s on the in-memory ceiling.
//
// Now the operation only queues the inode here and is answered; the reaper
// waits REAP_DELAY_MS for more to queue up, frees them in one go
// (FolioFs.freeOrphans: the data of many files per B-tree step,
// FileData.unmapFiles), then looks again. Without the wait, a sequential
// `rm` (one unlink after the other's answer) gave batches of one file.
//
// What waits for the reaper (settled(), which cuts the delay short, and
// waits only for what was queued before it was called): statfs, so that
// `rm; df` shows the space back, as on a local filesystem; a writer about
// to get ENOSPC (the space it needs may be in the queue); fallocate;
// syncfs, remount read-only and unmount. A crash with orphans queued loses
// nothing: they are in `orphans`, and the next mount frees them before
// anything else.
//
// Misuse: adding an inode that something can still reach (a name, an open
// handle): it would be freed under its user. Callers add only what
// FolioFs.afterDrop says is unreachable. Waiting for settled() from inside
// the reaper's own free function deadlocks.
import createDebug from 'debug'

const debug = createDebug('foliofs:reaper')

/**
 * how long the reaper lets orphans queue up before it frees them: `rm -rf`
 * of 3000 written-back 4 KiB files took 2.19 and 1.81 s with no delay
 * (batches of 1-2 files, a B-tree commit each), 0.95 and 0.71 s with 20 ms
 * (70 batches of up to 140 files); the ceiling 0.46-0.58 s
 */
export const REAP_DELAY_MS = 20

export interface ReaperStats {
  /** orphans freed by the reaper */
  reaped: number
  /** free calls (each frees every orphan queued when it started) */
  reapBatches: number
  /** the largest batch */
  maxReapBatch: number
  /** orphans queued and not freed yet */
  reapQueued: number
  /** batches that failed (their orphans stay in `orphans`: freed at the next mount) */
  reapFailures: number
}

export class Reaper {
  private readonly queue = new Set<number>()
  /** orphans being freed by the running batch */
  private current = 0
  private running: Promise<void> | null = null
  /** add() calls so far, and how many of them are done with (freed, or their batch failed) */
  private added = 0
  private finished = 0
  /** callers of settled(), each waiting until `finished` reaches its target; no delay while there are any */
  private waiters: Array<{ target: number, resolve: () => void }> = []
  /** ends the current delay early */
  private wake: (() => void) | null = null
  private readonly counts = { reaped: 0, reapBatches: 0, maxReapBatch: 0, reapFailures: 0 }

  /**
   * free(inos) frees the given orphans and says how many it freed (all of
   * them, or none when the filesystem went read-only: they stay in
   * `orphans`), or throws; onError hears of a batch that failed (the
   * reaper goes on with the next one).
   */
  constructor (private readonly free: (inos: number[]) => Promise<number>, private readonly onError: (err: unknown, inos: number[]) => void) {}

  /** queue an unreachable orphan for freeing; returns at once */
  add (ino: number): void {
    this.queue.add(ino)
    this.added++
    this.running ??= this.drain()
  }

  /**
   * Resolves once every orphan queued before the call is freed (or its
   * batch failed). Orphans queued after it are not waited for: `df`
   * during a long `rm -rf` answers, it does not wait for the rm to end.
   */
  async settled (): Promise<void> {
    const target = this.added
    if (this.finished >= target) return
    await new Promise<void>(resolve => {
      this.waiters.push({ target, resolve })
      this.wake?.()
    })
  }

  get stats (): ReaperStats { return { ...this.counts, reapQueued: this.queue.size + this.current } }

  private async drain (): Promise<void> {
    try {
      while (await this.delay(), this.queue.size > 0) {
        const inos = [...this.queue]
        const upTo = this.added
        this.queue.clear()
        this.current = inos.length
        const c = this.counts
        c.reapBatches++
        if (inos.length > c.maxReapBatch) c.maxReapBatch = inos.length
        try {
          c.reaped += await this.free(inos)
        } catch (err) {
          c.reapFailures++
          debug('freeing %d orphans failed: %o', inos.length, err)
          this.onError(err, inos)
        }
        this.current = 0
        this.finishedUpTo(upTo)
      }
    } finally {
      this.running = null
      // the loop ends with nothing queued, so this wakes no one, unless
      // onError threw: then the waiters for the failed batch still wake
      this.finishedUpTo(this.added - this.queue.size)
    }
  }

  /** every add() up to the n-th is done with: wake those waiting for no more */
  private finishedUpTo (n: number): void {
    if (n <= this.finished) return
    this.finished = n
    const ready = this.waiters.filter(w => w.target <= n)
    if (ready.length === 0) return
    this.waiters = this.waiters.filter(w => w.target > n)
    for (const w of ready) w.resolve()
  }

  /** let more orphans queue up: REAP_DELAY_MS, or less if someone waits for settled() */
  private async delay (): Promise<void> {
    if (this.waiters.length > 0) return await new Promise<void>(resolve => setImmediate(resolve)) // the caller's operation finishes first
    await new Promise<void>(resolve => {
      const done = (): void => { clearTimeout(timer); this.wake = null; resolve() }
      const timer = setTimeout(done, REAP_DELAY_MS)
      this.wake = done
    })
  }
}
