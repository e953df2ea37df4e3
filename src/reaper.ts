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
// What waits for the reaper (settled(), which cuts the delay short): statfs, so that `rm; df` shows the
// space back, as on a local filesystem; a writer about to get ENOSPC (the
// space it needs may be in the queue); syncfs, remount read-only and
// unmount. A crash with orphans queued loses nothing: they are in
// `orphans`, and the next mount frees them before anything else.
//
// Misuse: adding an inode that something can still reach (a name, an open
// handle): it would be freed under its user. Callers add only what
// FolioFs.afterDrop says is unreachable. Waiting for settled() from inside
// the reaper's own free function deadlocks.
import createDebug from 'debug'

const debug = createDebug('foliofs:reaper')

/**
 * how long the reaper lets orphans queue up before it frees them: `rm -rf`
 * of 3000 written 4 KiB files took 2.19 s with no delay (batches of 1-2
 * files, a B-tree commit each), XXX with 20 ms
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
  /** the batch being freed now */
  private current = new Set<number>()
  private running: Promise<void> | null = null
  /** callers of settled() waiting: no delay while there are any */
  private hurry = 0
  /** ends the current delay early */
  private wake: (() => void) | null = null
  private readonly counts = { reaped: 0, reapBatches: 0, maxReapBatch: 0, reapFailures: 0 }

  /**
   * free(inos) frees the given orphans (all of them, or throws); onError
   * hears of a batch that failed (the reaper goes on with the next one).
   */
  constructor (private readonly free: (inos: number[]) => Promise<void>, private readonly onError: (err: unknown, inos: number[]) => void) {}

  /** queue an unreachable orphan for freeing; returns at once */
  add (ino: number): void {
    this.queue.add(ino)
    this.running ??= this.drain()
  }

  /** whether ino is queued or being freed by the running batch */
  has (ino: number): boolean { return this.queue.has(ino) || this.current.has(ino) }

  /** resolves once nothing is queued and no batch runs (what was queued before the call is freed or failed) */
  async settled (): Promise<void> {
    this.hurry++
    this.wake?.()
    try {
      while (this.running) await this.running
    } finally {
      this.hurry--
    }
  }

  get stats (): ReaperStats { return { ...this.counts, reapQueued: this.queue.size + this.current.size } }

  private async drain (): Promise<void> {
    try {
      while (await this.delay(), this.queue.size > 0) {
        const inos = [...this.queue]
        this.queue.clear()
        this.current = new Set(inos)
        const c = this.counts
        c.reapBatches++
        if (inos.length > c.maxReapBatch) c.maxReapBatch = inos.length
        try {
          await this.free(inos)
          c.reaped += inos.length
        } catch (err) {
          c.reapFailures++
          debug('freeing %d orphans failed: %o', inos.length, err)
          this.onError(err, inos)
        }
        this.current = new Set()
      }
    } finally {
      this.running = null
    }
  }

  /** let more orphans queue up: REAP_DELAY_MS, or less if someone waits for settled() */
  private async delay (): Promise<void> {
    if (this.hurry > 0) return await new Promise<void>(resolve => setImmediate(resolve)) // the caller's operation finishes first
    await new Promise<void>(resolve => {
      const done = (): void => { clearTimeout(timer); this.wake = null; resolve() }
      const timer = setTimeout(done, REAP_DELAY_MS)
      this.wake = done
    })
  }
}
