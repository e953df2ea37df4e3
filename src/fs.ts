// FolioFs: the filesystem proper, independent of FUSE. Every operation is
// synchronous and runs inside one SQLite transaction (better-sqlite3), so a
// crash leaves the last committed state and no operation is half applied.
import type Database from 'better-sqlite3'
import { fsErr, NAME_MAX, PATH_MAX, XATTR_NAME_MAX, XATTR_SIZE_MAX } from './errno'
import { BLOCK_SIZE, ROOT_INO, nowTime, type OpenImage, type Superblock } from './image'
import { FileData } from './filedata'
import type { TreeOptions } from './btree/tree'

export const S_IFMT = 0o170000
export const S_IFDIR = 0o040000
export const S_IFREG = 0o100000
export const S_IFLNK = 0o120000
const UTIME_NOW = (1 << 30) - 1
const UTIME_OMIT = (1 << 30) - 2
const XATTR_CREATE = 1
const XATTR_REPLACE = 2
const RELATIME_SEC = 24 * 3600
export const MAX_FILE_SIZE = 2 ** 52 // bytes; keeps block numbers exact in doubles

export interface Time { sec: number, nsec: number }

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

export interface Creds { uid: number, gid: number }

export interface StatFs {
  bsize: number, frsize: number, blocks: number, bfree: number, bavail: number,
  files: number, ffree: number, favail: number, fsid: number, flag: number, namemax: number
}

interface Handle { ino: number, flags: number, dir: boolean }

const isDir = (mode: number): boolean => (mode & S_IFMT) === S_IFDIR

/**
 * libfuse (without hard_remove) unlinks an open file by renaming it to
 * '.fuse_hiddenXXXXXXXXXXXXXXXX' and unlinks that name after the last close.
 * We treat that rename as the unlink itself and keep the hidden name only in
 * memory, so it never shows in readdir nor keeps a directory from rmdir.
 */
export const HIDDEN_NAME = /^\.fuse_hidden[0-9a-f]{16}$/

/** Split '/a/b/c' into its parent path and last name, validating lengths. */
export function splitPath (path: string): { parent: string, name: string } {
  if (Buffer.byteLength(path) >= PATH_MAX) throw fsErr('ENAMETOOLONG', path.slice(0, 64))
  const i = path.lastIndexOf('/')
  const name = path.slice(i + 1)
  checkName(name)
  return { parent: i <= 0 ? '/' : path.slice(0, i), name }
}

export function checkName (name: string): void {
  if (name === '' || name === '.' || name === '..') throw fsErr('EINVAL', `bad name '${name}'`)
  if (Buffer.byteLength(name) > NAME_MAX) throw fsErr('ENAMETOOLONG', `${name.slice(0, 32)}...`)
}

export class FolioFs {
  readonly db: Database.Database
  readonly sb: Superblock
  readonly readonly: boolean
  private readonly handles = new Map<number, Handle>()
  private readonly openCount = new Map<number, number>()
  private readonly hidden = new Map<string, number>()
  private nextFh = 1
  /** mount -o noatime: never update atime on read */
  noatime = false
  /** file data: extent B-tree + blocks table */
  readonly data: FileData
  readonly counters = { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, fsyncs: 0, commits: 0 }

  private readonly q: ReturnType<FolioFs['prepare']>

  constructor (img: OpenImage, treeOpts: TreeOptions = {}) {
    this.db = img.db
    this.sb = img.sb
    this.readonly = img.readonly
    this.q = this.prepare()
    this.data = new FileData(this.db, { ...treeOpts, totalBlocks: img.sb.capacityBlocks })
    if (!this.readonly) this.reapOrphans()
  }

  private prepare () {
    const db = this.db
    return {
      getInode: db.prepare('SELECT * FROM inodes WHERE ino = ?'),
      lookup: db.prepare('SELECT ino FROM dirents WHERE parent = ? AND name = ?').pluck(),
      listDir: db.prepare('SELECT name, ino FROM dirents WHERE parent = ? ORDER BY name'),
      dirHasEntries: db.prepare('SELECT 1 FROM dirents WHERE parent = ? LIMIT 1').pluck(),
      insDirent: db.prepare('INSERT INTO dirents (parent, name, ino) VALUES (?, ?, ?)'),
      delDirent: db.prepare('DELETE FROM dirents WHERE parent = ? AND name = ?'),
      insInode: db.prepare(`INSERT INTO inodes (mode, uid, gid, nlink, size, rdev, parent, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns, target)
                            VALUES (@mode, @uid, @gid, @nlink, @size, @rdev, @parent, @s, @ns, @s, @ns, @s, @ns, @target)`),
      delInode: db.prepare('DELETE FROM inodes WHERE ino = ?'),
      setNlink: db.prepare('UPDATE inodes SET nlink = ?, ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
      addNlink: db.prepare('UPDATE inodes SET nlink = nlink + ? WHERE ino = ?'),
      touchMC: db.prepare('UPDATE inodes SET mtime_s = ?, mtime_ns = ?, ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
      touchC: db.prepare('UPDATE inodes SET ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
      setAtime: db.prepare('UPDATE inodes SET atime_s = ?, atime_ns = ? WHERE ino = ?'),
      setTimes: db.prepare('UPDATE inodes SET atime_s = ?, atime_ns = ?, mtime_s = ?, mtime_ns = ?, ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
      setMode: db.prepare('UPDATE inodes SET mode = ?, ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
      setOwner: db.prepare('UPDATE inodes SET uid = ?, gid = ?, mode = ?, ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
      setParent: db.prepare('UPDATE inodes SET parent = ? WHERE ino = ?'),
      setSize: db.prepare('UPDATE inodes SET size = ?, blocks = blocks + ?, mtime_s = ?, mtime_ns = ?, ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
      delXattrs: db.prepare('DELETE FROM xattrs WHERE ino = ?'),
      getXattr: db.prepare('SELECT value FROM xattrs WHERE ino = ? AND name = ?').pluck(),
      putXattr: db.prepare('INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?, ?, ?)'),
      delXattr: db.prepare('DELETE FROM xattrs WHERE ino = ? AND name = ?'),
      listXattr: db.prepare('SELECT name FROM xattrs WHERE ino = ? ORDER BY name').pluck(),
      addOrphan: db.prepare('INSERT OR IGNORE INTO orphans (ino) VALUES (?)'),
      delOrphan: db.prepare('DELETE FROM orphans WHERE ino = ?'),
      allOrphans: db.prepare('SELECT ino FROM orphans').pluck(),
      countInodes: db.prepare('SELECT count(*) FROM inodes').pluck()
    }
  }

  /** Run fn in one SQLite transaction (one commit). */
  tx<T> (fn: () => T): T {
    if (this.readonly) throw fsErr('EROFS')
    const commits = this.data.tree.stats.commits
    try {
      const r = this.db.transaction(fn)()
      this.counters.commits++
      return r
    } catch (err) {
      // a B-tree commit inside a rolled-back transaction: its in-memory state is ahead of the image
      if (this.data.tree.stats.commits !== commits) this.data.reload()
      throw err
    }
  }

  // ---- inode helpers -------------------------------------------------

  inode (ino: number): Inode {
    const row = this.q.getInode.get(ino) as Inode | undefined
    if (!row) throw fsErr('ENOENT', `inode ${ino}`)
    return row
  }

  stat (ino: number): Stat {
    return this.toStat(this.inode(ino))
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

  /** Resolve an absolute path to an inode number. */
  resolve (path: string): number {
    if (path === '/' || path === '') return ROOT_INO
    if (Buffer.byteLength(path) >= PATH_MAX) throw fsErr('ENAMETOOLONG')
    const parts = path.split('/')
    const hiddenIno = this.hidden.get(parts[parts.length - 1])
    if (hiddenIno !== undefined) return hiddenIno
    let ino = ROOT_INO
    for (let k = 1; k < parts.length; k++) {
      const name = parts[k]
      if (name === '') continue
      if (Buffer.byteLength(name) > NAME_MAX) throw fsErr('ENAMETOOLONG')
      const next = this.q.lookup.get(ino, name) as number | undefined
      if (next === undefined) {
        if (k > 1 && !isDir(this.inode(ino).mode)) throw fsErr('ENOTDIR')
        throw fsErr('ENOENT', path)
      }
      ino = next
    }
    return ino
  }

  private dirIno (path: string): number {
    const ino = this.resolve(path)
    if (!isDir(this.inode(ino).mode)) throw fsErr('ENOTDIR', path)
    return ino
  }

  // ---- namespace operations ------------------------------------------

  private createNode (path: string, mode: number, creds: Creds, rdev = 0, target: Buffer | null = null): number {
    const { parent, name } = splitPath(path)
    return this.tx(() => {
      const pino = this.dirIno(parent)
      if (this.q.lookup.get(pino, name) !== undefined) throw fsErr('EEXIST', path)
      const t = nowTime()
      const p = this.inode(pino)
      let gid = creds.gid
      // setgid directories pass their group (and, for subdirs, the bit) on
      if (p.mode & 0o2000) {
        gid = p.gid
        if (isDir(mode)) mode |= 0o2000
      }
      const dir = isDir(mode)
      const res = this.q.insInode.run({
        mode, uid: creds.uid, gid, nlink: dir ? 2 : 1, size: target ? target.length : 0, rdev,
        parent: dir ? pino : 0, s: t.sec, ns: t.nsec, target
      })
      const ino = Number(res.lastInsertRowid)
      this.q.insDirent.run(pino, name, ino)
      if (dir) this.q.addNlink.run(1, pino)
      this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, pino)
      return ino
    })
  }

  create (path: string, mode: number, creds: Creds): number {
    if ((mode & S_IFMT) === 0) mode |= S_IFREG
    return this.createNode(path, mode, creds)
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
    const t = Buffer.from(target)
    if (t.length === 0) throw fsErr('ENOENT')
    if (t.length >= PATH_MAX) throw fsErr('ENAMETOOLONG')
    return this.createNode(path, S_IFLNK | 0o777, creds, 0, t)
  }

  readlink (path: string): string {
    const i = this.inode(this.resolve(path))
    if ((i.mode & S_IFMT) !== S_IFLNK || !i.target) throw fsErr('EINVAL')
    return i.target.toString()
  }

  link (src: string, dst: string): void {
    const { parent, name } = splitPath(dst)
    this.tx(() => {
      const ino = this.resolve(src)
      const i = this.inode(ino)
      if (isDir(i.mode)) throw fsErr('EPERM', 'hard link to directory')
      if (i.nlink >= 65000) throw fsErr('EMLINK')
      const pino = this.dirIno(parent)
      if (this.q.lookup.get(pino, name) !== undefined) throw fsErr('EEXIST', dst)
      const t = nowTime()
      this.q.insDirent.run(pino, name, ino)
      this.q.setNlink.run(i.nlink + 1, t.sec, t.nsec, ino)
      this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, pino)
    })
  }

  /** Drop one link to ino; free it when no link and no open handle remain. */
  private dropLink (ino: number, t: Time): void {
    const i = this.inode(ino)
    const nlink = isDir(i.mode) ? 0 : i.nlink - 1
    if (nlink > 0) {
      this.q.setNlink.run(nlink, t.sec, t.nsec, ino)
      return
    }
    if ((this.openCount.get(ino) ?? 0) > 0) {
      this.q.setNlink.run(0, t.sec, t.nsec, ino)
      this.q.addOrphan.run(ino)
      return
    }
    this.freeInode(ino)
  }

  private freeInode (ino: number): void {
    if ((this.inode(ino).mode & S_IFMT) === S_IFREG) this.data.free(ino)
    this.q.delXattrs.run(ino)
    this.q.delInode.run(ino)
    this.q.delOrphan.run(ino)
  }

  /** Free inodes that were unlinked while open when the last mount ended. */
  private reapOrphans (): void {
    const orphans = this.q.allOrphans.all() as number[]
    if (orphans.length) this.tx(() => { for (const ino of orphans) this.freeInode(ino) })
  }

  unlink (path: string): void {
    const { parent, name } = splitPath(path)
    const hiddenIno = this.hidden.get(name)
    if (hiddenIno !== undefined) {
      // libfuse's final unlink of a file we already unlinked at its hide-rename
      this.hidden.delete(name)
      this.freeIfUnused(hiddenIno)
      return
    }
    this.tx(() => {
      const pino = this.dirIno(parent)
      const ino = this.q.lookup.get(pino, name) as number | undefined
      if (ino === undefined) throw fsErr('ENOENT', path)
      if (isDir(this.inode(ino).mode)) throw fsErr('EISDIR', path)
      const t = nowTime()
      this.q.delDirent.run(pino, name)
      this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, pino)
      this.dropLink(ino, t)
    })
  }

  rmdir (path: string): void {
    if (path === '/') throw fsErr('EBUSY')
    const { parent, name } = splitPath(path)
    this.tx(() => {
      const pino = this.dirIno(parent)
      const ino = this.q.lookup.get(pino, name) as number | undefined
      if (ino === undefined) throw fsErr('ENOENT', path)
      if (!isDir(this.inode(ino).mode)) throw fsErr('ENOTDIR', path)
      if (this.q.dirHasEntries.get(ino) !== undefined) throw fsErr('ENOTEMPTY', path)
      const t = nowTime()
      this.q.delDirent.run(pino, name)
      this.q.addNlink.run(-1, pino)
      this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, pino)
      this.dropLink(ino, t)
    })
  }

  rename (src: string, dst: string): void {
    const s = splitPath(src)
    const d = splitPath(dst)
    if (HIDDEN_NAME.test(d.name) && !this.hidden.has(d.name)) {
      const ino = this.resolve(src)
      if (!isDir(this.inode(ino).mode)) {
        this.unlink(src)
        this.hidden.set(d.name, ino)
        return
      }
    }
    this.tx(() => {
      const sp = this.dirIno(s.parent)
      const dp = this.dirIno(d.parent)
      const ino = this.q.lookup.get(sp, s.name) as number | undefined
      if (ino === undefined) throw fsErr('ENOENT', src)
      const srcInode = this.inode(ino)
      const srcIsDir = isDir(srcInode.mode)
      const existing = this.q.lookup.get(dp, d.name) as number | undefined
      if (existing === ino) return // same file: POSIX says do nothing
      if (srcIsDir) {
        // refuse to move a directory below itself
        for (let a = dp; ; a = this.inode(a).parent) {
          if (a === ino) throw fsErr('EINVAL', 'rename into own subtree')
          if (a === ROOT_INO) break
        }
      }
      const t = nowTime()
      if (existing !== undefined) {
        const ex = this.inode(existing)
        if (isDir(ex.mode)) {
          if (!srcIsDir) throw fsErr('EISDIR', dst)
          if (this.q.dirHasEntries.get(existing) !== undefined) throw fsErr('ENOTEMPTY', dst)
          this.q.addNlink.run(-1, dp)
        } else if (srcIsDir) {
          throw fsErr('ENOTDIR', dst)
        }
        this.q.delDirent.run(dp, d.name)
        this.dropLink(existing, t)
      }
      this.q.delDirent.run(sp, s.name)
      this.q.insDirent.run(dp, d.name, ino)
      if (srcIsDir && sp !== dp) {
        this.q.addNlink.run(-1, sp)
        this.q.addNlink.run(1, dp)
        this.q.setParent.run(dp, ino)
      }
      this.q.touchC.run(t.sec, t.nsec, ino)
      this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, sp)
      if (dp !== sp) this.q.touchMC.run(t.sec, t.nsec, t.sec, t.nsec, dp)
    })
  }

  readdir (path: string): { names: string[], stats: Stat[] } {
    const ino = this.dirIno(path)
    const rows = this.q.listDir.all(ino) as Array<{ name: string, ino: number }>
    const names = ['.', '..']
    const stats = [this.stat(ino), this.stat(this.inode(ino).parent || ROOT_INO)]
    for (const r of rows) {
      names.push(r.name)
      stats.push(this.stat(r.ino))
    }
    return { names, stats }
  }

  // ---- attributes ------------------------------------------------------

  chmod (ino: number, mode: number): void {
    this.tx(() => {
      const i = this.inode(ino)
      const t = nowTime()
      this.q.setMode.run((i.mode & S_IFMT) | (mode & 0o7777), t.sec, t.nsec, ino)
    })
  }

  chown (ino: number, uid: number, gid: number): void {
    this.tx(() => {
      const i = this.inode(ino)
      const t = nowTime()
      const nuid = uid === 0xffffffff || uid === -1 ? i.uid : uid
      const ngid = gid === 0xffffffff || gid === -1 ? i.gid : gid
      let mode = i.mode
      // like the kernel: a real ownership change drops setuid, and setgid on group-executable files
      if (!isDir(mode) && (nuid !== i.uid || ngid !== i.gid)) {
        mode &= ~0o4000
        if (mode & 0o010) mode &= ~0o2000
      }
      this.q.setOwner.run(nuid, ngid, mode, t.sec, t.nsec, ino)
    })
  }

  utimens (ino: number, atime: Time, mtime: Time): void {
    this.tx(() => {
      const i = this.inode(ino)
      const now = nowTime()
      const pick = (v: Time, s: number, ns: number): Time =>
        v.nsec === UTIME_OMIT ? { sec: s, nsec: ns } : v.nsec === UTIME_NOW ? now : v
      const a = pick(atime, i.atime_s, i.atime_ns)
      const m = pick(mtime, i.mtime_s, i.mtime_ns)
      this.q.setTimes.run(a.sec, a.nsec, m.sec, m.nsec, now.sec, now.nsec, ino)
    })
  }

  // ---- file data -------------------------------------------------------

  open (ino: number, flags: number, dir = false): number {
    const fh = this.nextFh++
    this.handles.set(fh, { ino, flags, dir })
    this.openCount.set(ino, (this.openCount.get(ino) ?? 0) + 1)
    return fh
  }

  handle (fh: number): Handle {
    const h = this.handles.get(fh)
    if (!h) throw fsErr('EBADF', `fh ${fh}`)
    return h
  }

  private freeIfUnused (ino: number): void {
    if ((this.openCount.get(ino) ?? 0) > 0 || this.readonly) return
    const row = this.q.getInode.get(ino) as Inode | undefined
    if (row && row.nlink === 0) this.tx(() => this.freeInode(ino))
  }

  release (fh: number): void {
    const h = this.handles.get(fh)
    if (!h) return
    this.handles.delete(fh)
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

  read (ino: number, buf: Buffer, len: number, pos: number): number {
    const i = this.inode(ino)
    if (isDir(i.mode)) throw fsErr('EISDIR')
    if (pos >= i.size || len <= 0) return 0
    const n = Math.min(len, i.size - pos)
    this.data.read(ino, buf, pos, n)
    this.counters.reads++
    this.counters.bytesRead += n
    this.touchAtime(i)
    return n
  }

  /** relatime: update atime only when it is older than mtime/ctime or a day old. */
  private touchAtime (i: Inode): void {
    if (this.readonly || this.noatime) return
    const t = nowTime()
    const older = i.atime_s < i.mtime_s || (i.atime_s === i.mtime_s && i.atime_ns <= i.mtime_ns) ||
      i.atime_s < i.ctime_s || t.sec - i.atime_s >= RELATIME_SEC
    if (older) this.tx(() => this.q.setAtime.run(t.sec, t.nsec, i.ino))
  }

  write (ino: number, data: Buffer, pos: number): number {
    const len = data.length
    if (len === 0) return 0
    if (pos + len > MAX_FILE_SIZE) throw fsErr('EFBIG')
    return this.tx(() => {
      const i = this.inode(ino)
      if (isDir(i.mode)) throw fsErr('EISDIR')
      this.data.write(ino, data, pos, added => {
        const t = nowTime()
        this.q.setSize.run(Math.max(i.size, pos + len), added, t.sec, t.nsec, t.sec, t.nsec, ino)
      })
      this.counters.writes++
      this.counters.bytesWritten += len
      return len
    })
  }

  truncate (ino: number, size: number): void {
    if (size < 0) throw fsErr('EINVAL')
    if (size > MAX_FILE_SIZE) throw fsErr('EFBIG')
    this.tx(() => {
      const i = this.inode(ino)
      if (isDir(i.mode)) throw fsErr('EISDIR')
      const freed = size < i.size ? this.data.truncate(ino, size) : 0
      const t = nowTime()
      this.q.setSize.run(size, -freed, t.sec, t.nsec, t.sec, t.nsec, ino)
    })
  }

  /** Make everything committed so far durable (WAL synced and checkpointed). */
  fsync (): void {
    this.counters.fsyncs++
    if (!this.readonly) this.db.pragma('wal_checkpoint(PASSIVE)')
  }

  // ---- extended attributes -------------------------------------------

  private checkXattrName (name: string): void {
    if (name.length === 0 || Buffer.byteLength(name) > XATTR_NAME_MAX) throw fsErr('ERANGE')
    if (!/^(user|trusted|security)\./.test(name)) throw fsErr('EOPNOTSUPP', name)
  }

  setxattr (ino: number, name: string, value: Buffer, flags: number): void {
    this.checkXattrName(name)
    if (value.length > XATTR_SIZE_MAX) throw fsErr('E2BIG')
    this.tx(() => {
      this.inode(ino)
      const exists = this.q.getXattr.get(ino, name) !== undefined
      if ((flags & XATTR_CREATE) && exists) throw fsErr('EEXIST')
      if ((flags & XATTR_REPLACE) && !exists) throw fsErr('ENODATA')
      this.q.putXattr.run(ino, name, Buffer.from(value))
      const t = nowTime()
      this.q.touchC.run(t.sec, t.nsec, ino)
    })
  }

  getxattr (ino: number, name: string): Buffer {
    this.inode(ino)
    if (!/^(user|trusted|security)\./.test(name)) throw fsErr('ENODATA')
    const v = this.q.getXattr.get(ino, name) as Buffer | undefined
    if (v === undefined) throw fsErr('ENODATA')
    return v
  }

  listxattr (ino: number): string[] {
    this.inode(ino)
    return this.q.listXattr.all(ino) as string[]
  }

  removexattr (ino: number, name: string): void {
    this.checkXattrName(name)
    this.tx(() => {
      if (this.q.delXattr.run(ino, name).changes === 0) throw fsErr('ENODATA')
      const t = nowTime()
      this.q.touchC.run(t.sec, t.nsec, ino)
    })
  }

  // ---- whole-filesystem ------------------------------------------------

  statfs (): StatFs {
    const total = this.sb.capacityBlocks
    const free = this.data.tree.alloc.free
    const files = (this.q.countInodes.get() as number)
    const maxFiles = 1 << 30
    return {
      bsize: BLOCK_SIZE, frsize: BLOCK_SIZE, blocks: total, bfree: free, bavail: free,
      files: maxFiles, ffree: maxFiles - files, favail: maxFiles - files,
      fsid: parseInt(this.sb.uuid.slice(0, 8), 16) >>> 0, flag: 0, namemax: NAME_MAX
    }
  }

  get used (): number { return this.data.used }

  close (): void {
    if (!this.readonly) {
      // checkpoint and leave the image as a plain database at rest (see mkfs)
      try { this.db.pragma('journal_mode = DELETE') } catch { /* best effort: the WAL replays on next open */ }
    }
    this.db.close()
  }
}

