// crc32 of data blocks on a thread of their own (worker_threads), so
// writeback and cold reads do not spend the main thread on checksums: it
// is the thread that answers FUSE requests. With zlib's crc32 (~2.4 GB/s)
// a sequential write's checksums alone were an eighth of its time there.
// With the addon's (crc.ts, ~10 GB/s) a MiB costs ~0.1 ms, about what the
// message, the thread's wake-up and the answer's cost the main thread: a
// cold sequential read ran faster with every call answered inline (under
// load 431/378/427 -> 490/483/466 MB/s), writeback alike. So the thread is
// only started where zlib computes the crcs.
//
// The blocks are not copied: folio buffers are views into SharedArrayBuffer
// slabs (pagecache/folio.ts), which a message shares with the worker. So
// the caller must keep the bytes from changing until the promise settles
// (writeback holds the folio locks; a read fills folios it holds locked).
// Buffers that are not views of shared memory, and every call when the
// thread cannot be started or has failed, are checksummed on the calling
// thread instead: same results, just on the main thread.
//
// Misuse: calling crcs() for a handful of blocks (a message costs tens of
// microseconds: below minBlocks the caller's thread does it at once), or
// changing the buffers while a call is pending (the crc is then of some
// mixture of old and new bytes).
import { Worker } from 'worker_threads'
import { crc32, crcImpl, crcPieces } from './crc'

/** below this many blocks a call is answered on the calling thread: a message costs what ~16 blocks of zlib's crc do; with the addon every call is */
export const MIN_BLOCKS = crcImpl === 'clmul' ? Infinity : 16

const BLOCK = 4096

// a message names its blocks either one by one (slab, offset, length) or
// as a span: `blocks` consecutive blocks of `span` from `offset`. The
// thread computes zlib's crc32: it runs only where crc.ts has no addon
// (and in tests, which give the same numbers either way).
const WORKER_SOURCE = `
const { parentPort } = require('worker_threads')
const { crc32 } = require('zlib')
parentPort.on('message', ({ id, slabs, slab, offset, length, span, blocks }) => {
  let out
  if (span) {
    out = new Uint32Array(blocks)
    const all = new Uint8Array(span, offset, blocks * ${BLOCK})
    for (let i = 0; i < blocks; i++) out[i] = crc32(all.subarray(i * ${BLOCK}, (i + 1) * ${BLOCK}))
  } else {
    out = new Uint32Array(slab.length)
    for (let i = 0; i < slab.length; i++) out[i] = crc32(new Uint8Array(slabs[slab[i]], offset[i], length[i]))
  }
  parentPort.postMessage({ id, out }, [out.buffer])
})
`

/** crc32 of each buffer, on the calling thread */
export function crcsHere (bufs: readonly Uint8Array[]): Uint32Array {
  const out = new Uint32Array(bufs.length)
  for (let i = 0; i < bufs.length; i++) out[i] = crc32(bufs[i])
  return out
}

interface Pending { resolve: (crcs: Uint32Array) => void, bufs: readonly Uint8Array[] | Uint8Array }

/** crc32 of each buffer, or of each block of a span, on the calling thread */
const here = (bufs: readonly Uint8Array[] | Uint8Array): Uint32Array => bufs instanceof Uint8Array ? crcPieces(bufs, BLOCK) : crcsHere(bufs)

export class CrcThread {
  private worker: Worker | null = null
  private failed = false
  private nextId = 1
  private readonly pending = new Map<number, Pending>()
  /** calls answered by the thread, and on the caller's */
  readonly stats = { offloaded: 0, inline: 0 }

  /** minBlocks: calls of fewer blocks are answered on the calling thread (tests set it to reach the thread) */
  constructor (private readonly minBlocks = MIN_BLOCKS) {}

  /**
   * crc32 of each buffer (BLOCK_SIZE each), or of each 4 KiB block of a
   * span (one buffer, a whole number of blocks); unchanged until this
   * settles. A span goes as one message naming it, where its blocks as
   * views would name every view.
   */
  async crcs (bufs: readonly Uint8Array[] | Uint8Array): Promise<Uint32Array> {
    const span = bufs instanceof Uint8Array
    const blocks = span ? bufs.length / BLOCK : bufs.length
    const shared = span ? bufs.buffer instanceof SharedArrayBuffer : bufs.every(b => b.buffer instanceof SharedArrayBuffer)
    const w = blocks >= this.minBlocks && shared ? this.thread() : null
    if (!w) {
      this.stats.inline++
      return here(bufs)
    }
    this.stats.offloaded++
    const id = this.nextId++
    if (span) return await this.post(w, { id, span: bufs.buffer, offset: bufs.byteOffset, blocks }, bufs, [])
    // the message names each block by slab and offset: a few slabs cost
    // less to share than a view per block
    const slabs: SharedArrayBuffer[] = []
    const index = new Map<SharedArrayBuffer, number>()
    const slab = new Uint32Array(blocks)
    const offset = new Uint32Array(blocks)
    const length = new Uint32Array(blocks)
    for (let i = 0; i < blocks; i++) {
      const sab = bufs[i].buffer as SharedArrayBuffer
      let k = index.get(sab)
      if (k === undefined) { k = slabs.push(sab) - 1; index.set(sab, k) }
      slab[i] = k
      offset[i] = bufs[i].byteOffset
      length[i] = bufs[i].byteLength
    }
    return await this.post(w, { id, slabs, slab, offset, length }, bufs, [slab.buffer, offset.buffer, length.buffer])
  }

  private async post (w: Worker, msg: { id: number, [k: string]: unknown }, bufs: readonly Uint8Array[] | Uint8Array, transfer: ArrayBuffer[]): Promise<Uint32Array> {
    return await new Promise(resolve => {
      this.pending.set(msg.id, { resolve, bufs })
      w.ref() // a call pending keeps the process alive until it is answered
      w.postMessage(msg, transfer)
    })
  }

  private thread (): Worker | null {
    if (this.worker || this.failed) return this.worker
    try {
      const w = new Worker(WORKER_SOURCE, { eval: true })
      w.on('message', ({ id, out }: { id: number, out: Uint32Array }) => {
        const p = this.pending.get(id)
        this.pending.delete(id)
        if (this.pending.size === 0) w.unref()
        p?.resolve(out)
      })
      w.on('error', () => this.fail())
      w.on('exit', () => this.fail())
      w.unref() // idle, it never keeps the process alive (after the listeners: adding one refs it again)
      this.worker = w
    } catch {
      this.failed = true
    }
    return this.worker
  }

  /** the thread is gone: answer what it left pending here, and everything after */
  private fail (): void {
    this.failed = true
    this.worker = null
    for (const [id, p] of this.pending) {
      this.pending.delete(id)
      p.resolve(here(p.bufs))
    }
  }

  /** stop the thread (unmount); later calls run on the caller's thread */
  close (): void {
    const w = this.worker
    this.fail()
    void w?.terminate()
  }
}
