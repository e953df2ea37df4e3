// The data area: file data, in a file beside the image named IMAGE-data
// (like SQLite's own -wal), read and written with asynchronous I/O on
// libuv's thread pool, off the main thread.
//
// On-disk format:
//   block 0 (4096 bytes)  header:
//     0   16 bytes  magic "FOLIOFS-DATA\n\0\0\0"
//     16  u32 BE    format version (1)
//     20  36 bytes  uuid of the image (superblock.uuid), ASCII
//   block n >= 1          physical block n of the extent tree: byte offset
//                         n * 4096, which is what FIEMAP reports as
//                         fe_physical. Block 0 is never allocated.
// The file is sparse: blocks never written read as zeros and take no
// space. A mapped block always lies below the end of the file (data is
// written, and datasync'ed, before the commit that maps it; nothing ever
// shortens the file): a read past the end is EIO.
//
// The image and its data area belong together: a missing data area, or
// one of another image (uuid mismatch), is a corrupt image (exit 5), never
// an empty filesystem.
import * as fs from 'fs'
import * as path from 'path'
import { promisify } from 'util'
import { BLOCK_SIZE, EXIT, hostFileError, ImageError } from './imageerror'
import { fsErr } from './errno'

const MAGIC = Buffer.from('FOLIOFS-DATA\n\0\0\0', 'latin1')
const VERSION = 1

const readv = promisify(fs.readv)
const writev = promisify(fs.writev)

/**
 * writev all of bufs at pos. A short write (the host filesystem filled up
 * part way through) goes on with the rest, so that the host's own error
 * comes back (ENOSPC, EIO: what the caller's fsync reports), not an error
 * without an errno (EIO for a full disk).
 */
async function writeAll (fd: number, bufs: Buffer[], pos: number): Promise<void> {
  for (;;) {
    const want = bufs.reduce((s, b) => s + b.length, 0)
    const { bytesWritten: n } = await writev(fd, bufs, pos)
    if (n >= want) return
    if (n === 0) throw fsErr('EIO', `the data area took 0 of ${want} bytes`)
    pos += n
    let skip = n
    let i = 0
    while (skip >= bufs[i].length) skip -= bufs[i++].length // n < want: i stays in range
    bufs = [bufs[i].subarray(skip), ...bufs.slice(i + 1)]
  }
}
const fdatasync = promisify(fs.fdatasync)

/**
 * bufs with neighbours in memory merged into one view each (folio slabs,
 * streaming chunks): the kernel gets fewer iovecs, and the binding unwraps
 * fewer buffers, at about a microsecond each on the main thread.
 */
function coalesce (bufs: Buffer[]): Buffer[] {
  const out: Buffer[] = []
  for (let i = 0; i < bufs.length;) {
    const b = bufs[i]
    let end = b.byteOffset + b.length
    let j = i + 1
    for (; j < bufs.length && bufs[j].buffer === b.buffer && bufs[j].byteOffset === end; j++) end += bufs[j].length
    out.push(j === i + 1 ? b : Buffer.from(b.buffer, b.byteOffset, end - b.byteOffset))
    i = j
  }
  return out
}

/**
 * The file an image path names: a symlink's target (as mount(8) and fsck
 * follow one to a device), so the data area, and SQLite's -wal beside it,
 * are found beside the image itself, not beside the link. Any other
 * path stays as it is (messages name what the user typed).
 */
export function imageTarget (image: string): string {
  try { return fs.lstatSync(image).isSymbolicLink() ? fs.realpathSync(image) : image } catch { return image }
}

export const dataAreaPath = (image: string): string => `${imageTarget(image)}-data`

function header (uuid: string): Buffer {
  const b = Buffer.alloc(BLOCK_SIZE)
  MAGIC.copy(b, 0)
  b.writeUInt32BE(VERSION, 16)
  b.write(uuid, 20, 'ascii')
  return b
}

/**
 * mkfs: create the data area of a new image (replacing an old one). Its
 * header is synced, and so is the directory holding it and the image: a
 * power cut right after mkfs must not leave an image whose data area is
 * missing or without its header (refused as corrupt).
 */
export function createDataArea (image: string, uuid: string): void {
  const p = dataAreaPath(image)
  fs.rmSync(p, { force: true })
  const fd = fs.openSync(p, 'w', 0o600)
  try {
    fs.writeSync(fd, header(uuid))
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  const dir = fs.openSync(path.dirname(p), 'r')
  try { fs.fsyncSync(dir) } finally { fs.closeSync(dir) }
}

/**
 * The largest file the filesystem holding dir takes, when it is less than
 * `want` bytes; null when it takes `want` (or cannot be asked). The data
 * area is written at pblk * 4096 up to the image's capacity, and a host
 * whose files stop short of that (ext4: 16 TiB - 4 KiB) answered EFBIG to
 * the writeback of blocks placed past it: mkfs --size 17T was accepted,
 * and fsynced data was lost (found by a large-file hunt). Asked of a
 * probe file of its own (made, grown sparse by ftruncate, removed), never
 * of the data area: a mount of it may be growing it at the same time.
 */
export function hostFileLimitBelow (dir: string, want: number): number | null {
  const probe = path.join(dir, `.foliofs-probe-${process.pid}`)
  let fd: number
  try { fd = fs.openSync(probe, 'wx', 0o600) } catch { return null } // a read-only or foreign directory: not asked
  const fits = (n: number): boolean => {
    try {
      fs.ftruncateSync(fd, n)
      return true
    } catch (err) {
      const code = (err as { code?: string }).code
      if (code === 'EFBIG' || code === 'EINVAL') return false
      throw err
    }
  }
  try {
    if (fits(want)) return null
    let lo = 0 // fits
    let hi = want // does not
    while (hi - lo > BLOCK_SIZE) {
      const mid = Math.floor((lo + hi) / 2 / BLOCK_SIZE) * BLOCK_SIZE
      if (mid <= lo) break
      if (fits(mid)) lo = mid
      else hi = mid
    }
    return lo
  } catch {
    return null
  } finally {
    fs.closeSync(fd)
    fs.rmSync(probe, { force: true })
  }
}

/**
 * What stops files at `max` bytes (hostFileLimitBelow's answer), for a
 * message: this process's RLIMIT_FSIZE (ulimit -f, inherited by the
 * daemon) when that is the limit, else the filesystem holding dir.
 */
export function fileLimitHolder (dir: string, max: number): string {
  try {
    const m = /^Max file size\s+(\d+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'))
    if (m && Number(m[1]) <= max + BLOCK_SIZE) return "this process's file size limit (ulimit -f)"
  } catch { /* no /proc */ }
  return `the filesystem holding ${dir}`
}

/** check that image's data area exists and belongs to it; returns its path */
export function checkDataArea (image: string, uuid: string): string {
  const p = dataAreaPath(image)
  let fd: number
  try {
    fd = fs.openSync(p, 'r')
  } catch (err) {
    throw hostFileError(err, image, p) ?? new ImageError(`${image}: corrupt image (data area ${p} is missing)`, EXIT.CORRUPT)
  }
  const b = Buffer.alloc(BLOCK_SIZE)
  let n: number
  try {
    if (!fs.fstatSync(fd).isFile()) throw new ImageError(`${image}: corrupt image (data area ${p} is not a regular file)`, EXIT.CORRUPT)
    n = fs.readSync(fd, b, 0, BLOCK_SIZE, 0)
  } catch (err) {
    throw err instanceof ImageError ? err : hostFileError(err, image, p) ?? err
  } finally { fs.closeSync(fd) }
  if (n === 0) throw new ImageError(`${image}: corrupt image (data area ${p} is empty)`, EXIT.CORRUPT)
  if (n < 56 || !b.subarray(0, 16).equals(MAGIC)) throw new ImageError(`${image}: corrupt image (${p} is not a foliofs data area)`, EXIT.CORRUPT)
  if (b.readUInt32BE(16) !== VERSION) throw new ImageError(`${image}: unsupported data area version ${b.readUInt32BE(16)}`, EXIT.NOT_FOLIOFS)
  const got = b.toString('ascii', 20, 56)
  if (got !== uuid) throw new ImageError(`${image}: corrupt image (data area ${p} belongs to another image: ${got})`, EXIT.CORRUPT)
  return p
}

export interface DataAreaStats { reads: number, readBytes: number, writes: number, writeBytes: number, syncs: number }

/** An open data area. Buffers passed to read/write must be BLOCK_SIZE each. */
export class DataArea {
  private fd: number
  readonly stats: DataAreaStats = { reads: 0, readBytes: 0, writes: 0, writeBytes: 0, syncs: 0 }

  private constructor (fd: number, readonly path: string) {
    this.fd = fd
  }

  /** open (checked) for the image; synchronous, at mount */
  static open (image: string, uuid: string, readonly: boolean): DataArea {
    const p = checkDataArea(image, uuid)
    try {
      return new DataArea(fs.openSync(p, readonly ? 'r' : 'r+'), p)
    } catch (err) {
      const code = (err as { code?: string }).code ?? 'error'
      throw new ImageError(`${p}: cannot open the data area for writing (${code}: permissions, an immutable file or a read-only filesystem); mount with -o ro`, EXIT.MOUNT_FAILED)
    }
  }

  /** fill bufs (consecutive blocks, each one or more whole blocks) from physical block pblk */
  async read (bufs: Buffer[], pblk: number): Promise<void> {
    let at = 0
    for (let k = 0; k < bufs.length; k += 1024) { // IOV_MAX
      const part = coalesce(bufs.slice(k, k + 1024))
      const want = part.reduce((s, b) => s + b.length, 0)
      const { bytesRead: n } = await readv(this.fd, part, pblk * BLOCK_SIZE + at)
      // only mapped blocks are read, and they lie below the end (see the top
      // of the file): a read past it is a data area cut short or a mapping
      // gone wrong, and its bytes are gone. Zeros would be silent (a block
      // with no checksum row, as in older images, passes as unverified).
      if (n < want) throw fsErr('EIO', `data area ${this.path}: block ${pblk + Math.floor((at + n) / BLOCK_SIZE)} lies past its end`)
      this.stats.reads++
      this.stats.readBytes += want
      at += want
    }
  }

  /** write bufs (consecutive blocks, each one or more whole blocks) at physical block pblk */
  async write (bufs: Buffer[], pblk: number): Promise<void> {
    if (pblk < 1) throw new Error(`write to data area block ${pblk}: block 0 is the header`)
    let at = 0
    for (let k = 0; k < bufs.length; k += 1024) {
      const part = coalesce(bufs.slice(k, k + 1024))
      const want = part.reduce((s, b) => s + b.length, 0)
      await writeAll(this.fd, part, pblk * BLOCK_SIZE + at)
      this.stats.writes++
      this.stats.writeBytes += want
      at += want
    }
  }

  /**
   * Failed datasyncs so far. Linux reports a failed writeback to one
   * fdatasync only (the first to look) and marks the pages clean: a sync
   * that succeeds after another failed does not mean the data written
   * before that failure is on disk. So a writer notes this count before
   * it writes, and trusts a later successful datasync for that data only
   * if the count has not moved (writtenSafely).
   */
  syncFailures = 0

  /** make everything written so far durable (before the commits that map it); see syncFailures */
  async datasync (): Promise<void> {
    try {
      await fdatasync(this.fd)
    } catch (err) {
      this.syncFailures++
      throw err
    }
    this.stats.syncs++
  }

  /** data written when syncFailures was `before` is durable after a successful datasync: no sync failed since it was written */
  writtenSafely (before: number): boolean {
    return this.syncFailures === before
  }

  /** the descriptor, for discard (punching freed blocks; see discard.ts) only */
  get descriptor (): number { return this.fd }

  /** bytes the data area file spans (fsck: mapped blocks must lie below) */
  size (): number {
    return fs.fstatSync(this.fd).size
  }

  close (): void {
    if (this.fd >= 0) fs.closeSync(this.fd)
    this.fd = -1
  }
}
