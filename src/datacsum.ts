// Data checksums (format 4): a crc32 of every 4 KiB block of file data,
// computed by writeback and checked on every read from the data area, so
// a damaged block reads as EIO, never as wrong bytes.
//
// On disk, one SQLite table beside the extent tree:
//   data_csums(chunk INTEGER PRIMARY KEY, crcs BLOB NOT NULL)
//   row c covers the physical blocks [c * CSUM_CHUNK, (c + 1) * CSUM_CHUNK)
//   of the data area; its blob is CSUM_BLOB bytes:
//     0                 CSUM_CHUNK / 8 bytes: bitmap, bit i (byte i >> 3,
//                       bit i & 7) set = block c * CSUM_CHUNK + i has a crc
//     CSUM_BITMAP       CSUM_CHUNK x u32 BE: crc32 of block c * CSUM_CHUNK + i
//   A chunk with no checksummed block has no row.
// The crc is zlib's crc32 (IEEE polynomial), the one the B-tree pages
// already carry, computed by crc.ts (carry-less multiplication where the
// CPU has it, else zlib: the same numbers).
//
// Keyed by physical block, not stored in the extent: the tree cuts, trims
// and replaces extents (overwrites, punches, truncates) and never has to
// carry checksums along; a per-extent crc would have to be recomputed over
// data at every cut.
//
// Invariants:
// * Every block a format-4 writeback maps as written has its bit set and
//   the crc of the bytes written there. The row is written inside the
//   commit that maps the block (the commit hook, one SQLite transaction),
//   so a crash never leaves a mapping without its checksum or the reverse.
// * Writeback is copy-on-write: a mapped block is never rewritten in
//   place, so its crc never changes while it is mapped.
// * Blocks that a format-3 build wrote have no checksum (the 3 -> 4 upgrade
//   adds none: it would read all data, and would bless what is already
//   damaged). They are read unverified (`unverifiedBlocks` in stats) until
//   rewritten.
// * Entries of free blocks are stale and mean nothing: the writeback that
//   maps a block again sets its crc. Unwritten (preallocated) extents read
//   as zeros without I/O and are never checked.
// Debug check: `foliofs fsck --verify-data` reads every written block and
// compares it with its crc.
//
// Misuse: record() outside the commit that maps the blocks (a crash between
// the two leaves wrong checksums: EIO on good data); verify() of bytes that
// did not all come from the data area (a zeroed tail, a hole).
import type Database from 'better-sqlite3'
import { FsError } from './errno'

/** blocks per data_csums row (part of the image format) */
export const CSUM_CHUNK = 512
const CSUM_BITMAP = CSUM_CHUNK / 8
/** bytes of a data_csums blob */
export const CSUM_BLOB = CSUM_BITMAP + 4 * CSUM_CHUNK

export const CSUM_SCHEMA = 'CREATE TABLE IF NOT EXISTS data_csums (chunk INTEGER PRIMARY KEY, crcs BLOB NOT NULL);'

export interface CsumStats {
  /** blocks read from the data area whose crc matched */
  verifiedBlocks: number
  /** blocks read without a checksum (written by a format-3 build) */
  unverifiedBlocks: number
  /** blocks read whose crc did not match (each answered EIO) */
  errors: number
}

/** what verify found: block indices (into the buffers given) that mismatched, and how many had no crc */
export interface VerifyResult { bad: number[], unverified: number }

/** whether the image has the table (format 4 on; a read-only format-3 image has none) */
export const hasCsumTable = (db: Database.Database): boolean =>
  db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'data_csums'").get() !== undefined

export class DataCsums {
  readonly stats: CsumStats = { verifiedBlocks: 0, unverifiedBlocks: 0, errors: 0 }
  /** false on a read-only format-3 image (no table): everything reads unverified */
  readonly enabled: boolean
  private readonly get: Database.Statement | null
  private readonly put: Database.Statement | null

  constructor (db: Database.Database) {
    if (!db.readonly) db.exec(CSUM_SCHEMA)
    this.enabled = hasCsumTable(db)
    this.get = this.enabled ? db.prepare('SELECT crcs FROM data_csums WHERE chunk = ?').pluck() : null
    this.put = this.enabled && !db.readonly ? db.prepare('INSERT OR REPLACE INTO data_csums (chunk, crcs) VALUES (?, ?)') : null
  }

  private row (chunk: number): Buffer | undefined {
    const b = this.get?.get(chunk) as Buffer | undefined
    return b && b.length === CSUM_BLOB ? b : undefined // a malformed row checks nothing (fsck reports it)
  }

  /**
   * Inside the commit that maps them: blocks [pblk, pblk + crcs.length)
   * hold data whose crcs are given.
   */
  record (pblk: number, crcs: Uint32Array): void {
    if (!this.put) throw new Error('data checksums: image is read-only or has no data_csums table')
    for (let i = 0; i < crcs.length;) {
      const chunk = Math.floor((pblk + i) / CSUM_CHUNK)
      const blob = Buffer.from(this.row(chunk) ?? Buffer.alloc(CSUM_BLOB))
      for (let at = (pblk + i) % CSUM_CHUNK; at < CSUM_CHUNK && i < crcs.length; at++, i++) {
        blob[at >> 3] |= 1 << (at & 7)
        blob.writeUInt32BE(crcs[i], CSUM_BITMAP + 4 * at)
      }
      this.put.run(chunk, blob)
    }
  }

  /**
   * fn(i, crc) for each of blocks [pblk, pblk + count): its recorded crc,
   * or null when it has none (written by a format-3 build, or no table).
   */
  private each (pblk: number, count: number, fn: (i: number, crc: number | null) => void): void {
    for (let i = 0; i < count;) {
      const chunk = Math.floor((pblk + i) / CSUM_CHUNK)
      const blob = this.enabled ? this.row(chunk) : undefined
      const first = (pblk + i) % CSUM_CHUNK
      const n = Math.min(CSUM_CHUNK - first, count - i)
      for (let at = first; at < first + n; at++, i++) {
        fn(i, blob && (blob[at >> 3] & (1 << (at & 7))) ? blob.readUInt32BE(CSUM_BITMAP + 4 * at) : null)
      }
    }
  }

  /** Check the blocks just read from physical blocks [pblk, pblk + crcs.length), given their crc32s (crcthread.ts) */
  verify (pblk: number, crcs: Uint32Array): VerifyResult {
    const res: VerifyResult = { bad: [], unverified: 0 }
    this.each(pblk, crcs.length, (i, crc) => {
      if (crc === null) res.unverified++
      else if (crcs[i] !== crc) res.bad.push(i)
    })
    this.stats.unverifiedBlocks += res.unverified
    this.stats.errors += res.bad.length
    this.stats.verifiedBlocks += crcs.length - res.unverified - res.bad.length
    return res
  }

  /**
   * For a read plan (readplan.ts) of blocks [pblk, pblk + count): crcs[i]
   * = the recorded crc of block pblk + i and check[i] = 1, or check[i] = 0
   * where it has none. Counted as verified here: the libfuse thread checks
   * them, and a mismatch there reads them again through verify (counted
   * twice then).
   */
  expected (pblk: number, count: number, crcs: Uint32Array, check: Uint8Array): void {
    let unverified = 0
    this.each(pblk, count, (i, crc) => {
      if (crc === null) { unverified++; check[i] = 0 } else { crcs[i] = crc; check[i] = 1 }
    })
    this.stats.unverifiedBlocks += unverified
    this.stats.verifiedBlocks += count - unverified
  }
}

/**
 * EIO for blocks whose checksum did not match: `blocks` are the logical
 * blocks of the file (the page cache keeps the others it read).
 */
export class ChecksumError extends FsError {
  constructor (readonly ino: number, readonly blocks: number[]) {
    super('EIO', `inode ${ino}: data checksum mismatch in block${blocks.length > 1 ? 's' : ''} ${blocks.slice(0, 8).join(', ')}${blocks.length > 8 ? ', ...' : ''}`)
  }
}
