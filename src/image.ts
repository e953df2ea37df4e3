// The foliofs image: one SQLite database (superblock, inodes, dirents,
// xattrs, orphans, the extent B-tree and free space) plus its data area,
// IMAGE-data (dataarea.ts), which holds file data. This module owns the
// on-disk schema, mkfs, and the checks that refuse anything that is not a
// healthy foliofs image before a single byte of it is written.
//
// Format versions: 1 kept file data in a `blocks` table inside SQLite;
// 2 keeps it in the data area (physical block 0 is the data area's header
// and never allocated); 3 stores free space as one row per 4096-block
// bucket (`free_buckets`) instead of one row per free range (`free_space`);
// 4 adds `data_csums`, a crc32 of every written data block (datacsum.ts);
// 5 adds `data_journal`, blocks of small fsyncs not written back yet
// (journal.ts). A read-write open upgrades 2, 3 and 4 in place
// (upgradeImage); a read-only one reads 3 and 4 as they are (3's data is
// read unverified; neither has a journal) and refuses 2.
import Database from 'better-sqlite3'
import * as fs from 'fs'
import * as nodePath from 'path'
import { randomUUID } from 'crypto'
import { BTREE_SCHEMA, ExtentTree } from './btree/tree'
import { bucketsOf } from './btree/alloc'
import { BLOCK_SIZE, EXIT, hostFileError, ImageError, refusedReadWrite } from './imageerror'
import { checkDataArea, createDataArea, dataAreaPath, fileLimitHolder, hostFileLimitBelow, imageTarget } from './dataarea'
import { CSUM_SCHEMA } from './datacsum'
import { JOURNAL_SCHEMA } from './journal'
import { describeProblems, mountProblems, tableProblems, truncation } from './imagecheck'
import { fileUsers } from './mounts'

export { BLOCK_SIZE, EXIT, ImageError }

export const MAGIC = 'foliofs'
export const FORMAT_VERSION = 5
/** the oldest format a read-write open upgrades in place (upgradeImage) */
const UPGRADABLE_VERSION = 2
/** the older formats a read-only open reads as they are (3: no data checksums; neither a journal) */
const READABLE_OLD_VERSIONS = [3, 4]
export const ROOT_INO = 1
export const DEFAULT_CAPACITY = 8 * 1024 * 1024 * 1024 // bytes
/**
 * the most blocks an image may have (4 PiB): block numbers stay exact in
 * doubles, and in the free-space map's varints, with room to spare
 */
export const MAX_CAPACITY_BLOCKS = 2 ** 40
/** WAL pages after which a commit checkpoints (see openImage) */
export const WAL_AUTOCHECKPOINT = 512

export interface Superblock {
  magic: string
  version: number
  blockSize: number
  uuid: string
  createdSec: number
  capacityBlocks: number
  label: string
}

const SQLITE_HEADER = Buffer.from('SQLite format 3\0', 'latin1')
/** bytes of the SQLite header openImage reads (through the file format versions) */
const SQLITE_HEADER_BYTES = 20

export const SCHEMA = `
CREATE TABLE superblock (
  id INTEGER PRIMARY KEY CHECK (id = 0),
  magic TEXT NOT NULL,
  version INTEGER NOT NULL,
  block_size INTEGER NOT NULL,
  uuid TEXT NOT NULL,
  created_sec INTEGER NOT NULL,
  capacity_blocks INTEGER NOT NULL,
  label TEXT NOT NULL DEFAULT ''
);
CREATE TABLE inodes (
  ino INTEGER PRIMARY KEY AUTOINCREMENT,
  mode INTEGER NOT NULL,
  uid INTEGER NOT NULL,
  gid INTEGER NOT NULL,
  nlink INTEGER NOT NULL,
  size INTEGER NOT NULL DEFAULT 0,
  blocks INTEGER NOT NULL DEFAULT 0,
  rdev INTEGER NOT NULL DEFAULT 0,
  parent INTEGER NOT NULL DEFAULT 0,
  atime_s INTEGER NOT NULL, atime_ns INTEGER NOT NULL,
  mtime_s INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
  ctime_s INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
  target BLOB
);
CREATE TABLE dirents (
  parent INTEGER NOT NULL,
  name TEXT NOT NULL,
  ino INTEGER NOT NULL,
  PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE INDEX dirents_by_ino ON dirents (ino);
CREATE TABLE xattrs (
  ino INTEGER NOT NULL,
  name TEXT NOT NULL,
  value BLOB NOT NULL,
  PRIMARY KEY (ino, name)
) WITHOUT ROWID;
CREATE TABLE orphans (
  ino INTEGER PRIMARY KEY
);
`

const REQUIRED_TABLES = ['superblock', 'inodes', 'dirents', 'xattrs', 'orphans', 'btree_nodes', 'btree_meta', 'free_buckets']

export interface MkfsOptions {
  capacityBytes?: number
  label?: string
  force?: boolean
  uid?: number
  gid?: number
  /** told each phase as it starts (the CLI shows it on a terminal) */
  progress?: (phase: string) => void
}

export function parseSize (s: string): number {
  const m = /^(\d+)([kmgtp]?)i?b?$/i.exec(s.trim())
  if (!m) throw new ImageError(`invalid size '${s}' (use e.g. 512M, 8G)`, EXIT.USAGE)
  const mult: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4, p: 1024 ** 5 }
  return Number(m[1]) * mult[m[2].toLowerCase()]
}

/** wall-clock ns minus the monotonic clock's: nowTime's anchor, renewed when the wall clock steps */
let anchorNs = 0n
/** the last time handed out: times never go back while the wall clock does not */
let lastNs = 0n

/**
 * The time now, to the nanosecond (as the kernel stamps inodes): the wall
 * clock (Date.now(), whole milliseconds) refined by the monotonic one.
 * Milliseconds made a read's atime equal to the ctime of a chmod just
 * before it, and relatime (atime not newer than ctime) then updated atime
 * on every read that followed within the millisecond (generic/034).
 */
export function nowTime (): { sec: number, nsec: number } {
  const wall = BigInt(Date.now()) * 1000000n
  const mono = process.hrtime.bigint()
  let ns = anchorNs + mono
  if (ns < wall - 1000000n || ns >= wall + 2000000n) { // first call, or the wall clock stepped: anchor again
    anchorNs = wall - mono
    ns = wall
  }
  if (ns <= lastNs && lastNs - ns < 2000000n) ns = lastNs + 1n
  lastNs = ns
  const sec = ns / 1000000000n
  return { sec: Number(sec), nsec: Number(ns - sec * 1000000000n) }
}

/** the image's files: the database, SQLite's files beside it, the data area */
function removeImageFiles (path: string): void {
  for (const suffix of ['', '-wal', '-shm', '-journal']) fs.rmSync(path + suffix, { force: true })
  fs.rmSync(dataAreaPath(path), { force: true })
}

/** Create a new, empty image. Refuses to overwrite an existing file unless force. */
export function mkfs (image: string, opts: MkfsOptions = {}): Superblock {
  const path = imageTarget(image) // --force over a symlink makes the image it names
  const capacity = opts.capacityBytes ?? DEFAULT_CAPACITY
  if (!Number.isFinite(capacity) || capacity < 64 * BLOCK_SIZE) {
    throw new ImageError(`image size too small (minimum ${64 * BLOCK_SIZE} bytes)`, EXIT.USAGE)
  }
  if (capacity > MAX_CAPACITY_BLOCKS * BLOCK_SIZE) throw new ImageError(`image size too large (maximum ${MAX_CAPACITY_BLOCKS * BLOCK_SIZE / 1024 ** 5}P)`, EXIT.USAGE)
  const dir = nodePath.dirname(nodePath.resolve(path))
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new ImageError(`${path}: no such directory: ${dir}`, EXIT.USAGE)
  if (fs.lstatSync(path, { throwIfNoEntry: false })?.isSymbolicLink()) throw new ImageError(`${path}: a symlink to nothing (make the image where it points, or remove it)`, EXIT.USAGE)
  if (fs.existsSync(path)) {
    const st = fs.statSync(path)
    if (!st.isFile()) throw new ImageError(`${path}: not a regular file`, EXIT.USAGE)
    if (!opts.force) throw new ImageError(`${path}: already exists (use --force to overwrite)`, EXIT.USAGE)
    refuseInUse(path)
    removeImageFiles(path)
  }
  const hostMax = hostFileLimitBelow(dir, Math.floor(capacity / BLOCK_SIZE) * BLOCK_SIZE)
  if (hostMax !== null) {
    throw new ImageError(`${path}: ${fileLimitHolder(dir, hostMax)} allows files of at most ${sizeInG(hostMax)}, less than --size (${sizeInG(capacity)}): the data area beside the image grows as large as the image; use --size ${sizeInG(hostMax)} or less, or a filesystem with larger files (XFS, btrfs)`, EXIT.USAGE)
  }
  // claim the name: a file that appeared since (another mkfs) is not ours
  // to fill, nor to remove when this one fails
  try {
    fs.closeSync(fs.openSync(path, 'wx', 0o644))
  } catch (e) {
    const code = (e as { code?: string }).code
    if (code === 'EEXIST') throw new ImageError(`${path}: already exists (made meanwhile by someone else)`, EXIT.BUSY)
    const why = code === 'EROFS' ? 'read-only filesystem' : code === 'ENOSPC' ? 'no space left on device' : code ?? String(e)
    throw new ImageError(`${path}: cannot create the image: ${dir} is not writable (${why})`, EXIT.MOUNT_FAILED)
  }
  try {
    return createImage(path, capacity, opts)
  } catch (err) {
    // nothing half-made stays behind (a later mkfs said "already exists",
    // a mount "not a foliofs image")
    removeImageFiles(path)
    if (err instanceof ImageError) throw err
    const e = err as { code?: string, message?: string }
    const full = e.code === 'SQLITE_FULL' || e.code === 'ENOSPC' || String(e.code).startsWith('SQLITE_IOERR_SHM') // the WAL index did not fit either
    const why = full ? 'no space left on device' : (e.message ?? String(err))
    throw new ImageError(`${path}: cannot create the image: ${why}`, EXIT.MOUNT_FAILED)
  }
}

function createImage (path: string, capacity: number, opts: MkfsOptions): Superblock {
  const db = new Database(path)
  try {
    opts.progress?.('schema, superblock, root directory')
    // free pages go back to the host at unmount (FolioFs.close: incremental_vacuum); set before any table exists
    db.pragma('auto_vacuum = INCREMENTAL')
    db.pragma('journal_mode = WAL')
    const sb: Superblock = {
      magic: MAGIC,
      version: FORMAT_VERSION,
      blockSize: BLOCK_SIZE,
      uuid: randomUUID(),
      createdSec: Math.floor(Date.now() / 1000),
      capacityBlocks: Math.floor(capacity / BLOCK_SIZE),
      label: opts.label ?? ''
    }
    db.transaction(() => {
      db.exec(SCHEMA)
      db.exec(BTREE_SCHEMA)
      db.exec(CSUM_SCHEMA)
      db.exec(JOURNAL_SCHEMA)
      db.prepare('INSERT INTO superblock VALUES (0, ?, ?, ?, ?, ?, ?, ?)')
        .run(sb.magic, sb.version, sb.blockSize, sb.uuid, sb.createdSec, sb.capacityBlocks, sb.label)
      const t = nowTime()
      db.prepare(`INSERT INTO inodes (ino, mode, uid, gid, nlink, parent, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns)
                  VALUES (?, ?, ?, ?, 2, ?, ?, ?, ?, ?, ?, ?)`)
        .run(ROOT_INO, 0o040755, opts.uid ?? process.getuid?.() ?? 0, opts.gid ?? process.getgid?.() ?? 0, ROOT_INO, t.sec, t.nsec, t.sec, t.nsec, t.sec, t.nsec)
    })()
    opts.progress?.('extent tree and free-space map')
    // empty root node; blocks 1.. free (block 0 is the data area's header)
    ExtentTree.open(db, { totalBlocks: sb.capacityBlocks, firstBlock: 1 })
    createDataArea(path, sb.uuid)
    // at rest an image is a plain rollback-journal database: read-only opens
    // (fsck, stats, mount checks) then never create -wal/-shm files beside it
    db.pragma('journal_mode = DELETE')
    return sb
  } finally {
    db.close()
  }
}

/**
 * mkfs --force must not wipe an image in use: a mount would go on writing
 * into files no longer there and lose everything, fsynced or not. A
 * read-write mount (or fsck) holds SQLite's lock on it; a read-only mount
 * holds none, but keeps the image and its data area open. Either is
 * EXIT.BUSY. A file that is not an SQLite database, open by no one, is
 * not in use.
 */
function refuseInUse (path: string): void {
  const users = fileUsers([path, dataAreaPath(path)])
  if (users.length > 0) throw new ImageError(`${path}: image is in use by ${users.slice(0, 3).join(', ')} (mounted?); unmount it first`, EXIT.BUSY)
  let db: Database.Database
  try {
    db = new Database(path, { fileMustExist: true, timeout: 0 })
  } catch {
    return
  }
  try {
    db.prepare('BEGIN EXCLUSIVE').run() // a mount's lock, read-only mounts' included, refuses this
    db.prepare('ROLLBACK').run()
  } catch (err) {
    const code = (err as { code?: string }).code ?? ''
    if (code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED') throw sqliteError(path, err)
  } finally {
    db.close()
  }
}

function sqliteError (path: string, err: unknown): ImageError {
  const e = err as { code?: string, message?: string }
  const code = e?.code ?? ''
  if (code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED') {
    return new ImageError(`${path}: image is in use (mounted?); unmount it first`, EXIT.BUSY)
  }
  if (code === 'SQLITE_NOTADB') return new ImageError(`${path}: not a foliofs image (not an SQLite database)`, EXIT.NOT_FOLIOFS)
  if (code.startsWith('SQLITE_CORRUPT')) return new ImageError(`${path}: corrupt image (${e.message})`, EXIT.CORRUPT)
  if (code === 'SQLITE_CANTOPEN') return new ImageError(`${path}: cannot open image (${e.message})`, EXIT.NOT_FOUND)
  // an image a crash left in WAL mode is read through an index file beside
  // it (-shm), which a full host filesystem cannot take: not damage
  if (code === 'SQLITE_FULL' || code.startsWith('SQLITE_IOERR_SHM')) {
    return new ImageError(`${path}: cannot open the image: no room on the host filesystem for SQLite's ${code === 'SQLITE_FULL' ? 'writes' : 'index file beside it (-shm)'}; free some space there`, EXIT.MOUNT_FAILED)
  }
  if (code.startsWith('SQLITE_READONLY') || code === 'SQLITE_PERM' || code === 'SQLITE_AUTH') {
    return new ImageError(`${path}: cannot write the image (${code}: permissions, an immutable file or a read-only filesystem); mount with -o ro`, EXIT.MOUNT_FAILED)
  }
  return new ImageError(`${path}: cannot read image (${code || 'error'}: ${e?.message ?? String(err)})`, EXIT.CORRUPT)
}

/** Read the superblock of an open database, validating the schema. */
export function readSuperblock (db: Database.Database, path: string, upgradable = false): Superblock {
  const tables = new Set((db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as Array<{ name: string }>).map(r => r.name))
  if (tables.size === 0) throw new ImageError(`${path}: not a foliofs image (an SQLite database with no tables: ${INTERRUPTED_MKFS})`, EXIT.NOT_FOLIOFS)
  if (!tables.has('superblock')) throw new ImageError(`${path}: not a foliofs image (SQLite database without a foliofs superblock)`, EXIT.NOT_FOLIOFS)
  const row = db.prepare('SELECT * FROM superblock WHERE id = 0').get() as Record<string, unknown> | undefined
  if (!row || row.magic !== MAGIC) throw new ImageError(`${path}: not a foliofs image (bad magic)`, EXIT.NOT_FOLIOFS)
  if (row.version === UPGRADABLE_VERSION && tables.has('free_space')) {
    if (!upgradable) throw new ImageError(`${path}: foliofs format version ${UPGRADABLE_VERSION}: mount it read-write once (it is upgraded to ${FORMAT_VERSION} then)`, EXIT.NOT_FOLIOFS)
    tables.delete('free_space')
    tables.add('free_buckets') // upgradeImage makes it
  } else if (row.version !== FORMAT_VERSION && !READABLE_OLD_VERSIONS.includes(row.version as number)) {
    throw new ImageError(`${path}: unsupported foliofs format version ${String(row.version)} (this build reads ${FORMAT_VERSION})`, EXIT.NOT_FOLIOFS)
  }
  if (row.block_size !== BLOCK_SIZE) throw new ImageError(`${path}: corrupt superblock (block size ${String(row.block_size)})`, EXIT.CORRUPT)
  if (typeof row.capacity_blocks !== 'number' || !Number.isInteger(row.capacity_blocks) || row.capacity_blocks <= 0 || row.capacity_blocks > MAX_CAPACITY_BLOCKS) {
    throw new ImageError(`${path}: corrupt superblock (capacity ${String(row.capacity_blocks)} blocks)`, EXIT.CORRUPT)
  }
  for (const t of REQUIRED_TABLES) {
    if (!tables.has(t)) throw new ImageError(`${path}: corrupt image (table '${t}' missing)`, EXIT.CORRUPT)
  }
  const root = db.prepare('SELECT mode FROM inodes WHERE ino = ?').get(ROOT_INO) as { mode: number } | undefined
  if (!root || (root.mode & 0o170000) !== 0o040000) throw new ImageError(`${path}: corrupt image (root directory missing)`, EXIT.CORRUPT)
  return {
    magic: row.magic as string,
    version: row.version as number,
    blockSize: row.block_size as number,
    uuid: row.uuid as string,
    createdSec: row.created_sec as number,
    capacityBlocks: row.capacity_blocks as number,
    label: (row.label as string) ?? ''
  }
}

/**
 * Format 2 -> 3: free space moves from free_space (a row per range) to
 * free_buckets (a row per FREE_BUCKET blocks). Nothing else changed
 * between the two.
 */
function upgrade2to3 (db: Database.Database): void {
  const ranges = db.prepare('SELECT start, len FROM free_space ORDER BY start').all() as Array<{ start: number, len: number }>
  db.exec(BTREE_SCHEMA) // makes free_buckets (the tree's other tables exist)
  const put = db.prepare('INSERT INTO free_buckets (bucket, ranges) VALUES (?, ?)')
  for (const [b, blob] of bucketsOf(ranges)) put.run(b, blob)
  db.exec('DROP TABLE free_space')
}

/**
 * Format 3 -> 4: an empty data_csums. Blocks written before have no
 * checksum and read unverified until rewritten (datacsum.ts says why the
 * upgrade computes none).
 */
function upgrade3to4 (db: Database.Database): void {
  db.exec(CSUM_SCHEMA)
}

/** Format 4 -> 5: an empty data_journal. */
function upgrade4to5 (db: Database.Database): void {
  db.exec(JOURNAL_SCHEMA)
}

/** Upgrade an older image to FORMAT_VERSION, every step in one SQLite transaction (a crash leaves the old format). */
function upgradeImage (db: Database.Database, sb: Superblock): void {
  db.transaction(() => {
    if (sb.version === 2) upgrade2to3(db)
    if (sb.version <= 3) upgrade3to4(db)
    upgrade4to5(db)
    db.prepare('UPDATE superblock SET version = ? WHERE id = 0').run(FORMAT_VERSION)
  })()
  sb.version = FORMAT_VERSION
}

export interface OpenOptions {
  readonly?: boolean
  /** run PRAGMA quick_check before use (default true) */
  check?: boolean
  /** accept an image of the older format that a read-write open upgrades (default: when not readonly) */
  upgradable?: boolean
  /** the image will be written (a read-write mount checked read-only first): refuse what this build can only read (default: when not readonly) */
  writable?: boolean
  /** more checks on the read-only connection, before a read-write one touches the file (throw to refuse) */
  validate?: (db: Database.Database, sb: Superblock) => void
}

export interface OpenImage {
  db: Database.Database
  sb: Superblock
  path: string
  readonly: boolean
  /**
   * the image was not closed cleanly (a crash): a -wal with frames lay
   * beside it when it was opened (a clean close checkpoints and removes it)
   */
  unclean: boolean
}

/**
 * SQLite reads an image that a crash left in WAL mode (a -wal beside it)
 * through a -shm index file, which a read-only connection creates and never
 * removes: make close() remove it when this connection made it, so that
 * fsck, stats and mount's checks leave nothing beside the image. (Heap
 * memory instead, locking_mode = EXCLUSIVE, is refused on a read-only
 * connection to a WAL database.)
 */
function removeShmOnClose (db: Database.Database, path: string): void {
  const shm = `${path}-shm`
  if (fs.existsSync(shm)) return
  const close = db.close.bind(db)
  db.close = () => {
    const r = close()
    fs.rmSync(shm, { force: true })
    return r
  }
}

/**
 * Open and validate an image. Validation runs on a read-only connection
 * first, so a file that is not a healthy foliofs image is never modified.
 */
/**
 * Close db without SQLite's checkpoint at close (its WAL stays beside the
 * image, recovered at the next open as after a crash): for an image whose
 * WAL sync failed, where the checkpoint would copy frames whose write
 * failed into the database unchecked. SQLite's NO_CKPT_ON_CLOSE, which
 * better-sqlite3 does not expose, set by a small extension
 * (native/foliofs-nockpt.c). Returns false, with a line in the log, when
 * it cannot be set (the extension is not built): the close checkpoints.
 * Misuse: on a sound image (nothing lost, but the WAL is left).
 */
export function noCheckpointOnClose (db: Database.Database): boolean {
  try {
    db.loadExtension(NOCKPT_EXTENSION) // its entry point by its name: sqlite3_foliofsnockpt_init
    return true
  } catch (err) {
    process.stderr.write(`foliofs: ${db.name}: cannot keep the close from checkpointing the failed WAL: ${String(err)}\n`)
    return false
  }
}
const NOCKPT_EXTENSION = nodePath.resolve(__dirname, '..', '..', 'native', 'build', 'foliofs_nockpt.so')

/** a crash left the image unclean: a -wal with frames beside it (a clean close checkpoints and removes it) */
export function uncleanImage (image: string): boolean {
  try { return fs.statSync(`${imageTarget(image)}-wal`).size > 0 } catch { return false }
}

/** bytes as --size takes them, rounded down to whole G (M under 1G) */
function sizeInG (n: number): string {
  return n >= 2 ** 30 ? `${Math.floor(n / 2 ** 30)}G` : `${Math.floor(n / 2 ** 20)}M`
}

/**
 * What a killed mkfs leaves: it claims the image's name first (an empty
 * file), then writes the database, then the data area beside it. Said
 * with the errors those states meet, since they are not damage to data.
 */
const INTERRUPTED_MKFS = 'an interrupted mkfs leaves one: make it again with foliofs mkfs --force'

/** err, naming an interrupted mkfs when the image holds no files (the root directory alone, empty) */
function freshImageHint (db: Database.Database, err: unknown): unknown {
  if (!(err instanceof ImageError) || !/data area .* is (missing|empty)\)$/.test(err.message)) return err
  let fresh = false
  try {
    fresh = db.prepare('SELECT count(*) FROM inodes').pluck().get() === 1 && db.prepare('SELECT count(*) FROM dirents').pluck().get() === 0
  } catch { /* no answer: no hint */ }
  return fresh ? new ImageError(`${err.message.replace(/\)$/, '')}; the image holds no files: ${INTERRUPTED_MKFS.replace('leaves one', 'leaves this')})`, err.exitCode) : err
}

export function openImage (image: string, opts: OpenOptions = {}): OpenImage {
  const path = imageTarget(image)
  let st: fs.Stats
  try {
    st = fs.statSync(path)
  } catch {
    throw new ImageError(`${path}: no such image`, EXIT.NOT_FOUND)
  }
  if (!st.isFile()) throw new ImageError(`${path}: not a regular file`, EXIT.NOT_FOLIOFS)
  const head = Buffer.alloc(SQLITE_HEADER_BYTES)
  let n: number
  try {
    const fd = fs.openSync(path, 'r')
    try { n = fs.readSync(fd, head, 0, head.length, 0) } finally { fs.closeSync(fd) }
  } catch (err) {
    // the host's failure (a bad sector: EIO; permissions; descriptors), not ours
    throw hostFileError(err, path, path) ?? new ImageError(`${path}: no such image`, EXIT.NOT_FOUND)
  }
  if (n === 0) throw new ImageError(`${path}: an empty file, not a foliofs image (${INTERRUPTED_MKFS})`, EXIT.NOT_FOLIOFS)
  if (n < SQLITE_HEADER.length || !head.subarray(0, SQLITE_HEADER.length).equals(SQLITE_HEADER)) {
    throw new ImageError(`${path}: not a foliofs image (not an SQLite database)`, EXIT.NOT_FOLIOFS)
  }
  // SQLite's file format versions (header bytes 18 and 19: 1 legacy, 2 WAL):
  // a newer write version can still be read, a newer read version not at all
  if (n === SQLITE_HEADER_BYTES && head[19] > 2) {
    throw new ImageError(`${path}: written by a newer foliofs or SQLite (file format read version ${head[19]}): this build cannot read it`, EXIT.NOT_FOLIOFS)
  }
  if (n === SQLITE_HEADER_BYTES && head[18] > 2 && (opts.writable ?? !opts.readonly)) {
    throw new ImageError(`${path}: written by a newer foliofs or SQLite (file format write version ${head[18]}): this build can only read it; mount it read-only (-o ro)`, EXIT.NOT_FOLIOFS)
  }

  const cut = truncation(path)
  if (cut) throw new ImageError(`${path}: corrupt image (truncated: ${cut})`, EXIT.CORRUPT)
  const unclean = uncleanImage(path)

  let ro: Database.Database | null = null
  try {
    ro = new Database(path, { readonly: true, fileMustExist: true, timeout: 100 })
    removeShmOnClose(ro, path)
    const sb = readSuperblock(ro, path, opts.upgradable ?? !opts.readonly)
    try { checkDataArea(path, sb.uuid) } catch (err) { throw freshImageHint(ro, err) }
    if (opts.writable ?? !opts.readonly) {
      // an image made elsewhere (or before mkfs checked): blocks past the
      // host's largest file could never be written back
      const dir = nodePath.dirname(dataAreaPath(path))
      const hostMax = hostFileLimitBelow(dir, sb.capacityBlocks * BLOCK_SIZE)
      if (hostMax !== null) {
        throw new ImageError(`${path}: its capacity (${sizeInG(sb.capacityBlocks * BLOCK_SIZE)}) is more than ${fileLimitHolder(dir, hostMax)} allows in one file (${sizeInG(hostMax)}): refused read-write, as data placed past that could never be written; mount it read-only (-o ro), or move the image and ${dataAreaPath(path)} to a filesystem with larger files (XFS, btrfs)`, EXIT.MOUNT_FAILED)
      }
    }
    if (opts.check !== false) {
      const { tables: problems, free } = mountProblems(ro)
      if (problems.length) {
        // one line for the user; every table's first problem in the log (our stderr)
        for (const p of problems) process.stderr.write(`foliofs: ${path}: table '${p.table}': ${p.count} problem(s), first: ${p.first}\n`)
        throw new ImageError(`${path}: corrupt image (${describeProblems(problems.slice(0, 1))}${problems.length > 1 ? `; ${problems.length - 1} more damaged table(s)` : ''}); run foliofs fsck`, EXIT.CORRUPT)
      }
      if (free && (opts.writable ?? !opts.readonly)) throw refusedReadWrite(path, `SQLite's free page list: ${free.first}`, 'foliofs fsck --repair')
    }
    opts.validate?.(ro, sb)
    if (opts.readonly) return { db: ro, sb, path, readonly: true, unclean }
    ro.close()
    ro = null
    const db = new Database(path, { fileMustExist: true, timeout: 100 })
    try {
      // The SQLite settings of a read-write mount, and what each buys:
      // - locking_mode EXCLUSIVE: one mount per image (the lock is taken
      //   below), and the WAL index lives in heap memory (no -shm mmap).
      // - journal_mode WAL: a commit appends its pages to the WAL instead
      //   of rewriting the database and a rollback journal.
      // - synchronous NORMAL: no fsync at commit; durability comes from
      //   FileData.syncCommits (an fdatasync of the WAL on the thread pool
      //   at fsync/syncfs) and from checkpoints. OFF would also drop the
      //   checkpoints' fsyncs (66 -> 30 us a small commit here) and with
      //   them the ordering the durability contract needs.
      // - cache_size 64 MiB: the metadata of a few hundred thousand inodes
      //   and dirents stays in memory; lookups never read the file.
      // - no mmap_size: with the whole working set in that cache, mmap
      //   would only save copies of pages already cached (not measured).
      // - group commit and one transaction wrapper per connection:
      //   src/sqltx.ts (a create's CPU 100 -> 66 us).
      // - temp_store MEMORY: a savepoint's statement journal (the pages it
      //   changes, kept to roll it back) lives in memory, not in a temp file
      //   written with a syscall per page.
      db.pragma('locking_mode = EXCLUSIVE')
      db.pragma('temp_store = MEMORY')
      db.pragma('journal_mode = WAL')
      db.pragma('synchronous = NORMAL')
      db.pragma('cache_size = -65536')
      // a commit that crosses this many WAL pages checkpoints them then and
      // there (writes them to the database, two fsyncs): SQLite's default
      // of 1000 pages took ~25 ms here, longer than a truncate step may
      // block. Fewer pages checkpoint more often, and a page changed again
      // between two checkpoints is written again: at 256 pages, unlinking
      // 20k files spread over 100 directories wrote 3 pages per unlink
      // (1.35 in one directory, whose pages they share) and ran ~15% slower
      // than at 512 (medians of 3, same run); 512 and 1024 measured alike.
      db.pragma(`wal_autocheckpoint = ${WAL_AUTOCHECKPOINT}`)
      // take the exclusive lock now: a second mount of the same image fails here
      db.prepare('BEGIN IMMEDIATE').run()
      db.prepare('COMMIT').run()
      if (sb.version !== FORMAT_VERSION) {
        const from = sb.version
        upgradeImage(db, sb)
        process.stderr.write(`foliofs: ${path}: upgraded from format version ${from} to ${FORMAT_VERSION}\n`)
      }
    } catch (err) {
      db.close()
      throw err
    }
    return { db, sb, path, readonly: false, unclean }
  } catch (err) {
    let e = err
    // SQLite says only "malformed": name the damaged table (one line)
    if (ro && !(err instanceof ImageError) && String((err as { code?: string }).code).startsWith('SQLITE_CORRUPT')) {
      try {
        const problems = tableProblems(ro, true)
        if (problems.length) e = new ImageError(`${path}: corrupt image (${describeProblems(problems.slice(0, 1))})`, EXIT.CORRUPT)
      } catch { /* keep SQLite's own error */ }
    }
    if (ro) ro.close()
    if (e instanceof ImageError) throw e
    throw sqliteError(path, e)
  }
}
