// FolioFs: the filesystem proper, independent of FUSE.
//
// Namespace and attribute operations are synchronous and run inside one
// SQLite transaction (tx()), so a crash leaves the last committed state.
// Operations on file data (read, write, truncate, freeing an inode) are
// async B-tree transactions: the B-tree commit is their SQLite transaction
// and the inode update runs in its hook, re-reading the inode there (never
// trusting a value read before an await). They never run inside tx().
//
// File data goes through the daemon's page cache (src/pagecache/): writes
// only dirty folios, writeback allocates and commits later (delalloc).
// The size and times a write produces are kept in memory (`attrs`) until
// writeback commits them; the on-disk size only ever covers data that was
// written back (like ext4's i_disksize), so a crash never exposes blocks
// that were never written. stat() sees the in-memory values.
//
// Writes and truncates of one inode are serialized (withInode, like the
// VFS's i_rwsem). Truncation and freeing run in bounded steps; an inode
// being truncated or freed is recorded in `orphans` first, and recovery at
// the next mount finishes the job (nlink 0: free it; else: cut everything
// past its size), as ext4's orphan list does.
import type Database from 'better-sqlite3'
import { fsErr, NAME_MAX, PATH_MAX, XATTR_NAME_MAX, XATTR_SIZE_MAX } from './errno'
import { BLOCK_SIZE, ROOT_INO, noCheckpointOnClose, nowTime, type OpenImage, type Superblock } from './image'
import { FileData, type TruncateStep } from './filedata'
import { Reaper } from './reaper'
import { nameFromDb, nameToDb } from './names'
import { batchStats, flushBatch, inBatch, inBatchMarked, onBatchFailure, onRollback, type WriteMark } from './sqltx'
import { DataArea, dataAreaPath } from './dataarea'
import { EXIT, ImageError, refusedReadWrite } from './imageerror'
import { BtreeError, type TreeOptions } from './btree'
import { PageCache } from './pagecache/cache'
import { BufferedIO } from './pagecache/io'
import { Writeback } from './pagecache/writeback'
import { DataJournal, JOURNAL_MAX_BLOCKS } from './journal'
import type { PlanSink } from './readplan'
import { decodeRequest, encodeBadFlags, encodeReply, Fiemap, FIEMAP_FLAG_SYNC, FIEMAP_FLAGS_COMPAT, FIEMAP_MAX_PER_CALL } from './fiemap'
import { ACL_ACCESS, ACL_DEFAULT, aclModeBits, encodeAcl, inherit, isAclName, modeOnly, parseAcl, withMode } from './acl'
import { decodeIflags, encodeIflags, FS_APPEND_FL, FS_IMMUTABLE_FL, FS_NOATIME_FL, IFLAGS_XATTR, isFrozen, PRIVILEGED_IFLAGS, SUPPORTED_IFLAGS } from './iflags'

export interface FsOptions extends TreeOptions {
  /** page cache size in bytes (default 256 MiB) */
  cacheBytes?: number
  /** bytes of streaming-read chunks at most, out of the cache's (default a quarter of it, at most 64 MiB; 0: sequential reads go through folios) */
  streamBytes?: number
  /** -o sync: every write is written back and made durable before it returns */
  syncWrites?: boolean
  /** fault injection: writeback holds a run's folio locks this long after its I/O */
  writebackDelayMs?: number
  /** dirty data older than this is written back by the background timer (default 5 s) */
  dirtyExpireMs?: number
  /** memory pressure probe (tests); default: /proc/meminfo */
  memoryLow?: () => boolean
  /** punch freed blocks out of the data area (-o discard, the default; -o nodiscard) */
  discard?: boolean
  /** tests: the clock truncate and unlink steps are timed by (FileDataOptions.stepClock) */
  stepClock?: () => number
}

export const DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
/** how often frees waiting for a durable commit are made durable (makeFreesDurable) */
const FREES_DURABLE_MS = 5000
/**
 * a read-write mount checks the extent tree against the free-space map
 * (refuseMappedFree) when the tree has at most this many nodes: ~400,000
 * extents, ~0.2 s here (50,000 extents in 398 nodes took 23 ms)
 */
const MOUNT_CHECK_NODES = 3200

/** what a write changed that is not on disk yet */
interface MemAttrs { size: number, mtime_s: number, mtime_ns: number, ctime_s: number, ctime_ns: number }

export const S_IFMT = 0o170000
export const S_IFDIR = 0o040000
export const S_IFREG = 0o100000
export const S_IFLNK = 0o120000
const UTIME_NOW = (1 << 30) - 1
const UTIME_OMIT = (1 << 30) - 2
/** setxattr flags (linux/xattr.h) */
export const XATTR_CREATE = 1
const O_ACCMODE = 3
const O_APPEND = 0o2000
const O_NOATIME = 0o1000000
export const XATTR_REPLACE = 2
const RELATIME_SEC = 24 * 3600
export const MAX_FILE_SIZE = 2 ** 52 // bytes; keeps block numbers exact in doubles
export const SEEK_DATA = 3
export const SEEK_HOLE = 4
export const FALLOC_FL_KEEP_SIZE = 0x01
export const FALLOC_FL_PUNCH_HOLE = 0x02
export const FALLOC_FL_ZERO_RANGE = 0x10
/** copy_file_range moves data through the page cache in pieces of this size */
const COPY_CHUNK = 1024 * 1024

export interface Time { sec: number, nsec: number }
export type AtimeMode = 'relatime' | 'strictatime' | 'noatime'

export interface Inode {
  ino: number
  mode: number
  uid: number
  gid: number
  nlink: number
  size: number
  blocks: number
  rdev: number
  parent: number
  atime_s: number, atime_ns: number
  mtime_s: number, mtime_ns: number
  ctime_s: number, ctime_ns: number
  target: Buffer | null
}

/** a directory listing being read (openListing) */
export interface Listing {
  /** '.', '..', then the names read so far, in order: position k is offset k */
  names: string[]
  /** the dirents.name of the last name read (null: none yet) */
  after: string | Buffer | null
  /** every name has been read */
  done: boolean
}

export interface Stat {
  ino: number
  mode: number
  nlink: number
  uid: number
  gid: number
  rdev: number
  size: number
  blksize: number
  blocks: number
  atime: Time
  mtime: Time
  ctime: Time
}

/** the caller; umask applies to a new inode unless its directory has a default ACL (acl.ts) */
export interface Creds { uid: number, gid: number, umask?: number }

/**
 * Who changes a file's data or its access ACL (killPriv, setAcl).
 * inGroup answers for the caller's supplementary groups too (the FUSE
 * request carries only the fsgid); fsetid, whether it has CAP_FSETID
 * (without it, uid 0 stands for it). Both read /proc: call them only when
 * the file has a setuid or setgid bit to lose.
 */
export interface Writer { uid: number, gid: number, inGroup?: (gid: number) => boolean, fsetid?: () => boolean }

/** the caller is in group gid (its fsgid or a supplementary group) */
const inGroupOf = (who: Writer, gid: number): boolean => who.gid === gid || (who.inGroup?.(gid) ?? false)
/** the caller has CAP_FSETID */
const hasFsetid = (who: Writer): boolean => who.fsetid?.() ?? who.uid === 0

export interface StatFs {
  bsize: number, frsize: number, blocks: number, bfree: number, bavail: number,
  files: number, ffree: number, favail: number, fsid: number, flag: number, namemax: number
}

interface Handle { ino: number, flags: number, dir: boolean }

/** the handle was opened O_APPEND: its writes go to the file's end (write()) */
export const appends = (h: Handle): boolean => (h.flags & O_APPEND) !== 0

/**
 * the handle was opened O_NOATIME: reads through it leave atime alone
 * (read(), openListing(); tar --atime-preserve=system, rsync
 * --open-noatime). The kernel checked the caller may (the owner, or
 * CAP_FOWNER) before it sent the open. An O_NOATIME set later with
 * fcntl(F_SETFL) never reaches the daemon.
 */
export const noAtime = (h: Handle): boolean => (h.flags & O_NOATIME) !== 0

const isDir = (mode: number): boolean => (mode & S_IFMT) === S_IFDIR
const isRegular = (mode: number): boolean => (mode & S_IFMT) === S_IFREG

/** renameat2 flags */
export const RENAME_NOREPLACE = 1
export const RENAME_EXCHANGE = 2

/**
 * Handles released lately, still answered (by inode) for a while: the
 * binding may have chosen a handle to name an unlinked open file in a
 * GETATTR just before that handle's RELEASE was served (see the binding's
 * foliofs_io). fh numbers are never reused, so a late answer is for the
 * right inode.
 */
const RELEASED_KEPT = 1024

/** inode flags cached at most (iflags) */
const IFLAGS_CACHE_MAX = 65536

/**
 * Split '/a/b/c' into its parent path and last name, validating the name's
 * length. A whole path has no limit here: the kernel holds each caller's
 * path argument to PATH_MAX, but libfuse builds these from the mount root,
 * and a file deep below it (reached by chdir, or by renaming an ancestor to
 * a longer name) has a longer one. Refusing those (ENAMETOOLONG past 4096
 * bytes) made such files unreachable: no lookup, no rm -rf.
 */
export function splitPath (path: string): { parent: string, name: string } {
  const i = path.lastIndexOf('/')
  const name = path.slice(i + 1)
  checkName(name)
  return { parent: i <= 0 ? '/' : path.slice(0, i), name }
}

/** the columns of an inode row, in the order rowToInode takes them */
const INODE_COLUMNS = ['ino', 'mode', 'uid', 'gid', 'nlink', 'size', 'blocks', 'rdev', 'parent', 'atime_s', 'atime_ns', 'mtime_s', 'mtime_ns', 'ctime_s', 'ctime_ns', 'target'] as const
type InodeRaw = [number, number, number, number, number, number, number, number, number, number, number, number, number, number, number, Buffer | null]
const rowToInode = (r: InodeRaw): Inode => ({
  ino: r[0], mode: r[1], uid: r[2], gid: r[3], nlink: r[4], size: r[5], blocks: r[6], rdev: r[7], parent: r[8],
  atime_s: r[9], atime_ns: r[10], mtime_s: r[11], mtime_ns: r[12], ctime_s: r[13], ctime_ns: r[14], target: r[15]
})

/** inode rows the row cache holds at most (then the oldest go) */
const INODE_ROWS_MAX = 1 << 16

/** names the dentry cache holds at most (then it starts again empty) */
const DENTRY_CACHE_MAX = 1 << 18
/** names a directory listing reads from the image at a time, at least (openListing) */
const LISTING_CHUNK = 512
/** a dentry cache value: the name does not exist (no inode is 0) */
const NO_ENTRY = 0
const dentryKey = (parent: number, name: string): string => parent + '/' + name

export function checkName (name: string): void {
  if (name === '' || name === '.' || name === '..') throw fsErr('EINVAL', `bad name '${name}'`)
  if (name.length > NAME_MAX) throw fsErr('ENAMETOOLONG', `${name.slice(0, 32)}...`)
}

/** a namespace with nothing after it ("user.") names no attribute: EINVAL, as the kernel's xattr handlers answer for ext4 */
function checkXattrSuffix (name: string): void {
  if (/^(user|trusted|security|system)\.$/.test(name)) throw fsErr('EINVAL', `xattr name ${name}`)
}

export class FolioFs {
  readonly db: Database.Database
  readonly sb: Superblock
  /** the image connection is read-only (-o ro from the start): never writable */
  private readonly imageReadonly: boolean
  /** serving read-only: the image was opened so, or a remount made it (setReadonly) */
  private ro: boolean
  get readonly (): boolean { return this.ro }
  private readonly handles = new Map<number, Handle>()
  private readonly openCount = new Map<number, number>()
  private readonly released = new Map<number, Handle>()
  /** inode flags (iflags.ts) of inodes looked at, by ino; absent: not read yet */
  private readonly iflagsCache = new Map<number, number>()
  /**
   * Whether any inode may have flags, or a default ACL: while not, iflags()
   * and createNode skip their lookups (one scan of the xattrs table at
   * mount; set, never cleared, when one is stored).
   */
  private get anyIflags (): boolean { return this.xattrNames.has(IFLAGS_XATTR) }
  private get anyDefaultAcl (): boolean { return this.xattrNames.has(ACL_DEFAULT) }
  /** the xattr names some inode has, or had since the mount (a superset: removing one does not shrink it) */
  private readonly xattrNames: Set<string>
  /**
   * Inode row cache: ino -> its row as stored (see row()). Every statement
   * that writes an inode row is wrapped (prepare: `writesInode`) to update
   * that inode's entry the same way (or to drop it: a delete, a statement
   * that changed no row), and a rollback clears it all (sqltx onRollback:
   * rows read inside a transaction may be what it undid); so an entry is
   * always the row SQLite would return. Rows are never handed out: row()
   * gives copies.
   * A dropped entry is set to null, not deleted: V8's Map keeps a deleted
   * entry in its bucket until the next rehash, so deleting and re-adding
   * the same key (a directory's row, at every create in it) grew that
   * bucket's chain by one each time, and a create in a directory cost
   * 40 us at 10k cached rows and 250 us at 40k.
   */
  private readonly inodeRows = new Map<number, Inode | null>()
  /** dentry cache: dentryKey(parent, name) -> ino or NO_ENTRY (see lookupName) */
  private readonly dentries = new Map<string, number>()
  /** damaged inodes logged already (danglingStat, freeIfUnused) */
  private readonly danglingLogged = new Set<number>()
  private nextFh = 1
  /** per-inode serialization of data operations (write, truncate) */
  private readonly inodeLocks = new Map<number, Promise<void>>()
  /** free blocks held by writes between their space check and their dirtying (reserveSpace) */
  private spaceHeld = 0
  /** data changes running (write, truncate, fallocate, copy_file_range: changing()), and close()'s wait for them */
  private changesRunning = 0
  private changesIdle: Array<() => void> = []
  /**
   * atime on reads that reach the daemon: relatime (the default: when atime
   * is not newer than mtime/ctime, or a day old), strictatime (every read),
   * noatime (never). Reads the kernel serves from its own page cache never
   * reach the daemon.
   */
  atime: AtimeMode = 'relatime'
  /** file data: extent B-tree + data area */
  readonly data: FileData
  readonly cache: PageCache
  readonly io: BufferedIO
  readonly writeback: Writeback
  readonly fiemap: Fiemap
  /** small fsyncs' blocks, durable in SQLite until written back (journal.ts) */
  readonly journal: DataJournal
  private readonly syncWrites: boolean
  /** in-memory size and times of inodes with data not written back */
  private readonly attrs = new Map<number, MemAttrs>()
  /** frees orphans in the background, many per commit (reaper.ts) */
  readonly reaper = new Reaper(inos => this.freeOrphans(inos), (err, inos) => {
    process.stderr.write(`foliofs: freeing ${inos.length} deleted file(s) failed; their space comes back at the next mount: ${String(err)}\n`)
  })

  readonly counters = { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, fsyncs: 0, commits: 0, fallocates: 0, copies: 0 }

  private readonly q: ReturnType<FolioFs['prepare']>
  /** a group commit failed, or writes after an early answer: operations answered were lost; nothing more is written */
  private batchFailure: unknown = null
  /**
   * The number the next created inode gets (read at mount; one writer per
   * image). Chosen before the row is inserted, so that a create can be
   * answered before its writes (createNode); a create rolled back leaves
   * its number unused, as AUTOINCREMENT's own would.
   */
  private nextIno = 0
  /**
   * Called with an xattr name before any xattr of that name is stored (in
   * the storing transaction, before its commit): the FUSE layer keeps a set
   * of names no inode has, answered ENODATA without asking the daemon.
   */
  onXattrName: (name: string) => void = () => {}
  /**
   * Called after a write or truncate dropped setuid/setgid of ino
   * (killPriv): the kernel inode that sent it caches the old mode.
   */
  onPrivsDropped: (ino: number) => void = () => {}

  constructor (img: OpenImage, opts: FsOptions = {}) {
    this.db = img.db
    this.sb = img.sb
    this.imageReadonly = img.readonly
    this.ro = img.readonly
    this.q = this.prepare()
    onRollback(this.db, () => {
      this.dentries.clear() // names it changed are back as they were
      this.iflagsCache.clear() // and so are inode flags it set
      this.inodeRows.clear() // and inode rows
      this.orphanSet = null // and the orphans table
    })
    this.xattrNames = new Set((this.q.xattrNames.all() as Array<string | Buffer>).map(nameFromDb)) // the one scan of the xattrs table
    this.nextIno = this.q.nextIno.get() as number
    const area = DataArea.open(img.path, img.sb.uuid, img.readonly)
    try {
      this.data = new FileData(this.db, area, { ...opts, totalBlocks: img.sb.capacityBlocks })
    } catch (e) {
      area.close()
      if (!(e instanceof BtreeError)) throw e
      throw new ImageError(`${img.path}: corrupt image (extent tree: ${e.message}); see foliofs fsck`, EXIT.CORRUPT)
    }
    this.refuseShortArea(img.path)
    this.refuseMappedFree(img.path)
    // before recovery frees anything (its frees wait for their commit to be durable)
    if (img.unclean && !this.readonly) this.data.redoDiscards()
    const cacheBytes = opts.cacheBytes ?? DEFAULT_CACHE_BYTES
    this.cache = new PageCache(cacheBytes)
    this.io = new BufferedIO(this.cache, this.data, ino => this.sizeOf(ino), opts.streamBytes ?? Math.min(cacheBytes / 4, 64 * 1024 * 1024))
    this.journal = new DataJournal(this.db, img.sb.version >= 5)
    this.writeback = new Writeback(this.cache, this.data, (ino, start, end, added, freed) => this.runCommitted(ino, start, end, added, freed), {
      dirtyBackground: Math.floor(cacheBytes / 4),
      dirtyLimit: Math.floor(cacheBytes / 2),
      expireMs: opts.dirtyExpireMs ?? 5000,
      delayMs: opts.writebackDelayMs ?? 0,
      memoryLow: opts.memoryLow
    })
    this.syncWrites = opts.syncWrites ?? false
    onBatchFailure(this.db, err => {
      this.batchFailure = err
      process.stderr.write(`foliofs: metadata commit failed, the last few ms of metadata changes are lost; refusing further changes: ${String(err)}\n`)
    })
    this.fiemap = new Fiemap(this.data, this.cache)
    if (!this.readonly) this.recoverOrphans()
    this.replayJournal()
    if (!this.readonly) this.writeback.start()
    this.freesTimer = setInterval(() => { this.makeFreesDurable() }, FREES_DURABLE_MS)
    this.freesTimer.unref()
  }

  /** makeFreesDurable's timer */
  private freesTimer: NodeJS.Timeout | null = null
  private freesSyncing = false

  /**
   * Blocks freed by deletes, truncates and punches become allocatable, and
   * are punched out of the data area (discard), once their commit is
   * durable: at the next fsync, syncfs or checkpoint. An idle mount had
   * none, so a deleted file's space stayed allocated on the host for as
   * long as nothing else happened (40 s and more; ext4 with -o discard
   * gives it back within its 5 s commit). Every FREES_DURABLE_MS, frees
   * waiting for that are made durable (one WAL fdatasync, off the main
   * thread). Errors are left to the next sync that someone waits for.
   */
  private makeFreesDurable (): void {
    if (this.ro || this.freesSyncing || this.data.tree.undurableFreeCommits() === 0) return
    this.freesSyncing = true
    this.data.syncCommits().catch(() => { /* the next sync someone waits for meets it again */ }).finally(() => { this.freesSyncing = false })
  }

  private prepare () {
    const db = this.db
    const rows = this.inodeRows
    /**
     * A statement writing the row of the inode given as its last parameter.
     * A cached copy of that row is updated by `apply` (which must do to it
     * exactly what the SQL does) once the statement succeeded, or dropped
     * (set to null, not deleted: see inodeRows).
     */
    const writesInode = (stmt: Database.Statement, apply?: (row: Inode, args: number[]) => void): { run: (...args: unknown[]) => Database.RunResult } => ({
      run: (...args: unknown[]) => {
        let ok = false
        try {
          const r = stmt.run(...args)
          ok = r.changes === 1
          return r
        } finally {
          const ino = args[args.length - 1] as number
          const cached = rows.get(ino)
          if (cached) {
            if (ok && apply) apply(cached, args as number[])
            else rows.set(ino, null)
          }
        }
      }
    })
    return {
      // raw: better-sqlite3 builds a row object key by key (10 us for this one); rowToInode builds it in one go
      getInode: db.prepare(`SELECT ${INODE_COLUMNS.join(', ')} FROM inodes WHERE ino = ?`).raw(),
      lookup: db.prepare('SELECT ino FROM dirents WHERE parent = ? AND name = ?').pluck(),
      nameOfIno: db.prepare('SELECT 1 FROM dirents WHERE ino = ? LIMIT 1').pluck(),
      listDirFirst: db.prepare('SELECT name, ino FROM dirents WHERE parent = ? ORDER BY name LIMIT ?'),
      listDirAfter: db.prepare('SELECT name, ino FROM dirents WHERE parent = ? AND name > ? ORDER BY name LIMIT ?'),
      dirHasEntries: db.prepare('SELECT 1 FROM dirents WHERE parent = ? LIMIT 1').pluck(),
      insDirent: db.prepare('INSERT INTO dirents (parent, name, ino) VALUES (?, ?, ?)'),
      delDirent: db.prepare('DELETE FROM dirents WHERE parent = ? AND name = ?'),
      // positional parameters: binding named ones looks each name up (~1 us a create)
      insInode: db.prepare(`INSERT INTO inodes (ino, mode, uid, gid, nlink, size, rdev, parent, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns, target)
                            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
      // the next inode number: above every one in use and every one ever
      // used (AUTOINCREMENT's sqlite_sequence: numbers are never reused)
      nextIno: db.prepare(`SELECT 1 + max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'inodes'), 0),
                                          coalesce((SELECT max(ino) FROM inodes), 0))`).pluck(),
      delInode: writesInode(db.prepare('DELETE FROM inodes WHERE ino = ?')),
      // the others keep a cached row up to date (a create, rename or unlink
      // then never reads a row back); each apply does what its SQL does
      setNlink: writesInode(db.prepare('UPDATE inodes SET nlink = ?, ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
        (r, [n, cs, cns]) => { r.nlink = n; r.ctime_s = cs; r.ctime_ns = cns }),
      addNlink: writesInode(db.prepare('UPDATE inodes SET nlink = nlink + ? WHERE ino = ?'), (r, [d]) => { r.nlink += d }),
      touchMC: writesInode(db.prepare('UPDATE inodes SET mtime_s = ?, mtime_ns = ?, ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
        (r, [ms, mns, cs, cns]) => { r.mtime_s = ms; r.mtime_ns = mns; r.ctime_s = cs; r.ctime_ns = cns }),
      touchC: writesInode(db.prepare('UPDATE inodes SET ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
        (r, [cs, cns]) => { r.ctime_s = cs; r.ctime_ns = cns }),
      setAtime: writesInode(db.prepare('UPDATE inodes SET atime_s = ?, atime_ns = ? WHERE ino = ?'),
        (r, [as, ans]) => { r.atime_s = as; r.atime_ns = ans }),
      setTimes: writesInode(db.prepare('UPDATE inodes SET atime_s = ?, atime_ns = ?, mtime_s = ?, mtime_ns = ?, ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
        (r, [as, ans, ms, mns, cs, cns]) => { r.atime_s = as; r.atime_ns = ans; r.mtime_s = ms; r.mtime_ns = mns; r.ctime_s = cs; r.ctime_ns = cns }),
      setMode: writesInode(db.prepare('UPDATE inodes SET mode = ?, ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
        (r, [m, cs, cns]) => { r.mode = m; r.ctime_s = cs; r.ctime_ns = cns }),
      setOwner: writesInode(db.prepare('UPDATE inodes SET uid = ?, gid = ?, mode = ?, ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
        (r, [u, g, m, cs, cns]) => { r.uid = u; r.gid = g; r.mode = m; r.ctime_s = cs; r.ctime_ns = cns }),
      setParent: writesInode(db.prepare('UPDATE inodes SET parent = ? WHERE ino = ?'), (r, [p]) => { r.parent = p }),
      setSize: writesInode(db.prepare('UPDATE inodes SET size = ?, blocks = blocks + ?, mtime_s = ?, mtime_ns = ?, ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
        (r, [sz, db, ms, mns, cs, cns]) => { r.size = sz; r.blocks += db; r.mtime_s = ms; r.mtime_ns = mns; r.ctime_s = cs; r.ctime_ns = cns }),
      addBlocks: writesInode(db.prepare('UPDATE inodes SET blocks = blocks + ? WHERE ino = ?'), (r, [d]) => { r.blocks += d }),
      delXattrs: db.prepare('DELETE FROM xattrs WHERE ino = ?'),
      getXattr: db.prepare('SELECT value FROM xattrs WHERE ino = ? AND name = ?').pluck(),
      putXattr: db.prepare('INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?, ?, ?)'),
      delXattr: db.prepare('DELETE FROM xattrs WHERE ino = ? AND name = ?'),
      listXattr: db.prepare('SELECT name FROM xattrs WHERE ino = ? ORDER BY name').pluck(),
      xattrNames: db.prepare('SELECT DISTINCT name FROM xattrs').pluck(),
      namesOf: db.prepare('SELECT parent, name FROM dirents WHERE ino = ?'),
      nlinkOf: db.prepare('SELECT nlink FROM inodes WHERE ino = ?').pluck(),
      addOrphan: db.prepare('INSERT OR IGNORE INTO orphans (ino) VALUES (?)'),
      delOrphan: db.prepare('DELETE FROM orphans WHERE ino = ?'),
      allOrphans: db.prepare('SELECT ino FROM orphans').pluck(),
      countInodes: db.prepare('SELECT count(*) FROM inodes').pluck()
    }
  }

  /**
   * Run fn as one all-or-nothing metadata operation: a savepoint in the
   * open group commit (sqltx.ts: committed within a few ms, and before any
   * fsync). fn must not touch file data (B-tree commits refuse to nest).
   */
  tx<T> (fn: () => T): T {
    this.checkWritable()
    const r = inBatch(this.db, fn) // a failure rolls back: onRollback clears the caches (constructor)
    this.counters.commits++
    return r
  }

  /**
   * tx for an operation whose checks all come before its writes: it calls
   * mark() between them (sqltx inBatchMarked): mark('answered') when it
   * answers its caller early, the savepoint that tx opens up front saved;
   * mark('guarded') otherwise. Misuse: a write before mark().
   */
  private txMarked<T> (fn: (mark: WriteMark) => T): T {
    this.checkWritable()
    const r = inBatchMarked(this.db, fn)
    this.counters.commits++
    return r
  }

  /** metadata may be written: not read-only, no damaged extent tree (never write to an image known corrupt), no failed group commit */
  private checkWritable (): void {
    if (this.readonly) throw fsErr('EROFS')
    if (this.data.damaged) throw fsErr('EROFS', `extent tree damaged: ${this.data.damaged}`)
    this.checkBatchCommitted()
  }

  /** no group commit failed (EIO from then on) */
  private checkBatchCommitted (): void {
    if (this.batchFailure) throw fsErr('EIO', `metadata commit failed earlier: ${String(this.batchFailure)}`)
    this.data.checkWal()
  }

  /**
   * An operation answered early (createNode's `answer`) then failed in its
   * writes: what the caller was told is not what the image holds. Treated
   * as a failed group commit: logged, and nothing more is written (EIO).
   * Only a failing SQLite write gets here (the host's disk full or
   * failing); every check that can refuse an operation runs before.
   */
  failedAfterAnswer (op: string, err: unknown): void {
    this.batchFailure ??= err
    process.stderr.write(`foliofs: ${op} failed after it was answered; refusing further changes: ${String(err)}\n`)
  }

  /** Run fn with ino's data operations serialized (cf. i_rwsem). */
  /**
   * Run a data change (write, truncate, fallocate, copy_file_range),
   * counted from the moment it is let in: none is let in once the
   * filesystem is read-only (EROFS), and close() waits for those let in
   * before (changesSettled) before its last writeback. A change that only
   * checked readonly could pass the check, wait (the dirty-data throttle,
   * the inode lock) past close's writeback, and be answered with its data
   * left dirty in a cache about to go (an acknowledged write lost).
   */
  private async changing<T> (fn: () => Promise<T>): Promise<T> {
    if (this.readonly) throw fsErr('EROFS')
    this.changesRunning++
    try {
      return await fn()
    } finally {
      if (--this.changesRunning === 0) for (const w of this.changesIdle.splice(0)) w()
    }
  }

  /** resolves once no data change let in by changing() is running */
  private async changesSettled (): Promise<void> {
    if (this.changesRunning === 0) return
    await new Promise<void>(resolve => this.changesIdle.push(resolve))
  }

  private async withInode<T> (ino: number, fn: () => Promise<T>): Promise<T> {
    const prev = this.inodeLocks.get(ino)
    let release!: () => void
    const mine = new Promise<void>(resolve => { release = resolve })
    const tail = prev ? prev.then(() => mine) : mine
    this.inodeLocks.set(ino, tail)
    if (prev) await prev
    try {
      return await fn()
    } finally {
      release()
      if (this.inodeLocks.get(ino) === tail) this.inodeLocks.delete(ino)
    }
  }

  // ---- directory entries: names are byte strings (names.ts); the dirents
  // value is made here and nowhere else, and so is the dentry cache: every
  // name that was looked up (or added, or removed) maps parent/name -> its
  // ino, or NO_ENTRY for a name known not to exist (a create looks its name
  // up twice: the kernel's LOOKUP, then the create's own check). It stays
  // true because these three are the only ways names change; a
  // transaction that fails clears it (its changes were rolled back). ------

  private lookupName (parent: number, name: string): number | undefined {
    const key = dentryKey(parent, name)
    const hit = this.dentries.get(key)
    if (hit !== undefined) return hit === NO_ENTRY ? undefined : hit
    const ino = this.q.lookup.get(parent, nameToDb(name)) as number | undefined
    this.cacheDentry(key, ino ?? NO_ENTRY)
    return ino
  }

  private addName (parent: number, name: string, ino: number): void {
    this.q.insDirent.run(parent, nameToDb(name), ino)
    this.cacheDentry(dentryKey(parent, name), ino)
  }

  private removeName (parent: number, name: string): void {
    this.q.delDirent.run(parent, nameToDb(name))
    const key = dentryKey(parent, name)
    if (this.dentries.has(key)) this.dentries.set(key, NO_ENTRY) // not delete: see inodeRows
  }

  private cacheDentry (key: string, ino: number): void {
    if (this.dentries.size >= DENTRY_CACHE_MAX) this.dentries.clear() // crude, and rare
    this.dentries.set(key, ino)
  }

  /**
   * The one place an xattr is stored: every store goes through
   * onXattrName first. Xattr names are byte strings (names.ts), as file
   * names: stored as TEXT when valid UTF-8, else as a BLOB of their bytes
   * (user.\xff and user.\xfe are two attributes, as on ext4). getXattrRow
   * and delXattrRow look them up the same way.
   */
  private putXattr (ino: number, name: string, value: Buffer): void {
    this.onXattrName(name)
    this.xattrNames.add(name)
    this.q.putXattr.run(ino, nameToDb(name), value)
  }

  private getXattrRow (ino: number, name: string): Buffer | undefined {
    return this.q.getXattr.get(ino, nameToDb(name)) as Buffer | undefined
  }

  /** whether there was one */
  private delXattrRow (ino: number, name: string): boolean {
    return this.q.delXattr.run(ino, nameToDb(name)).changes > 0
  }

  /** the xattr names some inode has, or had since the mount (no scan: kept since the mount's one) */
  xattrNamesInUse (): Set<string> {
    return new Set(this.xattrNames)
  }

  /** the metadata group commit's counters (sqltx.ts) */
  groupCommitStats (): ReturnType<typeof batchStats> {
    return batchStats(this.db)
  }

  /** nlink as stored (0 for an inode that no longer exists) */
  linkCount (ino: number): number {
    return this.storedNlink(ino) ?? 0
  }

  /** nlink as stored, undefined if the inode does not exist (the cached row, else one column: every release asks) */
  private storedNlink (ino: number): number | undefined {
    return this.inodeRows.get(ino)?.nlink ?? this.q.nlinkOf.get(ino) as number | undefined
  }

  /** every path naming ino (its hard links; a directory has one), as byte strings */
  pathsOf (ino: number): string[] {
    const out: string[] = []
    for (const r of this.q.namesOf.all(ino) as Array<{ parent: number, name: string | Buffer }>) {
      const p = this.dirPath(r.parent)
      if (p !== null) out.push((p === '/' ? '' : p) + '/' + nameFromDb(r.name))
    }
    return out
  }

  /** the path of directory ino, walking up its parents; null if it has none (removed) */
  private dirPath (ino: number): string | null {
    const parts: string[] = []
    for (let d = ino, depth = 0; d !== ROOT_INO; depth++) {
      const row = (this.q.namesOf.all(d) as Array<{ parent: number, name: string | Buffer }>)[0]
      if (!row || depth > PATH_MAX) return null
      parts.push(nameFromDb(row.name))
      d = row.parent
    }
    return '/' + parts.reverse().join('/')
  }

  // ---- inode helpers -------------------------------------------------

  /** ino's row as stored, a copy (from the row cache, or read into it), or undefined if there is none */
  private row (ino: number): Inode | undefined {
    let r = this.inodeRows.get(ino)
    if (r == null) {
      const raw = this.q.getInode.get(ino) as InodeRaw | undefined
      if (raw === undefined) return undefined
      r = rowToInode(raw)
      this.cacheRow(r)
    }
    return { ...r }
  }

  /** put r (an inode row exactly as stored) into the row cache */
  private cacheRow (r: Inode): void {
    if (this.inodeRows.size >= INODE_ROWS_MAX && !this.inodeRows.has(r.ino)) this.inodeRows.delete(this.inodeRows.keys().next().value as number) // the oldest read
    this.inodeRows.set(r.ino, r)
  }

  /** the inode as users see it: its row, with the size and times of data not written back yet */
  inode (ino: number): Inode {
    const row = this.row(ino)
    if (!row) throw fsErr('ENOENT', `inode ${ino}`)
    return this.withMemAttrs(row)
  }

  /** row (a copy: changed in place) with the size and times of data not written back yet */
  private withMemAttrs (row: Inode): Inode {
    const a = this.attrs.get(row.ino)
    if (!a) return row
    const ctimeLater = a.ctime_s > row.ctime_s || (a.ctime_s === row.ctime_s && a.ctime_ns > row.ctime_ns)
    row.size = a.size
    row.mtime_s = a.mtime_s
    row.mtime_ns = a.mtime_ns
    if (ctimeLater) {
      row.ctime_s = a.ctime_s
      row.ctime_ns = a.ctime_ns
    }
    return row
  }

  /** the size now (page cache: never trust a size read before an await) */
  private sizeOf (ino: number): number {
    const a = this.attrs.get(ino)
    if (a) return a.size
    return this.row(ino)?.size ?? 0
  }

  /**
   * Writeback committed blocks up to endBlock of ino (inside its commit):
   * the on-disk size advances over written data only, blocks and times
   * follow. Once nothing of the inode is dirty any more, its in-memory
   * attributes are all on disk: they are dropped once the commit is done
   * (the returned function), never inside it: a commit that rolls back
   * would take the size with it.
   */
  private runCommitted (ino: number, startBlock: number, endBlock: number, added: number, freed: number): (() => void) | undefined {
    const row = this.row(ino)
    if (!row) throw new Error(`writeback of inode ${ino}, which no longer exists`)
    this.journal.forget(ino, startBlock, endBlock) // the mapping holds these blocks now
    const a = this.attrs.get(ino)
    const size = Math.max(row.size, Math.min(a?.size ?? row.size, endBlock * BLOCK_SIZE))
    this.storeSize(ino, size, added - freed)
    if (!a) return undefined
    return () => {
      const now = this.attrs.get(ino)
      if (now === a && a.size === size && this.cache.dirtyCount(ino) === 0) this.attrs.delete(ino)
    }
  }

  /** record what a data change did to ino (size, times) in memory: stat sees it, writeback commits it */
  private touchMem (ino: number, size: number, t: Time): void {
    const v = { size, mtime_s: t.sec, mtime_ns: t.nsec, ctime_s: t.sec, ctime_ns: t.nsec }
    const a = this.attrs.get(ino)
    if (a) Object.assign(a, v)
    else this.attrs.set(ino, v)
  }

  /**
   * Make ino's data durable: journal a few dirty blocks, or write them all
   * back (ordered: data first); then one WAL sync. With handOff a
   * journaled fsync makes no sync: it returns the WAL's descriptor, which
   * its caller must fdatasync (fsyncHandOff); null otherwise.
   */
  private async syncInode (ino: number, handOff = false): Promise<number | null> {
    const journaled = await this.commitData(ino)
    if (handOff && journaled) {
      const fd = this.data.commitsToSync(true)
      if (fd !== null) this.journal.stats.handedOff++
      return fd
    }
    await this.data.syncCommits()
    return null
  }

  /**
   * ino's dirty data and size committed (journaled or written back, in
   * that order before the commits: ordered), not yet synced: the next WAL
   * sync makes them durable, with whatever commits after them. Says
   * whether it journaled.
   */
  private async commitData (ino: number): Promise<boolean> {
    const promised = this.sizeOf(ino)
    const journaled = await this.journalSync(ino)
    if (!journaled) await this.writeback.inode(ino)
    this.settleSize(ino, promised)
    return journaled
  }

  /**
   * A rename over an existing file commits the data of the file it moves
   * first (ext4's auto_da_alloc, btrfs does it too): the classic save (write
   * a new file, rename it over the old one, no fsync) then never leaves the
   * name with an empty file after a crash that kept the rename, only the old
   * contents or the new. Outside any transaction; a lookup that fails here
   * is rename's to report.
   */
  private async commitReplacing (s: { parent: string, name: string }, d: { parent: string, name: string }): Promise<void> {
    if (this.readonly) return
    let ino: number | undefined
    try {
      ino = this.lookupName(this.dirIno(s.parent), s.name)
      const existing = this.lookupName(this.dirIno(d.parent), d.name)
      if (ino === undefined || existing === undefined || existing === ino || !isRegular(this.inode(ino).mode)) return
    } catch {
      return
    }
    if (this.cache.dirtyCount(ino) === 0 && this.sizeOf(ino) === this.row(ino)?.size) return
    await this.commitData(ino)
  }

  /**
   * After an fsync's journal or writeback step: the size the fsync
   * promises (its size when it began, or less if it shrank since) on disk,
   * when no dirty block below it is left out of the journal. Writeback and
   * the journal only carry the size as far as the last block they wrote:
   * with the last blocks punched before writeback, nothing else would.
   */
  private settleSize (ino: number, promised: number): void {
    const row = this.row(ino)
    const size = Math.min(promised, this.sizeOf(ino))
    if (!row || size <= row.size) return
    const tail = row.size % BLOCK_SIZE ? Math.floor(row.size / BLOCK_SIZE) : -1 // guardTail journals that one
    const pending = this.cache.unjournaledOf(ino, Infinity).folios ?? []
    if (pending.some(f => f.index !== tail && f.index < Math.ceil(size / BLOCK_SIZE))) return // written since: not this fsync's
    this.tx(() => this.storeSize(ino, size, 0))
  }

  /**
   * Inside a transaction: ino's on-disk size, its block count changed by
   * blocksDelta, and mtime/ctime `t` (default: its times now, in-memory
   * ones included). Every change of a stored size goes through here, so
   * that one that raises it first makes the old last block's zeros durable
   * (guardTail).
   */
  private storeSize (ino: number, size: number, blocksDelta: number, t?: Time): void {
    this.guardTail(ino, size)
    if (t) { this.q.setSize.run(size, blocksDelta, t.sec, t.nsec, t.sec, t.nsec, ino); return }
    const cur = this.inode(ino)
    this.q.setSize.run(size, blocksDelta, cur.mtime_s, cur.mtime_ns, cur.ctime_s, cur.ctime_ns, ino)
  }

  /**
   * Inside the transaction that raises ino's on-disk size to newSize
   * (storeSize). The
   * block holding the old on-disk size may still hold, past it, bytes a
   * shrink cut off (mapped, or in a journal row); its folio then is dirty
   * with those bytes zeroed (zeroTail). When that folio is neither written
   * back nor journaled, journal it now: the new size must never reach the
   * image before the zeros do. (It stays marked unjournaled: this runs
   * inside transactions that may roll back; the next fsync journals it
   * again, which costs a row write.)
   */
  private guardTail (ino: number, newSize: number): void {
    const row = this.row(ino)
    if (!row || newSize <= row.size || row.size % BLOCK_SIZE === 0 || !this.journal.usable) return
    const f = this.cache.peek(ino, Math.floor(row.size / BLOCK_SIZE))
    if (!f || f.dropped || !f.dirty || f.journaled || !f.uptodate) return
    this.journal.record(ino, [f])
  }

  /**
   * The journal's half of an fsync (journal.ts): when at most
   * JOURNAL_MAX_BLOCKS of ino's dirty folios are not journaled yet, put
   * them in the journal with the inode's size and times, in one SQLite
   * transaction (the caller syncs the WAL). The folios stay dirty for
   * writeback. Runs between writeback passes (none has a run of ino in
   * flight), holding the folios' locks. false: ino does not qualify.
   */
  private async journalSync (ino: number): Promise<boolean> {
    if (!this.journal.usable || this.readonly) return false
    return await this.writeback.exclusive(async () => {
      const { folios: todo, maxIndex } = this.cache.unjournaledOf(ino, JOURNAL_MAX_BLOCKS)
      if (maxIndex < 0) return true // nothing dirty, and no pass runs: nothing in flight either
      if (todo === null) return false
      const locked = []
      try {
        for (const f of todo) { await f.lock(); locked.push(f) }
        const live = todo.filter(f => !f.dropped && f.dirty)
        if (live.length === 0) return true
        this.tx(() => {
          const row = this.row(ino)
          if (!row) throw fsErr('ENOENT', `inode ${ino}`)
          this.journal.record(ino, live)
          this.storeSize(ino, Math.max(row.size, Math.min(this.sizeOf(ino), (maxIndex + 1) * BLOCK_SIZE)), 0)
        })
        for (const f of live) f.journaled = true
        this.journal.stats.commits++
        this.journal.stats.blocks += live.length
        return true
      } finally {
        for (const f of locked) f.unlock()
      }
    })
  }

  /**
   * At mount: the journal's blocks become dirty folios again (journal.ts),
   * newer than what the extent tree maps. Rows that break its invariants
   * (a block past its inode's size, or of no regular file) are skipped,
   * and deleted on a read-write mount (fsck reports them).
   */
  private replayJournal (): void {
    for (const e of this.journal.entries()) {
      const row = this.row(e.ino)
      if (!row || !isRegular(row.mode) || e.blk * BLOCK_SIZE >= row.size || e.data.length !== BLOCK_SIZE) {
        if (!this.readonly) this.tx(() => this.journal.forget(e.ino, e.blk, e.blk + 1))
        continue
      }
      const f = this.cache.getOrCreate(e.ino, e.blk)
      e.data.copy(f.data)
      const tail = row.size - e.blk * BLOCK_SIZE
      if (tail < BLOCK_SIZE) f.data.fill(0, tail)
      f.uptodate = true
      this.cache.markDirty(f)
      f.journaled = tail >= BLOCK_SIZE // a zeroed tail is no longer what the row holds
      if (!this.attrs.has(e.ino)) this.attrs.set(e.ino, { size: row.size, mtime_s: row.mtime_s, mtime_ns: row.mtime_ns, ctime_s: row.ctime_s, ctime_ns: row.ctime_ns })
      this.journal.stats.replayed++
    }
  }

  stat (ino: number): Stat {
    const row = this.row(ino)
    if (!row) {
      if (this.q.nameOfIno.get(ino) !== undefined) return this.danglingStat(ino)
      throw fsErr('ENOENT', `inode ${ino}`)
    }
    const i = this.withMemAttrs(row)
    if (this.attrs.has(ino)) i.blocks += this.delallocBlocks(ino, row.size, row.blocks)
    return this.toStat(i)
  }

  /**
   * Blocks ino's dirty data will add at writeback (counted now, like
   * ext4's delalloc): its dirty folios that no extent maps. When the tree
   * cannot be looked at synchronously, those past the on-disk size (exact
   * for a file written sequentially; misses holes filled below it). A
   * file with no block mapped (storedBlocks 0: a new file not written back
   * yet, the common case) needs no tree lookup (see unmapped()).
   */
  private delallocBlocks (ino: number, storedSize: number, storedBlocks: number): number {
    const dirty = this.cache.dirtyOf(ino).map(f => f.index)
    if (storedBlocks === 0) return dirty.length
    const exact = this.data.unmappedAmong(ino, dirty)
    if (exact !== null) return exact
    const from = Math.ceil(storedSize / BLOCK_SIZE)
    return dirty.filter(i => i >= from).length
  }

  /**
   * A directory entry whose inode is missing (a damaged image; fsck:
   * "points to missing inode"): it is listed and can be stat'ed as an
   * empty file without permissions, so one bad entry does not hide the
   * others and `rm` can remove it (unlink drops just the name). Logged
   * once per inode.
   */
  private danglingStat (ino: number): Stat {
    if (!this.danglingLogged.has(ino)) {
      this.danglingLogged.add(ino)
      process.stderr.write(`foliofs: a directory entry points to missing inode ${ino}: listed as an empty file, remove it with rm; see foliofs fsck\n`)
    }
    const t0 = { sec: 0, nsec: 0 }
    return { ino, mode: S_IFREG, nlink: 1, uid: 0, gid: 0, rdev: 0, size: 0, blksize: BLOCK_SIZE, blocks: 0, atime: t0, mtime: t0, ctime: t0 }
  }

  toStat (i: Inode): Stat {
    return {
      ino: i.ino,
      mode: i.mode,
      nlink: i.nlink,
      uid: i.uid,
      gid: i.gid,
      rdev: i.rdev,
      size: i.size,
      blksize: BLOCK_SIZE,
      blocks: i.blocks * (BLOCK_SIZE / 512),
      atime: { sec: i.atime_s, nsec: i.atime_ns },
      mtime: { sec: i.mtime_s, nsec: i.mtime_ns },
      ctime: { sec: i.ctime_s, nsec: i.ctime_ns }
    }
  }

  /** Resolve an absolute path to an inode number (ENOENT if there is none). */
  resolve (path: string): number {
    const ino = this.lookupPath(path)
    if (ino === undefined) throw fsErr('ENOENT', path)
    return ino
  }

  /**
   * resolve(), but a path that does not exist is undefined, not an
   * exception: the kernel looks up every name before creating it, and the
   * answer "none" is the common case there. Other errors still throw.
   */
  lookupPath (path: string): number | undefined {
    if (path === '/' || path === '') return ROOT_INO
    const parts = path.split('/')
    let ino = ROOT_INO
    for (let k = 1; k < parts.length; k++) {
      const name = parts[k]
      if (name === '') continue
      if (name.length > NAME_MAX) throw fsErr('ENAMETOOLONG')
      const next = this.lookupName(ino, name)
      if (next === undefined) {
        if (k > 1 && !isDir(this.inode(ino).mode)) throw fsErr('ENOTDIR')
        return undefined
      }
      ino = next
    }
    return ino
  }

  /** the directory at path (ENOTDIR if it is something else) */
  private dirNode (path: string): Inode {
    const i = this.inode(this.resolve(path))
    if (!isDir(i.mode)) throw fsErr('ENOTDIR', path)
    return i
  }

  private dirIno (path: string): number {
    return this.dirNode(path).ino
  }

  // ---- namespace operations ------------------------------------------

  /**
   * Create a node. `answer`, if given, is called with the new ino once
   * every check has passed and before the rows are written (its row is in
   * the row cache, so stat() works), when nothing the caller can see
   * depends on those writes any more: the FUSE layer answers the request
   * there and the kernel and the caller go on while SQLite works. Should a
   * write fail after that, createNode throws as usual; the caller, having
   * answered, must treat it as fatal (failedAfterAnswer). Not called when
   * the create stores xattrs (an inherited ACL): the binding answers
   * getxattr of absent names on its own, from a set that the store updates.
   */
  private createNode (path: string, mode: number, creds: Creds, rdev = 0, target: Buffer | null = null, answer?: (ino: number) => void): number {
    const { parent, name } = splitPath(path)
    return this.txMarked(mark => {
      const p = this.dirNode(parent)
      const pino = p.ino
      if (this.lookupName(pino, name) !== undefined) throw fsErr('EEXIST', path)
      this.checkNamesAdded(pino)
      const t = nowTime()
      let gid = creds.gid
      // setgid directories pass their group (and, for subdirs, the bit) on
      if (p.mode & 0o2000) {
        gid = p.gid
        if (isDir(mode)) mode |= 0o2000
      }
      // a default ACL of the directory replaces the umask (acl.ts); symlinks keep 0777
      const def = this.anyDefaultAcl ? this.getXattrRow(pino, ACL_DEFAULT) : undefined
      const defAcl = def === undefined ? null : parseAcl(def)
      let access: Buffer | null = null
      if ((mode & S_IFMT) !== S_IFLNK) {
        if (defAcl) ({ access, mode } = inherit(defAcl, mode))
        else mode &= ~((creds.umask ?? 0) & 0o777)
      }
      const dir = isDir(mode)
      const ino = this.nextIno++
      this.cacheRow({ // the row about to be inserted, as getInode would read it back (blocks: the column default)
        ino, mode, uid: creds.uid, gid, nlink: dir ? 2 : 1, size: target ? target.length : 0, blocks: 0, rdev, parent: dir ? pino : 0,
        atime_s: t.sec, atime_ns: t.nsec, mtime_s: t.sec, mtime_ns: t.nsec, ctime_s: t.sec, ctime_ns: t.nsec, target: target === null ? null : Buffer.from(target)
      })
      const early = answer !== undefined && !access && !(dir && defAcl)
      mark(early ? 'answered' : 'guarded')
      if (early) answer(ino)
      this.q.insInode.run(ino, mode, creds.uid, gid, dir ? 2 : 1, target ? target.length : 0, rdev, dir ? pino : 0,
        t.sec, t.nsec, t.sec, t.nsec, t.sec, t.nsec, target)
      if (access) this.putXattr(ino, ACL_ACCESS, access)
      if (dir && defAcl && def) this.putXattr(ino, ACL_DEFAULT, def)
      this.addName(pino, name, ino)
      if (dir) this.q.addNlink.run(1, pino)
      this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, pino)
      return ino
    })
  }

  /** create a regular file (answer: see createNode) */
  create (path: string, mode: number, creds: Creds, answer?: (ino: number) => void): number {
    if ((mode & S_IFMT) === 0) mode |= S_IFREG
    return this.createNode(path, mode, creds, 0, null, answer)
  }

  mknod (path: string, mode: number, rdev: number, creds: Creds): number {
    if ((mode & S_IFMT) === 0) mode |= S_IFREG
    if (isDir(mode) || (mode & S_IFMT) === S_IFLNK) throw fsErr('EINVAL')
    return this.createNode(path, mode, creds, rdev)
  }

  mkdir (path: string, mode: number, creds: Creds): number {
    return this.createNode(path, S_IFDIR | (mode & 0o7777), creds)
  }

  symlink (target: string, path: string, creds: Creds): number {
    const t = Buffer.from(target, 'latin1') // a byte string, like every name
    if (t.length === 0) throw fsErr('ENOENT')
    if (t.length >= PATH_MAX) throw fsErr('ENAMETOOLONG')
    return this.createNode(path, S_IFLNK | 0o777, creds, 0, t)
  }

  readlink (path: string): string {
    const i = this.inode(this.resolve(path))
    if ((i.mode & S_IFMT) !== S_IFLNK || !i.target) throw fsErr('EINVAL')
    this.touchAtime(i) // as Linux does for a symlink read (readlink, or a path through it)
    return i.target.toString('latin1')
  }

  link (src: string, dst: string): void {
    const { parent, name } = splitPath(dst)
    this.tx(() => {
      const ino = this.resolve(src)
      const i = this.inode(ino)
      if (isDir(i.mode)) throw fsErr('EPERM', 'hard link to directory')
      if (i.nlink >= 65000) throw fsErr('EMLINK')
      this.checkNotFrozen(ino)
      const pino = this.dirIno(parent)
      this.checkNamesAdded(pino)
      if (this.lookupName(pino, name) !== undefined) throw fsErr('EEXIST', dst)
      const t = nowTime()
      this.addName(pino, name, ino)
      this.q.setNlink.run(i.nlink + 1, t.sec, t.nsec, ino)
      this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, pino)
    })
  }

  /**
   * Drop one link to ino (inside tx). When no link remains, the inode
   * becomes an orphan; one with no open handle is returned, to be freed by
   * reap() once the transaction committed (its data may take many steps).
   */
  private dropLink (ino: number, t: Time, d = this.afterDrop(this.inode(ino))): number | null {
    if (d.deleteNow) {
      this.deleteInodeRow(ino)
      this.attrs.delete(ino)
      return null
    }
    this.q.setNlink.run(d.nlink, t.sec, t.nsec, ino)
    if (d.nlink > 0) return null
    this.addOrphan(ino)
    return d.reap ? ino : null
  }

  /**
   * What dropping one link to inode i leaves: its link count; whether it
   * goes at once (no name, no handle and no data: not a file, or a file
   * with no blocks and nothing in the page cache, so no B-tree
   * transaction); whether it has data for reap() to free.
   */
  private afterDrop (i: Inode): { nlink: number, deleteNow: boolean, reap: boolean } {
    const nlink = isDir(i.mode) ? 0 : i.nlink - 1
    const open = (this.openCount.get(i.ino) ?? 0) > 0
    const noData = !isRegular(i.mode) || (i.blocks === 0 && this.cache.foliosInOrder(i.ino, 0).next().done === true)
    return { nlink, deleteNow: nlink === 0 && noData && !open, reap: nlink === 0 && !noData && !open }
  }

  private deleteInodeRow (ino: number): void {
    this.iflagsCache.delete(ino)
    this.journal.forget(ino)
    if (this.xattrNames.size > 0) this.q.delXattrs.run(ino) // none: no inode has any
    this.q.delInode.run(ino)
    this.delOrphan(ino)
  }

  /**
   * The orphans table's inos (unlinked inodes still open or not freed yet,
   * truncates in progress: a handful), read once and kept with the table
   * by addOrphan/delOrphan, so that freeing an inode that is not one (every
   * unlink of a closed empty file) costs no statement. A rollback forgets
   * it (constructor): the next use reads the table again.
   */
  private orphanSet: Set<number> | null = null
  private orphanInos (): Set<number> {
    return (this.orphanSet ??= new Set(this.q.allOrphans.all() as number[]))
  }

  private addOrphan (ino: number): void {
    const set = this.orphanInos()
    this.q.addOrphan.run(ino)
    set.add(ino)
  }

  private delOrphan (ino: number): void {
    const set = this.orphanInos()
    if (!set.has(ino)) return
    this.q.delOrphan.run(ino)
    set.delete(ino)
  }

  /** commit hook of each step freeing an orphan: the last one deletes the inode */
  private reapStep (ino: number): TruncateStep {
    return (freed, _first, last) => {
      this.q.addBlocks.run(-freed, ino)
      if (last) this.deleteInodeRow(ino)
    }
  }

  /** commit hook of each step of a truncate to size */
  private truncateStep (ino: number, size: number, t: Time): TruncateStep {
    return (freed, first, last) => {
      if (first) {
        this.storeSize(ino, size, -freed, t)
        this.journal.forget(ino, Math.ceil(size / BLOCK_SIZE))
      }
      else this.q.addBlocks.run(-freed, ino)
      if (first && !last) this.addOrphan(ino) // a crash now: recovery finishes the truncate
      if (last && !first && this.inode(ino).nlink > 0) this.delOrphan(ino)
    }
  }

  /** Queue an unreachable orphan (dropLink, freeIfUnused) for the reaper: its data and then the inode itself go in the background. */
  private reap (ino: number | null): void {
    if (ino === null || this.readonly) return
    this.reaper.add(ino)
  }

  /**
   * The reaper's work: free orphans' data, then the inodes. Their folios
   * go first (dropFrom waits for writeback in flight, so block counts are
   * final); files with no block mapped lose their rows in one metadata
   * transaction, the others through the extent tree, many per step
   * (FileData.unmapFiles).
   */
  private async freeOrphans (inos: number[]): Promise<number> {
    if (this.readonly) return 0 // remount read-only settles the reaper first; these stay in `orphans`
    await Promise.all(inos.map(async ino => await this.io.dropFrom(ino, 0)))
    const live = inos.filter(ino => this.row(ino) !== undefined)
    for (const ino of live) this.attrs.delete(ino)
    const plain = new Set(live.filter(ino => this.unmapped(ino)))
    if (plain.size > 0) this.tx(() => { for (const ino of plain) this.deleteInodeRow(ino) })
    const mapped = live.filter(ino => !plain.has(ino))
    if (mapped.length > 0) await this.data.unmapFiles(mapped, (ino, freed, last) => this.reapStep(ino)(freed, false, last))
    return live.length
  }

  /**
   * No extent maps any block of ino (its data never reached writeback, or
   * it had none): a truncate or a reap has nothing to unmap, and does its
   * inode update in the metadata batch instead of an extent-tree commit of
   * nothing (two SQLite commits: a temporary file written and removed
   * within the writeback delay, the common case, took ~1 ms to unlink).
   * Relies on the block count covering every extent (fsck checks it).
   * Ask only once the folios beyond the cut are dropped (dropFrom waited
   * for their writeback, so the count is final).
   */
  private unmapped (ino: number): boolean {
    return this.row(ino)?.blocks === 0
  }

  /**
   * At mount, before anything else runs: finish what the last mount left in
   * `orphans`: free unlinked inodes, finish interrupted truncates.
   */
  private recoverOrphans (): void {
    for (const ino of this.q.allOrphans.all() as number[]) {
      const i = this.row(ino)
      if (!i) { this.tx(() => this.delOrphan(ino)); continue }
      if (i.nlink === 0 && this.namedOrphan(ino)) continue
      if (i.nlink === 0) this.data.truncateSync(ino, 0, this.reapStep(ino))
      else this.data.truncateSync(ino, i.size, (freed, _first, last) => {
        this.q.addBlocks.run(-freed, ino)
        if (last) this.delOrphan(ino)
      })
    }
  }

  /**
   * Remove a name. An inode left with no name and no handle is freed: at
   * once when it has no data, else by the reaper, in the background
   * (statfs and a writer short of space wait for it). Errors are thrown.
   * `answer`, if given, is called once every check has passed and before
   * the writes, as createNode's.
   */
  unlink (path: string, answer?: () => void): void {
    const { parent, name } = splitPath(path)
    const orphan = this.txMarked(mark => {
      const pino = this.dirIno(parent)
      const ino = this.lookupName(pino, name)
      if (ino === undefined) throw fsErr('ENOENT', path)
      const t = nowTime()
      if (this.row(ino) === undefined) { // a dangling entry (danglingStat): only the name goes
        mark('guarded')
        this.removeName(pino, name)
        this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, pino)
        return null
      }
      const i = this.inode(ino)
      if (isDir(i.mode)) throw fsErr('EISDIR', path)
      this.checkNameRemoved(pino, ino)
      mark(answer !== undefined ? 'answered' : 'guarded')
      answer?.()
      this.removeName(pino, name)
      this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, pino)
      return this.dropLink(ino, t)
    })
    this.reap(orphan)
  }

  rmdir (path: string): void {
    if (path === '/') throw fsErr('EBUSY')
    const { parent, name } = splitPath(path)
    this.tx(() => {
      const pino = this.dirIno(parent)
      const ino = this.lookupName(pino, name)
      if (ino === undefined) throw fsErr('ENOENT', path)
      if (!isDir(this.inode(ino).mode)) throw fsErr('ENOTDIR', path)
      if (this.q.dirHasEntries.get(ino) !== undefined) throw fsErr('ENOTEMPTY', path)
      this.checkNameRemoved(pino, ino)
      const t = nowTime()
      this.removeName(pino, name)
      this.q.addNlink.run(-1, pino)
      this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, pino)
      this.dropLink(ino, t) // a directory has no data: freed right here
    })
  }

  /**
   * rename and renameat2 (flags RENAME_NOREPLACE, RENAME_EXCHANGE), one
   * SQLite transaction whatever it replaces: a target that is open stays
   * as an orphan (nlink 0) until its last release, freed at the next mount
   * after a crash (dropLink). The binding refuses RENAME_WHITEOUT.
   * `answer`: as unlink's, called once every check has passed; a
   * replaced file's data is freed as unlink's.
   */
  async rename (src: string, dst: string, flags = 0, answer?: () => void): Promise<void> {
    const s = splitPath(src)
    const d = splitPath(dst)
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) || flags === (RENAME_NOREPLACE | RENAME_EXCHANGE)) throw fsErr('EINVAL', `rename flags ${flags}`)
    if (flags & RENAME_EXCHANGE) { this.exchange(s, d); return }
    if (!(flags & RENAME_NOREPLACE)) await this.commitReplacing(s, d)
    this.reap(this.txMarked(mark => {
      const sp = this.dirIno(s.parent)
      const dp = this.dirIno(d.parent)
      const ino = this.lookupName(sp, s.name)
      if (ino === undefined) throw fsErr('ENOENT', src)
      const srcInode = this.inode(ino)
      const srcIsDir = isDir(srcInode.mode)
      const existing = this.lookupName(dp, d.name)
      if (existing !== undefined && (flags & RENAME_NOREPLACE)) throw fsErr('EEXIST', dst)
      if (existing === ino) return null // same file: POSIX says do nothing
      if (srcIsDir) this.checkNotBelow(dp, ino)
      this.checkNameRemoved(sp, ino)
      this.checkNamesAdded(dp)
      const ex = existing === undefined ? undefined : this.inode(existing)
      if (ex) {
        this.checkNameRemoved(dp, ex.ino)
        if (isDir(ex.mode) && !srcIsDir) throw fsErr('EISDIR', dst)
        if (isDir(ex.mode) && this.q.dirHasEntries.get(ex.ino) !== undefined) throw fsErr('ENOTEMPTY', dst)
        if (!isDir(ex.mode) && srcIsDir) throw fsErr('ENOTDIR', dst)
      }
      mark(answer !== undefined ? 'answered' : 'guarded')
      answer?.()
      const t = nowTime()
      let gone: number | null = null
      if (ex) {
        if (isDir(ex.mode)) this.q.addNlink.run(-1, dp)
        this.removeName(dp, d.name)
        gone = this.dropLink(ex.ino, t)
      }
      this.removeName(sp, s.name)
      this.addName(dp, d.name, ino)
      if (srcIsDir && sp !== dp) {
        this.q.addNlink.run(-1, sp)
        this.q.addNlink.run(1, dp)
        this.q.setParent.run(dp, ino)
      }
      this.q.touchC.run(t.sec, t.nsec, ino)
      this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, sp)
      if (dp !== sp) this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, dp)
      return gone
    }))
  }

  /** refuse to move directory ino into dir or below it (inside tx) */
  private checkNotBelow (dir: number, ino: number): void {
    for (let a = dir; ; a = this.inode(a).parent) {
      if (a === ino) throw fsErr('EINVAL', 'rename into own subtree')
      if (a === ROOT_INO) break
    }
  }

  /**
   * RENAME_EXCHANGE: both names must exist; they swap inodes in one
   * transaction. A directory changing parent moves its '..' (parent
   * field, both parents' link counts).
   */
  private exchange (s: { parent: string, name: string }, d: { parent: string, name: string }): void {
    this.tx(() => {
      const sp = this.dirIno(s.parent)
      const dp = this.dirIno(d.parent)
      const a = this.lookupName(sp, s.name)
      const b = this.lookupName(dp, d.name)
      if (a === undefined || b === undefined) throw fsErr('ENOENT')
      if (a === b) return
      this.checkNameRemoved(sp, a)
      this.checkNameRemoved(dp, b)
      const aDir = isDir(this.inode(a).mode)
      const bDir = isDir(this.inode(b).mode)
      if (sp !== dp) {
        if (aDir) this.checkNotBelow(dp, a)
        if (bDir) this.checkNotBelow(sp, b)
      }
      const t = nowTime()
      this.removeName(sp, s.name)
      this.removeName(dp, d.name)
      this.addName(sp, s.name, b)
      this.addName(dp, d.name, a)
      if (sp !== dp) {
        if (aDir) this.q.setParent.run(dp, a)
        if (bDir) this.q.setParent.run(sp, b)
        const delta = (aDir ? 1 : 0) - (bDir ? 1 : 0) // directories that moved from sp to dp, net
        if (delta !== 0) {
          this.q.addNlink.run(-delta, sp)
          this.q.addNlink.run(delta, dp)
        }
      }
      this.q.touchC.run(t.sec, t.nsec, a)
      this.q.touchC.run(t.sec, t.nsec, b)
      this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, sp)
      if (dp !== sp) this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, dp)
    })
  }

  /**
   * A new listing of directory ino: '.' and '..', then its names in name
   * order, read a chunk at a time as a reader gets to them (readdirFrom),
   * so that opening a directory of 100k entries costs what its first
   * chunk costs, not a read of every name (40 ms per 20k names here, in
   * one synchronous stretch). A chunk is the names after the last one read
   * (keyset: SQLite's order of dirents.name, TEXT before BLOB): a name
   * added or removed behind the reader is seen or not, as POSIX allows,
   * and none is ever listed twice.
   */
  openListing (ino: number, keepAtime = false): Listing {
    const i = this.inode(ino)
    if (!isDir(i.mode)) throw fsErr('ENOTDIR')
    if (!keepAtime) this.touchAtime(i) // a directory read: once per listing (opendir, rewinddir), not per chunk
    return { names: ['.', '..'], after: null, done: false }
  }

  /** read the next chunk of at least `want` names into the listing (none left: done) */
  private listMore (ino: number, l: Listing, want: number): void {
    const n = Math.max(want, LISTING_CHUNK)
    const rows = (l.after === null ? this.q.listDirFirst.all(ino, n) : this.q.listDirAfter.all(ino, l.after, n)) as Array<{ name: string | Buffer, ino: number }>
    for (const r of rows) {
      const name = nameFromDb(r.name)
      l.names.push(name)
      this.cacheDentry(dentryKey(ino, name), r.ino) // readdirFrom looks it up right away
    }
    if (rows.length < n) l.done = true
    else l.after = rows[rows.length - 1].name
  }

  /**
   * Up to max entries of the listing l of directory ino, from position
   * `from`, with their attributes as they are now; offsets[k] is the
   * position after entry k (the cookie a reader continues from, never 0).
   * Entries are looked up again as they are returned: a name removed
   * since it was read is skipped, a replaced one shows what it is now.
   */
  readdirFrom (ino: number, l: Listing, from: number, max: number): { names: string[], stats: Stat[], offsets: number[] } {
    const out = { names: [] as string[], stats: [] as Stat[], offsets: [] as number[] }
    for (let k = from; out.names.length < max; k++) {
      if (k >= l.names.length) {
        if (l.done) break
        this.listMore(ino, l, k + max - l.names.length)
        if (k >= l.names.length) break
      }
      const name = l.names[k]
      let child: number | undefined
      if (name === '.' && k === 0) child = ino
      else if (name === '..' && k === 1) child = this.inode(ino).parent || ROOT_INO
      else child = this.lookupName(ino, name)
      if (child === undefined) continue
      out.names.push(name)
      out.stats.push(this.stat(child))
      out.offsets.push(k + 1)
    }
    return out
  }

  // ---- attributes ------------------------------------------------------

  chmod (ino: number, mode: number): void {
    this.tx(() => {
      this.checkNotFrozen(ino)
      const i = this.inode(ino)
      const t = nowTime()
      this.q.setMode.run((i.mode & S_IFMT) | (mode & 0o7777), t.sec, t.nsec, ino)
      // the access ACL follows the mode (acl.ts)
      const stored = this.getXattrRow(ino, ACL_ACCESS)
      const acl = stored === undefined ? null : parseAcl(stored)
      if (acl) this.putXattr(ino, ACL_ACCESS, encodeAcl(withMode(acl, mode)))
    })
  }

  /**
   * who: the caller (fuse-ops' writer()); none for internal callers,
   * which then keep setgid unless the file is group-executable.
   */
  chown (ino: number, uid: number, gid: number, who?: Writer): void {
    this.tx(() => {
      this.checkNotFrozen(ino)
      const i = this.inode(ino)
      const t = nowTime()
      const nuid = uid === 0xffffffff || uid === -1 ? i.uid : uid
      const ngid = gid === 0xffffffff || gid === -1 ? i.gid : gid
      let mode = i.mode
      // like the kernel (setattr_should_drop_sgid): a real ownership
      // change drops setuid, and setgid when the file is group-executable
      // or the caller is neither in the file's group (the one it had)
      // nor has CAP_FSETID. The kernel's FUSE side redoes only the
      // group-executable case before it sends the chown.
      if (!isDir(mode) && (nuid !== i.uid || ngid !== i.gid)) {
        mode &= ~0o4000
        if ((mode & 0o010) || (who && !inGroupOf(who, i.gid) && !hasFsetid(who))) mode &= ~0o2000
      }
      this.q.setOwner.run(nuid, ngid, mode, t.sec, t.nsec, ino)
    })
  }

  utimens (ino: number, atime: Time, mtime: Time): void {
    this.tx(() => {
      // append-only allows only "now" (touch), as ext4; immutable nothing
      const flags = this.iflags(ino)
      if ((flags & FS_IMMUTABLE_FL) || ((flags & FS_APPEND_FL) && (atime.nsec !== UTIME_NOW || mtime.nsec !== UTIME_NOW))) throw fsErr('EPERM')
      const i = this.inode(ino)
      const now = nowTime()
      const pick = (v: Time, s: number, ns: number): Time =>
        v.nsec === UTIME_OMIT ? { sec: s, nsec: ns } : v.nsec === UTIME_NOW ? now : v
      const a = pick(atime, i.atime_s, i.atime_ns)
      const m = pick(mtime, i.mtime_s, i.mtime_ns)
      this.q.setTimes.run(a.sec, a.nsec, m.sec, m.nsec, now.sec, now.nsec, ino)
      const mem = this.attrs.get(ino)
      if (mem) Object.assign(mem, { mtime_s: m.sec, mtime_ns: m.nsec, ctime_s: now.sec, ctime_ns: now.nsec })
    })
  }

  // ---- file data -------------------------------------------------------

  open (ino: number, flags: number, dir = false): number {
    if (!dir && (flags & O_ACCMODE) !== 0) { // opened for writing
      const f = this.iflags(ino)
      if ((f & FS_IMMUTABLE_FL) || ((f & FS_APPEND_FL) && !(flags & O_APPEND))) throw fsErr('EPERM')
    }
    const fh = this.nextFh++
    this.handles.set(fh, { ino, flags, dir })
    this.openCount.set(ino, (this.openCount.get(ino) ?? 0) + 1)
    return fh
  }

  handle (fh: number): Handle {
    const h = this.handles.get(fh) ?? this.released.get(fh)
    if (!h) throw fsErr('EBADF', `fh ${fh}`)
    return h
  }

  /**
   * An orphan with nlink 0 that an entry still names: damage (an edited
   * image; fsck reports the link count). Freeing it would empty a file
   * that has a name, so it is kept (logged once).
   */
  private namedOrphan (ino: number): boolean {
    if (this.q.nameOfIno.get(ino) === undefined) return false
    if (!this.danglingLogged.has(ino)) {
      this.danglingLogged.add(ino)
      process.stderr.write(`foliofs: orphan ${ino} has link count 0 but a name: kept, not freed; see foliofs fsck\n`)
    }
    return true
  }

  /**
   * An inode's last handle went: free it if it has no name either. Every
   * inode that loses its last name is in `orphans` (dropLink records it in
   * the same transaction), so a link count of 0 without that is a damaged
   * row (fsck: "nlink 0, expected N"), not a deleted file: it is kept,
   * logged once, and its names keep working (it was freed, data and all,
   * by the first open and close of it).
   */
  private freeIfUnused (ino: number): void {
    if ((this.openCount.get(ino) ?? 0) > 0 || this.readonly) return
    if (this.storedNlink(ino) !== 0) return
    if (this.orphanInos().has(ino)) {
      if (!this.namedOrphan(ino)) this.reap(ino)
    } else if (!this.danglingLogged.has(ino)) {
      this.danglingLogged.add(ino)
      process.stderr.write(`foliofs: inode ${ino} has link count 0 but was never unlinked: kept; see foliofs fsck\n`)
    }
  }

  /** Close fh; its inode is freed (the reaper) if that was its last name and handle (see unlink). */
  release (fh: number): void {
    const h = this.handles.get(fh)
    if (!h) return
    this.handles.delete(fh)
    this.released.set(fh, h)
    if (this.released.size > RELEASED_KEPT) this.released.delete(this.released.keys().next().value as number)
    const n = (this.openCount.get(h.ino) ?? 1) - 1
    if (n > 0) {
      this.openCount.set(h.ino, n)
      return
    }
    this.openCount.delete(h.ino)
    this.freeIfUnused(h.ino)
  }

  openHandles (): number {
    return this.handles.size
  }

  /**
   * Read up to len bytes of ino at pos into buf. With a sink, a large
   * sequential read may leave a read plan there instead of filling buf
   * (readplan.ts): the caller then hands it over with the answer.
   */
  async read (ino: number, buf: Buffer, len: number, pos: number, sink?: PlanSink, keepAtime = false): Promise<number> {
    const i = this.inode(ino)
    if (isDir(i.mode)) throw fsErr('EISDIR')
    if (pos >= i.size || len <= 0) return 0
    const filled = Math.min(len, i.size - pos)
    await this.io.read(ino, buf, pos, filled, sink)
    // the size now, not before the await (a truncate may have run
    // meanwhile), and never more than was read (a write may have extended
    // the file meanwhile: the bytes past `filled` are not in buf)
    const n = Math.max(0, Math.min(filled, this.sizeOf(ino) - pos))
    this.counters.reads++
    this.counters.bytesRead += n
    if (!keepAtime) this.touchAtime(i)
    return n
  }

  /**
   * A read's atime (of a file's data, a directory's listing, a symlink's
   * target), by the mount's rule (relatime: only when atime is not newer
   * than mtime or ctime, to the nanosecond, or a day old). Best effort: where metadata can no
   * longer be written (a damaged extent tree, a failed group commit) the
   * read is served and its atime left as it is.
   */
  private touchAtime (i: Inode): void {
    if (this.readonly || this.atime === 'noatime' || (this.iflags(i.ino) & FS_NOATIME_FL)) return
    if (this.data.damaged || this.batchFailure) return
    const t = nowTime()
    const notAfter = (s: number, ns: number): boolean => i.atime_s < s || (i.atime_s === s && i.atime_ns <= ns)
    const older = notAfter(i.mtime_s, i.mtime_ns) || notAfter(i.ctime_s, i.ctime_ns) || t.sec - i.atime_s >= RELATIME_SEC
    if (older || this.atime === 'strictatime') this.tx(() => this.q.setAtime.run(t.sec, t.nsec, i.ino))
  }

  /**
   * Write data at pos; `append` (a handle opened O_APPEND) writes at the
   * file's end instead, whatever pos the kernel sent: it computes pos from
   * its own cached size of the name written through, which a change
   * through another hard link (a kernel inode of its own) leaves stale, so
   * appends through two names overwrote each other. onPos gets the
   * position written at.
   */
  write (ino: number, data: Buffer, pos: number, who?: Writer, append = false, onPos?: (at: number) => void): Promise<number> {
    return this.changing(async () => await this.writeNow(ino, data, pos, who, append, onPos))
  }

  private async writeNow (ino: number, data: Buffer, pos: number, who: Writer | undefined, append: boolean, onPos?: (at: number) => void): Promise<number> {
    const len = data.length
    if (len === 0) return 0
    if (pos + len > MAX_FILE_SIZE && !append) throw fsErr('EFBIG')
    if (this.readonly) throw fsErr('EROFS')
    await this.writeback.throttle() // dirty data over its limit: wait for writeback first
    return await this.withInode(ino, async () => {
      if (append) {
        pos = this.sizeOf(ino) // under the inode's lock: no other write moves the end meanwhile
        if (pos + len > MAX_FILE_SIZE) throw fsErr('EFBIG')
      }
      onPos?.(pos)
      const i = this.inode(ino)
      if (isDir(i.mode)) throw fsErr('EISDIR')
      const flags = this.iflags(ino)
      if ((flags & FS_IMMUTABLE_FL) || ((flags & FS_APPEND_FL) && pos < i.size)) throw fsErr('EPERM')
      this.killPriv(i, who)
      const space = await this.reserveSpace(ino, pos, len)
      const n = space.len // len, or less at the end of the space
      try {
        if (pos > i.size) await this.io.zeroTail(ino, i.size) // extending: the old last block's tail reads zeros
        await this.io.write(ino, n < len ? data.subarray(0, n) : data, pos)
      } finally {
        this.releaseSpace(space)
      }
      this.touchMem(ino, Math.max(this.sizeOf(ino), pos + n), nowTime())
      this.counters.writes++
      this.counters.bytesWritten += n
      if (this.syncWrites) await this.syncInode(ino)
      return n
    })
  }

  /**
   * Delayed allocation must not promise space it cannot give: every dirty
   * folio needs a new block at writeback (copy-on-write). A write may
   * dirty only what is free beside the dirty folios and the blocks other
   * writes hold between this check and their dirtying (spaceHeld: without
   * it, writers running together each saw the same free blocks, and
   * writeback then failed with ENOSPC, data answered never written back).
   * Short of space, it writes back what is dirty (overwrites free their
   * old blocks) and makes frees durable first; then, as POSIX asks, it
   * writes what fits (a short write) and refuses (ENOSPC) only when
   * nothing does. Returns the bytes to write and the blocks held: the
   * caller gives them back (releaseSpace) once its folios are dirty.
   */
  private async reserveSpace (ino: number, pos: number, len: number, whole = false): Promise<{ len: number, held: number }> {
    const first = Math.floor(pos / BLOCK_SIZE)
    const most = Math.floor((pos + len - 1) / BLOCK_SIZE) - first + 1
    const avail = (): number => this.data.free - this.cache.owedBlocks - this.spaceHeld
    const hold = (blocks: number, bytes: number): { len: number, held: number } => {
      this.spaceHeld += blocks
      return { len: bytes, held: blocks }
    }
    if (most <= avail()) return hold(most, len) // fits even if every folio is new
    const fresh = this.io.newlyDirty(ino, pos, len)
    if (fresh <= avail()) return hold(fresh, len)
    await this.makeRoom()
    const need = this.io.newlyDirty(ino, pos, len)
    if (need <= avail()) return hold(need, len)
    // what fits, counting every folio as new
    const fit = avail()
    const bytes = Math.min(len, (first + fit) * BLOCK_SIZE - pos)
    if (whole || fit <= 0 || bytes <= 0) throw fsErr('ENOSPC')
    return hold(fit, bytes)
  }

  /**
   * Short of space: deleted files' blocks back (the reaper), dirty data
   * written back (overwrites free their old blocks), and the frees durable
   * (only then are they allocatable). Writeback errors are the caller's
   * next space check to answer.
   */
  private async makeRoom (): Promise<void> {
    await this.reaper.settled()
    await this.writeback.all().catch(() => {})
    this.data.checkpoint()
  }

  /** blocks reserveSpace held for a write whose folios are dirty now (or that failed) */
  private releaseSpace (r: { held: number }): void {
    this.spaceHeld -= r.held
  }

  truncate (ino: number, size: number, who?: Writer): Promise<void> {
    return this.changing(async () => await this.truncateNow(ino, size, who))
  }

  private async truncateNow (ino: number, size: number, who?: Writer): Promise<void> {
    if (size < 0) throw fsErr('EINVAL')
    if (size > MAX_FILE_SIZE) throw fsErr('EFBIG')
    if (this.readonly) throw fsErr('EROFS')
    await this.withInode(ino, async () => {
      const i = this.inode(ino)
      if (isDir(i.mode)) throw fsErr('EISDIR')
      this.checkNotFrozen(ino)
      this.killPriv(i, who)
      const t = nowTime()
      if (size >= i.size) {
        await this.extend(ino, i.size, size, t)
        return
      }
      this.touchMem(ino, size, t) // readers clamp to the new size from now on
      await this.io.dropFrom(ino, Math.ceil(size / BLOCK_SIZE)) // waits for writeback of those folios
      await this.io.zeroTail(ino, size) // the new last block: zeros past size, written back later
      const step = this.truncateStep(ino, size, t)
      if (this.unmapped(ino)) this.tx(() => step(0, true, true))
      else await this.data.truncate(ino, size, step)
      if (this.cache.dirtyCount(ino) === 0) this.attrs.delete(ino) // all of it is in the row now
    })
  }

  /**
   * ext4's rule for a write or truncate by a caller without CAP_FSETID
   * (should_remove_suid, setattr_should_drop_sgid): setuid goes, and
   * setgid when the file is group-executable or the caller is not in its
   * group. The kernel does part of it before it sends a FUSE write (the
   * binding leaves HANDLE_KILLPRIV off) but keeps setgid on a file that
   * is not group-executable, so the daemon does all of it. No writer
   * (internal callers): nothing.
   */
  private killPriv (i: Inode, who?: Writer): void {
    if (!who || !(i.mode & 0o6000) || !isRegular(i.mode)) return
    let mode = i.mode & ~0o4000
    if ((i.mode & 0o2000) && ((i.mode & 0o010) || !inGroupOf(who, i.gid))) mode &= ~0o2000
    if (mode === i.mode || hasFsetid(who)) return
    const t = nowTime()
    this.tx(() => this.q.setMode.run(mode, t.sec, t.nsec, i.ino))
    this.onPrivsDropped(i.ino)
  }

  /** grow ino from size `from` to `size` (holes: nothing to write) */
  private async extend (ino: number, from: number, size: number, t: Time): Promise<void> {
    if (size > from) await this.io.zeroTail(ino, from) // the old last block's tail reads zeros
    this.tx(() => this.storeSize(ino, size, 0, t)) // (also after a crash: storeSize)
    if (this.attrs.has(ino)) this.touchMem(ino, size, t)
  }

  /**
   * lseek SEEK_DATA (3) / SEEK_HOLE (4), the page-cache-aware walk shared
   * with FIEMAP: ENXIO at or past the end of the file, as on ext4.
   */
  async lseek (ino: number, offset: number, whence: number): Promise<number> {
    if (whence !== SEEK_DATA && whence !== SEEK_HOLE) throw fsErr('EINVAL', `lseek whence ${whence}`)
    if (!isRegular(this.inode(ino).mode)) throw fsErr('EINVAL')
    const size = this.sizeOf(ino)
    const r = offset < 0 ? null
      : whence === SEEK_DATA ? await this.fiemap.seekData(ino, size, offset) : await this.fiemap.seekHole(ino, size, offset)
    if (r === null) throw fsErr('ENXIO')
    return r
  }

  /**
   * fallocate (ext4's semantics): mode 0 preallocates unwritten extents in
   * the holes of the range (reading zeros; FIEMAP says unwritten) and
   * grows the file unless FALLOC_FL_KEEP_SIZE; PUNCH_HOLE (with KEEP_SIZE)
   * drops the range's folios and extents and frees the space, zeroing the
   * partial blocks at its edges; ZERO_RANGE punches and preallocates.
   * COLLAPSE_RANGE and INSERT_RANGE would shift every later key of the
   * file: EOPNOTSUPP. Writeback into preallocated blocks is copy-on-write
   * like every writeback, so it allocates anew and frees the unwritten block.
   */
  fallocate (ino: number, mode: number, offset: number, length: number, who?: Writer): Promise<void> {
    return this.changing(async () => await this.fallocateNow(ino, mode, offset, length, who))
  }

  private async fallocateNow (ino: number, mode: number, offset: number, length: number, who?: Writer): Promise<void> {
    if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) throw fsErr('EOPNOTSUPP', `fallocate mode ${mode}`)
    if ((mode & FALLOC_FL_PUNCH_HOLE) && (!(mode & FALLOC_FL_KEEP_SIZE) || (mode & FALLOC_FL_ZERO_RANGE))) throw fsErr('EOPNOTSUPP')
    if (offset < 0 || length <= 0) throw fsErr('EINVAL')
    if (offset + length > MAX_FILE_SIZE) throw fsErr('EFBIG')
    if (this.readonly) throw fsErr('EROFS')
    await this.withInode(ino, async () => {
      const i = this.inode(ino)
      if (isDir(i.mode)) throw fsErr('EISDIR')
      if (!isRegular(i.mode)) throw fsErr('ENODEV')
      const flags = this.iflags(ino)
      if ((flags & FS_IMMUTABLE_FL) || ((flags & FS_APPEND_FL) && (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)))) throw fsErr('EPERM')
      this.killPriv(i, who) // every mode, as ext4 (file_modified)
      const t = nowTime()
      const end = offset + length
      if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) await this.punch(ino, offset, Math.min(end, this.sizeOf(ino)), t)
      if (!(mode & FALLOC_FL_PUNCH_HOLE)) {
        // whole blocks covering the range; for ZERO_RANGE the whole blocks inside
        // it (its partial edge blocks stay as punch zeroed them, in the page cache)
        const zero = (mode & FALLOC_FL_ZERO_RANGE) !== 0
        const from = zero ? Math.ceil(offset / BLOCK_SIZE) : Math.floor(offset / BLOCK_SIZE)
        const to = zero ? Math.floor(end / BLOCK_SIZE) : Math.ceil(end / BLOCK_SIZE)
        if (from < to) {
          await this.reaper.settled() // its ENOSPC check counts free blocks: deleted files' must be back
          // dirty data already answered takes free blocks at writeback: a
          // preallocation must leave them (it took them, and writeback then
          // failed with ENOSPC forever, the data answered never written).
          // Short of space, write back first: overwrites free old blocks.
          const prealloc = async (): Promise<void> => await this.data.preallocate(ino, from, to, added => this.blocksChanged(ino, added, t), this.cache.owedBlocks + this.spaceHeld)
          try {
            await prealloc()
          } catch (err) {
            if ((err as { code?: string }).code !== 'ENOSPC' || this.cache.owedBlocks === 0) throw err
            await this.makeRoom()
            await prealloc()
          }
        }
        const size = this.sizeOf(ino)
        if (!(mode & FALLOC_FL_KEEP_SIZE) && end > size) await this.extend(ino, size, end, t)
      }
      // mtime and ctime move whatever the mode did, as on ext4 (even when no block was added)
      this.touchChanged(ino, t)
      this.counters.fallocates++
    })
  }

  /**
   * copy_file_range, in the daemon (no data round trip through the
   * kernel): copies the data of [offIn, offIn+len) of inoIn, clamped to
   * its size, to offOut of inoOut through the page cache, and grows the
   * target to the copied end. A hole of the source is not read: where the
   * target has bytes it is punched there (the copy reads zeros, and stays
   * sparse). Returns the bytes copied (0 at or past the source's end).
   */
  copyFileRange (inoIn: number, offIn: number, inoOut: number, offOut: number, len: number, who?: Writer): Promise<number> {
    return this.changing(async () => await this.copyFileRangeNow(inoIn, offIn, inoOut, offOut, len, who))
  }

  private async copyFileRangeNow (inoIn: number, offIn: number, inoOut: number, offOut: number, len: number, who?: Writer): Promise<number> {
    if (this.readonly) throw fsErr('EROFS')
    if (!isRegular(this.inode(inoIn).mode) || !isRegular(this.inode(inoOut).mode)) throw fsErr('EINVAL')
    if (offIn < 0 || offOut < 0) throw fsErr('EINVAL')
    if (offOut >= MAX_FILE_SIZE && len > 0) throw fsErr('EFBIG')
    // up to the largest file size, as a write: a copy straddling it is short (Linux's generic_write_check_limits)
    const n = Math.max(0, Math.min(len, this.sizeOf(inoIn) - offIn, MAX_FILE_SIZE - offOut))
    if (n === 0) return 0
    if (inoIn === inoOut && offIn < offOut + n && offOut < offIn + n) throw fsErr('EINVAL', 'overlapping copy')
    await this.withInode(inoOut, async () => { this.killPriv(this.inode(inoOut), who) }) // as the write it stands for
    const buf = Buffer.allocUnsafe(Math.min(n, COPY_CHUNK))
    // [from, to) of the source is a hole: zeros where the target has bytes
    const zeroTarget = async (from: number, to: number): Promise<void> => {
      await this.withInode(inoOut, async () => {
        const a = offOut + (from - offIn)
        const b = Math.min(offOut + (to - offIn), this.sizeOf(inoOut))
        if (a >= b) return
        if (this.iflags(inoOut) & (FS_IMMUTABLE_FL | FS_APPEND_FL)) throw fsErr('EPERM') // its bytes would change: as write()
        const t = nowTime()
        await this.punch(inoOut, a, b, t)
        this.touchChanged(inoOut, t)
      })
    }
    for (let at = offIn; at < offIn + n;) {
      const data = await this.fiemap.seekData(inoIn, offIn + n, at) // data of the source within the range
      await zeroTarget(at, data ?? offIn + n)
      if (data === null) break
      const hole = (await this.fiemap.seekHole(inoIn, offIn + n, data)) ?? offIn + n
      for (let p = data; p < hole;) {
        const got = await this.read(inoIn, buf, Math.min(buf.length, hole - p), p)
        if (got === 0) break
        const wrote = await this.write(inoOut, buf.subarray(0, got), offOut + (p - offIn))
        if (wrote < got) return p - offIn + wrote // the target's filesystem is full: a short copy, as a short write
        p += got
      }
      at = hole
    }
    await this.withInode(inoOut, async () => {
      const size = this.sizeOf(inoOut)
      if (offOut + n > size) await this.extend(inoOut, size, offOut + n, nowTime()) // a trailing hole
    })
    this.counters.copies++
    return n
  }

  /** ino's mtime and ctime become t, stored and in memory (its size stays) */
  private touchChanged (ino: number, t: Time): void {
    this.tx(() => this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, ino))
    if (this.attrs.has(ino)) this.touchMem(ino, this.sizeOf(ino), t)
  }

  /** inside a fallocate or punch step's commit: ino's block count moves by delta, its times to t (the stored size stays) */
  private blocksChanged (ino: number, delta: number, t: Time): void {
    const row = this.row(ino) as Inode
    this.storeSize(ino, row.size, delta, t)
  }

  /** zero bytes [from, to) of ino: partial blocks in the page cache, whole blocks unmapped and freed */
  private async punch (ino: number, from: number, to: number, t: Time): Promise<void> {
    if (from >= to) return
    // a range reaching the end of the file takes its last block whole (as
    // ext4): the bytes past the end read as zeros anyway
    const eof = this.sizeOf(ino)
    if (to >= eof) to = Math.max(to, Math.ceil(eof / BLOCK_SIZE) * BLOCK_SIZE)
    const a = Math.ceil(from / BLOCK_SIZE)
    const b = Math.floor(to / BLOCK_SIZE)
    const zero = async (x: number, y: number): Promise<void> => {
      if (x >= y) return
      // an edge block that reads as zeros already (a hole or an unwritten
      // extent, no folio) stays so: zeroing made it data, which FIEMAP and
      // SEEK_DATA reported and writeback gave a block (ext4 leaves a hole)
      const blk = Math.floor(x / BLOCK_SIZE)
      if (this.cache.get(ino, blk) === undefined && await this.data.readsZeros(ino, blk)) return
      const space = await this.reserveSpace(ino, x, y - x, true)
      try {
        await this.io.write(ino, Buffer.alloc(y - x), x)
      } finally {
        this.releaseSpace(space)
      }
    }
    if (a > b) { await zero(from, to); return } // inside one block
    if (a < b) {
      // the whole blocks first: zeroing an edge writes a new block (copy
      // on write), which a full filesystem has only once these are freed
      // (an unaligned punch of a full one was ENOSPC and freed nothing)
      await this.io.dropFrom(ino, a, b) // waits for writeback of those folios
      await this.data.unmap(ino, a, b, (freed, _first, last) => {
        this.blocksChanged(ino, -freed, t)
        // once the whole range is unmapped: a punch cut short by a crash
        // shows its journaled blocks (fsynced before it), never the older
        // mapped data of the part it had not reached
        if (last) this.journal.forget(ino, a, b)
      })
    }
    try {
      await zero(from, a * BLOCK_SIZE)
      await zero(b * BLOCK_SIZE, to)
    } finally {
      // the unmap stored t: memory shows it too, also when an edge failed
      if (a < b && this.attrs.has(ino)) this.touchMem(ino, this.sizeOf(ino), t)
    }
  }

  /**
   * At a read-write mount: a free-space map that calls mapped blocks free
   * refuses it, as a damaged tree node does: the allocator would hand those
   * blocks to new writes, over the data of the files that map them
   * (fsck --repair rebuilds the map). Checked for trees of up to
   * MOUNT_CHECK_NODES nodes; a larger tree is fsck's to check.
   */
  private refuseMappedFree (image: string): void {
    if (this.readonly) return
    const bad = this.data.mappedFree(MOUNT_CHECK_NODES)
    if (bad !== null) this.refuseReadWrite(refusedReadWrite(image, `extent tree: ${bad}`, 'foliofs fsck --repair'))
  }

  /** give up a read-write mount in the constructor: the data area and the WAL descriptor closed, then err thrown */
  private refuseReadWrite (err: ImageError): never {
    this.data.closeWal()
    this.data.area.close()
    throw err
  }

  /**
   * At mount: a data area cut short (files mapped past its end would read
   * EIO, and writeback would write past it into what the image calls
   * allocated) refuses a read-write mount before anything is written; a
   * read-only one is served, reporting it, so what is left can be copied off.
   */
  private refuseShortArea (image: string): void {
    const short = this.data.shortArea()
    if (!short) return
    const what = `data area ${dataAreaPath(image)} is cut short (${short.size} bytes; mapped data needs ${short.needed})`
    if (this.readonly) {
      process.stderr.write(`foliofs: ${image}: ${what}: serving read-only; what lies past its end reads as EIO; see foliofs fsck\n`)
      return
    }
    this.refuseReadWrite(refusedReadWrite(image, what))
  }

  /** fsync: write back ino's data (if given), then make every commit durable. */
  async fsync (ino?: number): Promise<void> {
    const fd = await this.fsyncHandOff(ino, false)
    if (fd !== null) throw new Error('fsyncHandOff(..., false) handed a sync off')
  }

  /**
   * fsync, with the last step handed to the caller when `handOff` allows
   * it: the descriptor of SQLite's WAL, which the caller must fdatasync
   * before it tells anyone the fsync is done (the binding does it in the
   * libfuse thread that answers; see the binding's fsync). Null: durable
   * already. Only a journaled fsync hands off (it frees no blocks, so
   * nothing waits to learn the sync happened); one that wrote back syncs
   * here and marks its frees durable.
   */
  async fsyncHandOff (ino: number | undefined, handOff: boolean): Promise<number | null> {
    this.counters.fsyncs++
    if (this.readonly) return null
    let fd: number | null = null
    if (ino !== undefined) fd = await this.syncInode(ino, handOff)
    else await this.data.syncCommits()
    this.checkBatchCommitted() // a failed group commit rolled back what may have been journaled or committed for this fsync
    return fd
  }

  /**
   * The private FIEMAP ioctl: buf is struct fiemap followed by room for
   * FIEMAP_MAX_PER_CALL extents, in and out (see fiemap.ts). Linux's rules:
   * fm_length 0: EINVAL; fm_start at or past the largest file size: EFBIG;
   * then unsupported flags: EBADR with them in fm_flags; a range running past
   * it is cut there; fm_extent_count 0 counts the extents of the range.
   */
  async fiemapIoctl (ino: number, buf: Buffer): Promise<void> {
    const req = decodeRequest(buf)
    if (req.extentCount > FIEMAP_MAX_PER_CALL) throw fsErr('EINVAL', `fm_extent_count ${req.extentCount} > ${FIEMAP_MAX_PER_CALL}`)
    // in Linux's order (fiemap_prep): the range, then the flags
    if (req.length === 0) throw fsErr('EINVAL', 'fm_length 0')
    if (req.start >= MAX_FILE_SIZE) throw fsErr('EFBIG')
    const bad = (req.flags & ~FIEMAP_FLAGS_COMPAT) >>> 0 // unsigned: bit 31 made it negative (and EIO)
    if (bad) { encodeBadFlags(buf, bad); return }
    const regular = (this.inode(ino).mode & S_IFMT) === S_IFREG
    if ((req.flags & FIEMAP_FLAG_SYNC) && regular && !this.readonly) await this.writeback.inode(ino)
    const r = await this.fiemap.map(ino, req.start, Math.min(req.length, MAX_FILE_SIZE - req.start), req.extentCount)
    encodeReply(buf, req.extentCount === 0 ? r.count : r.extents.length, r.extents)
  }

  /** syncfs: write back everything and make it durable */
  async sync (): Promise<void> {
    if (this.readonly) return
    await this.reaper.settled() // deleted files' space is free and that is durable too
    await this.writeback.all()
    this.data.checkpoint()
  }

  // ---- inode flags (iflags.ts) -----------------------------------------

  /** ino's inode flags (cached; the row is read once) */
  iflags (ino: number): number {
    if (!this.anyIflags) return 0
    let f = this.iflagsCache.get(ino)
    if (f === undefined) {
      if (this.iflagsCache.size >= IFLAGS_CACHE_MAX) this.iflagsCache.clear() // crude, and rare
      f = decodeIflags(this.getXattrRow(ino, IFLAGS_XATTR))
      this.iflagsCache.set(ino, f)
    }
    return f
  }

  /**
   * FS_IOC_SETFLAGS: only SUPPORTED_IFLAGS (others: EOPNOTSUPP, as ext4
   * for flags it cannot set); the owner or root may change them, and only
   * root immutable and append-only.
   */
  setIflags (ino: number, flags: number, creds: Creds): void {
    if (flags & ~SUPPORTED_IFLAGS) throw fsErr('EOPNOTSUPP', `inode flags 0x${(flags >>> 0).toString(16)}`)
    this.tx(() => {
      const i = this.inode(ino)
      const old = this.iflags(ino)
      if (creds.uid !== 0 && creds.uid !== i.uid) throw fsErr('EPERM')
      if (((old ^ flags) & PRIVILEGED_IFLAGS) && creds.uid !== 0) throw fsErr('EPERM')
      if (flags === 0) this.delXattrRow(ino, IFLAGS_XATTR)
      else this.putXattr(ino, IFLAGS_XATTR, encodeIflags(flags))
      const t = nowTime()
      this.q.touchC.run(t.sec, t.nsec, ino)
      this.iflagsCache.set(ino, flags) // after the row: a failed tx leaves the cache as it was
    })
  }

  /** immutable or append-only ino: EPERM (its name, size, attributes and xattrs stay) */
  private checkNotFrozen (ino: number): void {
    if (isFrozen(this.iflags(ino))) throw fsErr('EPERM')
  }

  /** taking name of ino out of directory dir: neither may be immutable or append-only */
  private checkNameRemoved (dir: number, ino: number): void {
    this.checkNotFrozen(dir)
    this.checkNotFrozen(ino)
  }

  /** a new name in directory dir: not when it is immutable */
  private checkNamesAdded (dir: number): void {
    if (this.iflags(dir) & FS_IMMUTABLE_FL) throw fsErr('EPERM')
  }

  // ---- extended attributes -------------------------------------------

  private checkXattrName (name: string): void {
    if (name.length === 0 || name.length > XATTR_NAME_MAX) throw fsErr('ERANGE') // a byte string: its length is its bytes
    checkXattrSuffix(name)
    if (!/^(user|trusted|security)\./.test(name) && !isAclName(name)) throw fsErr('EOPNOTSUPP', name)
  }

  setxattr (ino: number, name: string, value: Buffer, flags: number, who?: Writer): void {
    this.checkXattrName(name)
    if (value.length > XATTR_SIZE_MAX) throw fsErr('E2BIG')
    if (isAclName(name)) { this.setAcl(ino, name, value, who); return }
    this.tx(() => {
      this.inode(ino)
      this.checkNotFrozen(ino)
      const exists = this.getXattrRow(ino, name) !== undefined
      if ((flags & XATTR_CREATE) && exists) throw fsErr('EEXIST')
      if ((flags & XATTR_REPLACE) && !exists) throw fsErr('ENODATA')
      this.putXattr(ino, name, Buffer.from(value))
      const t = nowTime()
      this.q.touchC.run(t.sec, t.nsec, ino)
    })
  }

  /**
   * An ACL (acl.ts): an access ACL sets the mode's rwx bits and is stored
   * only when it says more than the mode; a default ACL only on
   * directories (EACCES otherwise). Setting an access ACL drops setgid
   * when the caller is neither in the file's group nor has CAP_FSETID
   * (posix_acl_update_mode, CVE-2016-7097: the kernel leaves it to the
   * daemon, and libfuse drops its FUSE_SETXATTR_ACL_KILL_SGID flag).
   */
  private setAcl (ino: number, name: string, value: Buffer, who?: Writer): void {
    const acl = parseAcl(value)
    if (!acl) throw fsErr('EINVAL', `bad ACL in ${name}`)
    this.tx(() => {
      const i = this.inode(ino)
      this.checkNotFrozen(ino)
      const t = nowTime()
      if (name === ACL_DEFAULT) {
        if (!isDir(i.mode)) throw fsErr('EACCES')
        this.putXattr(ino, name, Buffer.from(value))
      } else {
        const sgid = (i.mode & 0o2000) !== 0 && who !== undefined && !inGroupOf(who, i.gid) && !hasFsetid(who)
        this.q.setMode.run((i.mode & ~0o777 & ~(sgid ? 0o2000 : 0)) | aclModeBits(acl), t.sec, t.nsec, ino)
        if (modeOnly(acl)) this.delXattrRow(ino, name)
        else this.putXattr(ino, name, encodeAcl(acl))
      }
      this.q.touchC.run(t.sec, t.nsec, ino)
    })
  }

  getxattr (ino: number, name: string): Buffer {
    this.inode(ino)
    checkXattrSuffix(name)
    if (!/^(user|trusted|security)\./.test(name) && !isAclName(name)) throw fsErr('EOPNOTSUPP', name) // as setxattr, and ext4
    const v = this.getXattrRow(ino, name)
    if (v === undefined) throw fsErr('ENODATA')
    return v
  }

  /**
   * The names of ino's xattrs. trusted.* names only when the caller may
   * read them (privileged: CAP_SYS_ADMIN, asked only when there are some),
   * as ext4 lists them.
   */
  listxattr (ino: number, privileged: () => boolean = () => true): string[] {
    this.inode(ino)
    const names = (this.q.listXattr.all(ino) as Array<string | Buffer>).map(nameFromDb).filter(n => n !== IFLAGS_XATTR)
    return names.some(n => n.startsWith('trusted.')) && !privileged() ? names.filter(n => !n.startsWith('trusted.')) : names
  }

  removexattr (ino: number, name: string): void {
    this.checkXattrName(name)
    this.tx(() => {
      this.checkNotFrozen(ino)
      if (!this.delXattrRow(ino, name)) {
        if (isAclName(name)) return // no ACL to remove: done, as on ext4 (setfacl -b of a plain file)
        throw fsErr('ENODATA')
      }
      const t = nowTime()
      this.q.touchC.run(t.sec, t.nsec, ino)
    })
  }

  // ---- whole-filesystem ------------------------------------------------

  statfs (): StatFs {
    const total = this.sb.capacityBlocks
    const free = Math.max(0, this.data.free - this.cache.owedBlocks) // dirty data will need blocks
    const files = (this.q.countInodes.get() as number)
    const maxFiles = 1 << 30
    // the binding carries 32-bit counts: an image of 16 TiB or more counts
    // in larger fragments (f_frsize), as df multiplies them back
    let per = 1
    while (total / per > 0xffffffff) per *= 2
    return {
      bsize: BLOCK_SIZE, frsize: BLOCK_SIZE * per, blocks: Math.floor(total / per), bfree: Math.floor(free / per), bavail: Math.floor(free / per),
      files: maxFiles, ffree: maxFiles - files, favail: maxFiles - files,
      fsid: parseInt(this.sb.uuid.slice(0, 8), 16) >>> 0, flag: 0, namemax: NAME_MAX
    }
  }

  get used (): number { return this.data.used }

  /**
   * Remount (-o remount,ro / remount,rw): to read-only, write back
   * everything and make it durable, stop the writeback timer, then refuse
   * every change (EROFS); back to read-write, restart writeback and free
   * the orphans whose last handle went while read-only. The caller makes
   * sure no write is in flight (the kernel refuses to remount read-only
   * while files are open for writing, and is made read-only first). An
   * image opened read-only (-o ro) cannot become writable: EROFS.
   */
  async setReadonly (ro: boolean): Promise<void> {
    if (ro === this.ro) return
    if (!ro && this.imageReadonly) throw fsErr('EROFS', 'image opened read-only')
    if (ro) {
      await this.sync()
      this.writeback.stop()
      this.ro = true
      return
    }
    this.ro = false
    this.writeback.start()
    for (const ino of this.q.allOrphans.all() as number[]) this.freeIfUnused(ino)
  }

  /**
   * Write back everything, then close the image (checkpointed, a plain
   * database at rest). `sessionOver`: no request can come any more, so the
   * handles still open are released first, and the files deleted while
   * open go with them. The kernel does not always send their RELEASE: the
   * close that ends a lazy unmount (the last use of the mount) comes
   * without one, and the image would keep such a file's blocks until the
   * next mount. A writeback that fails (the host's disk full) does not
   * stop the close: the image is closed all the same, then close throws,
   * so that the daemon reports the loss (umount exits 7). Misuse:
   * sessionOver while requests may still come (a write to a file the
   * reaper is freeing).
   */
  async close (sessionOver = false): Promise<void> {
    if (sessionOver) for (const fh of [...this.handles.keys()]) this.release(fh)
    this.writeback.stop()
    if (this.freesTimer) clearInterval(this.freesTimer)
    let lost: unknown = null
    if (!this.imageReadonly) {
      try {
        const wasWritable = !this.ro
        await this.sync() // the bulk, while requests may still come (SIGTERM: files open through the lazily unmounted mount)
        // from here changes get EROFS; those already let in finish, and
        // what they left dirty is written back too
        this.ro = true
        await this.changesSettled()
        if (wasWritable) {
          await this.writeback.all()
          this.data.checkpoint()
        }
      } catch (err) {
        lost = err // the image still closes cleanly; the caller hears of the loss below
      }
      await this.data.reusableSettled() // punches of the last frees, before the data area closes
      flushBatch(this.db)
      this.data.closeWal()
      if (this.data.walFailure !== null) {
        // after a failed sync of the WAL, the image closes as a crash
        // leaves it: no checkpoint (it would copy the frames whose write
        // failed, unchecked); the next open recovers from the WAL
        noCheckpointOnClose(this.db)
      } else {
        // leave the image as a plain database at rest (see mkfs), without free pages (auto_vacuum = INCREMENTAL; a no-op on older images: fsck --compact)
        try { this.db.pragma('incremental_vacuum') } catch { /* best effort: the pages stay free inside the file */ }
        try { this.db.pragma('journal_mode = DELETE') } catch { /* best effort: the WAL replays on next open */ }
      }
    }
    await this.data.plans.drained() // libfuse threads may still read the data area (an unmount by SIGTERM)
    this.db.close()
    this.data.area.close()
    if (lost !== null) throw new Error(`writeback at close failed, unwritten data is lost: ${lost instanceof Error ? lost.message : String(lost)}`)
  }
}

