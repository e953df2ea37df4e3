// A folio: one 4 KiB page of one inode's data in the daemon's page cache
// (cf. the kernel's struct folio, bcachefs fs/vfs/pagecache.c).
//
// State:
//   uptodate   data holds the file's contents for this page (or newer ones)
//   dirty      data is newer than the data area; writeback must write it
//   writeback  being written to the data area; the new mapping is not
//              committed yet (FIEMAP reports it as delalloc)
//   locked     held by one owner: a writer copying in, a reader filling it
//              from the data area, writeback from gathering to commit,
//              truncate dropping it
//
// Locking rules (the whole point of this design):
//  - Lock order: folio locks before B-tree node locks. Code that holds
//    B-tree locks (inside a transaction step) may only trylock() folios;
//    awaiting lock() there would deadlock against writeback, which holds
//    folio locks while it waits for its B-tree transaction.
//  - Writeback keeps the folios of a run locked across its data I/O and its
//    commit, so a writer never changes a page between its write to the
//    data area and the commit that maps it.
//  - lock() is FIFO; unlock() hands the lock to the next waiter directly.
//  - Several folios are locked in ascending index order.
export const FOLIO_SIZE = 4096

export class Folio {
  readonly ino: number
  readonly index: number
  data: Buffer
  uptodate = false
  dirty = false
  writeback = false
  /** ms timestamp when it became dirty (writeback of old data first) */
  dirtiedAt = 0
  /** CLOCK reference bit */
  referenced = true
  /** its bytes as they are are in the data journal (journal.ts); any change clears it (PageCache.markDirty) */
  journaled = false
  /** removed from the cache (truncated away or evicted): do not use */
  dropped = false
  private locked = false
  private waiters: Array<() => void> = []

  constructor (ino: number, index: number, data: Buffer) {
    this.ino = ino
    this.index = index
    this.data = data
  }

  get isLocked (): boolean { return this.locked }

  /** take the lock if free; never waits */
  trylock (): boolean {
    if (this.locked) return false
    this.locked = true
    return true
  }

  /** wait for the lock (never while holding B-tree locks) */
  async lock (): Promise<void> {
    if (this.trylock()) return
    await new Promise<void>(resolve => this.waiters.push(resolve))
  }

  unlock (): void {
    if (!this.locked) throw new Error(`unlock of unlocked folio ${this.ino}:${this.index}`)
    const next = this.waiters.shift()
    if (next) next() // stays locked: ownership passes to the waiter
    else this.locked = false
  }
}

/** folio buffers are carved from slabs of this many bytes (one allocation per 32 folios; a slab is freed only once all 32 are, so bigger slabs would hold more memory after scattered evictions) */
const SLAB_BYTES = 128 * 1024

/**
 * Recycled 4 KiB buffers: the cache churns through them without garbage.
 * New ones are views into 128 KiB slabs: a 4 KiB ArrayBuffer of its own per
 * folio costs an allocation and external-memory bookkeeping each (a cold
 * sequential read spent more time there than in its I/O). A slab lives as
 * long as any of its views does. Slabs are shared memory, so that the crc
 * thread (crcthread.ts) reads folios without a copy.
 */
export class BufferPool {
  private free: Buffer[] = []
  private slab: SharedArrayBuffer | null = null
  private slabUsed = 0
  constructor (private readonly keep: number) {}

  take (): Buffer {
    const b = this.free.pop()
    if (b) return b
    if (!this.slab || this.slabUsed + FOLIO_SIZE > SLAB_BYTES) {
      this.slab = new SharedArrayBuffer(SLAB_BYTES)
      this.slabUsed = 0
    }
    const view = Buffer.from(this.slab, this.slabUsed, FOLIO_SIZE)
    this.slabUsed += FOLIO_SIZE
    return view
  }

  give (b: Buffer): void {
    if (this.free.length < this.keep) this.free.push(b)
  }

  /** let go of every recycled buffer (memory pressure) and of the current slab's rest */
  drain (): void {
    this.free = []
    this.slab = null
  }
}
