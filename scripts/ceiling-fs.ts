// The FUSE ceiling: a minimal in-memory filesystem on the same patched
// fuse-native, mounted with foliofs's own libfuse options. Whatever it
// reaches is the most any fuse-native filesystem can reach on this machine,
// so `npm run bench` (scripts/bench-fs.sh) reports foliofs against it.
//   node dist/scripts/ceiling-fs.js MOUNTPOINT
// Prints `ready` once mounted; stays in the foreground until SIGTERM or
// SIGINT (or an external unmount), then unmounts and exits 0.
//
// Not a real filesystem: no persistence, no permission bookkeeping beyond
// mode/uid/gid (the kernel checks them: default_permissions). It has hard
// links and symlinks, so bench-meta's mixed workload runs on it too. It
// has xattrs, in memory, answered as foliofs answers them: getxattr of a name the kernel probes on its own (ACLs,
// the SELinux label, for each entry of `ls -l`) that no inode has is
// answered by the binding without a call (setAbsentXattrs), the others
// here. Without xattrs (ENOSYS) the kernel would stop asking altogether,
// and `ls -l` would be measured against a filesystem that makes one
// round trip per entry fewer than any filesystem with ACLs can. Callbacks
// follow fuse-native's rules: a result or a negative errno, never an
// Error, never a throw.
import * as path from 'path'
import { constants } from 'os'
import { fuseExtraOptions, parseMountOptions, setReadahead } from '../src/daemon'
// the names the kernel probes on its own, answered as foliofs answers them
import { PROBED_XATTRS, UNSUPPORTED_WHILE_ABSENT } from '../src/coherence'
import { XATTR_CREATE, XATTR_REPLACE } from '../src/fs'

type Cb = (...args: any[]) => void
interface Time { sec: number, nsec: number }

const S_IFMT = 0o170000
const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const S_IFLNK = 0o120000
const UTIME_NOW = (1 << 30) - 1
const UTIME_OMIT = (1 << 30) - 2
const BLOCK = 4096

class Errno extends Error {
  constructor (readonly code: keyof typeof constants.errno) { super(code) }
}
const err = (code: keyof typeof constants.errno): Errno => new Errno(code)

interface Node {
  ino: number
  mode: number
  uid: number
  gid: number
  nlink: number
  size: number
  /** file bytes; capacity >= size, bytes past size are garbage (zeroed when exposed) */
  data: Buffer
  atime: Time
  mtime: Time
  ctime: Time
  children: Map<string, Node> | null
  /** a symlink's target */
  target?: string
  xattrs: Map<string, Buffer> | null
}

function now (): Time {
  const ms = Date.now()
  return { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1e6 }
}

let nextIno = 1
function newNode (mode: number, uid: number, gid: number): Node {
  const t = now()
  const dir = (mode & S_IFMT) === S_IFDIR
  return { ino: nextIno++, mode, uid, gid, nlink: dir ? 2 : 1, size: 0, data: Buffer.alloc(0), atime: t, mtime: t, ctime: t, children: dir ? new Map() : null, xattrs: null }
}

const root = newNode(S_IFDIR | 0o755, process.getuid?.() ?? 0, process.getgid?.() ?? 0)
const handles = new Map<number, Node>()
let nextFh = 1

function lookup (p: string): Node {
  let n = root
  for (const part of p.split('/')) {
    if (!part) continue
    if (!n.children) throw err('ENOTDIR')
    const c = n.children.get(part)
    if (!c) throw err('ENOENT')
    n = c
  }
  return n
}

function parentOf (p: string): { dir: Node, name: string } {
  const name = path.posix.basename(p)
  if (Buffer.byteLength(name) > 255) throw err('ENAMETOOLONG')
  const dir = lookup(path.posix.dirname(p))
  if (!dir.children) throw err('ENOTDIR')
  return { dir, name }
}

function nodeOf (p: string | null, fd: number): Node {
  if (fd) {
    const h = handles.get(fd)
    if (h) return h
  }
  if (p === null) throw err('EBADF')
  return lookup(p)
}

function stat (n: Node): Record<string, unknown> {
  return {
    ino: n.ino, mode: n.mode, nlink: n.nlink, uid: n.uid, gid: n.gid, rdev: 0,
    size: n.children ? BLOCK : n.size, blksize: BLOCK, blocks: Math.ceil(n.size / 512),
    atime: n.atime, mtime: n.mtime, ctime: n.ctime
  }
}

/** Make room for `end` bytes (geometric growth) and zero [size, from) so holes read as zeros. */
function reserve (n: Node, end: number, from: number): void {
  if (end > n.data.length) {
    const cap = Math.max(end, Math.min(n.data.length * 2, 2 ** 32 - 1), 64 * 1024)
    const d = Buffer.allocUnsafe(cap)
    n.data.copy(d, 0, 0, n.size)
    n.data = d
  }
  if (from > n.size) n.data.fill(0, n.size, from)
}

function setSize (n: Node, size: number): void {
  if (size > n.size) {
    reserve(n, size, size)
  } else if (size < n.data.length / 4 && n.data.length > 1 << 20) {
    n.data = Buffer.from(n.data.subarray(0, size)) // give memory back after a big shrink
  }
  n.size = size
  n.mtime = n.ctime = now()
}

function toErrno (e: unknown): number {
  if (e instanceof Errno) return -constants.errno[e.code]
  return -constants.errno.EIO
}

/** Reply cb(0, ...result) or cb(-errno), exactly once, never throwing. */
function reply (cb: Cb, fn: () => unknown[] | void): void {
  let r: unknown[] | void
  try {
    r = fn()
  } catch (e) {
    cb(toErrno(e))
    return
  }
  cb(0, ...(r ?? []))
}

/** read/write: the result (a byte count) is the first callback argument. */
function replyValue (cb: Cb, fn: () => number): void {
  let v: number
  try {
    v = fn()
  } catch (e) {
    cb(toErrno(e))
    return
  }
  cb(v)
}

interface Binding { context?: { uid: number, gid: number }, setAbsentXattrs?: (names: string[], unsupported: string[]) => void }

function makeOps (ctx: () => Binding | undefined): { ops: Record<string, Cb>, publishAbsent: () => void } {
  /** probed names stored on some inode since the mount: the binding answers the others */
  const stored = new Set<string>()
  const publishAbsent = (): void => {
    const absent = PROBED_XATTRS.filter(n => !stored.has(n))
    ctx()?.setAbsentXattrs?.(absent, UNSUPPORTED_WHILE_ABSENT.filter(n => absent.includes(n)))
  }
  const xattrStored = (name: string): void => {
    if (stored.has(name) || !PROBED_XATTRS.includes(name)) return
    stored.add(name)
    publishAbsent()
  }
  const creds = (): { uid: number, gid: number } => {
    const c = ctx()?.context
    return { uid: c?.uid ?? 0, gid: c?.gid ?? 0 }
  }
  /** give the node make() returns (new, or an existing file: link) the name p */
  const place = (p: string, make: () => Node): Node => {
    const { dir, name } = parentOf(p)
    if (dir.children!.has(name)) throw err('EEXIST')
    const n = make()
    dir.children!.set(name, n)
    if (n.children) dir.nlink++
    dir.mtime = dir.ctime = now()
    return n
  }
  const add = (p: string, mode: number): Node => place(p, () => {
    const c = creds()
    return newNode(mode, c.uid, c.gid)
  })
  const listings = new Map<number, Array<[string, Node]>>()
  const open = (n: Node): number => {
    const fh = nextFh++
    handles.set(fh, n)
    return fh
  }
  const ops: Record<string, Cb> = {
    init: (cb: Cb) => cb(0),
    // xattr operations of an open file come by its handle (fd) when the binding has one, else by path
    setxattr: (p: string | null, name: string, value: Buffer, _pos: number, flags: number, fd: number, cb: Cb) => reply(cb, () => {
      const n = nodeOf(p, fd)
      const has = n.xattrs?.has(name) ?? false
      if ((flags & XATTR_CREATE) && has) throw err('EEXIST')
      if ((flags & XATTR_REPLACE) && !has) throw err('ENODATA')
      xattrStored(name)
      n.xattrs ??= new Map()
      n.xattrs.set(name, Buffer.from(value))
      n.ctime = now()
    }),
    getxattr: (p: string | null, name: string, _pos: number, fd: number, cb: Cb) => reply(cb, () => {
      const v = nodeOf(p, fd).xattrs?.get(name)
      if (!v) throw err(UNSUPPORTED_WHILE_ABSENT.includes(name) && !stored.has(name) ? 'EOPNOTSUPP' : 'ENODATA')
      return [v]
    }),
    listxattr: (p: string | null, fd: number, cb: Cb) => reply(cb, () => [[...(nodeOf(p, fd).xattrs?.keys() ?? [])]]),
    removexattr: (p: string | null, name: string, fd: number, cb: Cb) => reply(cb, () => {
      const n = nodeOf(p, fd)
      if (!n.xattrs?.delete(name)) throw err('ENODATA')
      n.ctime = now()
    }),
    statfs: (_p: string, cb: Cb) => reply(cb, () => [{
      bsize: BLOCK, frsize: BLOCK, blocks: 2 ** 26, bfree: 2 ** 25, bavail: 2 ** 25,
      files: 2 ** 30, ffree: 2 ** 30 - nextIno, favail: 2 ** 30 - nextIno, fsid: 0xce11, flag: 0, namemax: 255
    }]),
    getattr: (p: string, cb: Cb) => reply(cb, () => [stat(lookup(p))]),
    fgetattr: (p: string | null, fd: number, cb: Cb) => reply(cb, () => [stat(nodeOf(p, fd))]),
    opendir: (p: string, _flags: number, cb: Cb) => reply(cb, () => [open(lookup(p))]),
    releasedir: (_p: string | null, fd: number, cb: Cb) => reply(cb, () => { handles.delete(fd); listings.delete(fd) }),
    // like foliofs: a listing per open directory, read 256 entries (with
    // their attributes: readdirplus) per request from the kernel's offset
    readdir: (p: string | null, fd: number, offset: number, cb: Cb) => reply(cb, () => {
      const d = nodeOf(p, fd)
      if (!d.children) throw err('ENOTDIR')
      let entries = listings.get(fd)
      if (offset === 0 || !entries) {
        entries = [['.', d], ['..', d], ...d.children.entries()]
        listings.set(fd, entries)
      }
      const part = entries.slice(offset, offset + 256)
      return [part.map(e => e[0]), part.map(e => stat(e[1])), part.map((_, k) => offset + k + 1)]
    }),
    // like foliofs, create and mkdir answer with the new inode's attributes (the binding answers libfuse's getattr after them)
    create: (p: string, mode: number, _flags: number, cb: Cb) => reply(cb, () => {
      const n = add(p, S_IFREG | (mode & 0o7777))
      return [open(n), stat(n)]
    }),
    open: (p: string, _flags: number, cb: Cb) => reply(cb, () => {
      const n = lookup(p)
      if (n.children) throw err('EISDIR')
      return [open(n)]
    }),
    release: (_p: string, fd: number, cb: Cb) => reply(cb, () => { handles.delete(fd) }),
    fsync: (_p: string, _datasync: number, _fd: number, cb: Cb) => cb(0),
    // again: the binding asks again after a read plan failed (fuse-native.patch); this FS answers no plans
    read: (p: string | null, fd: number, buf: Buffer, len: number, pos: number, _again: boolean, cb: Cb) => replyValue(cb, () => {
      const n = nodeOf(p, fd)
      if (pos >= n.size) return 0
      const end = Math.min(n.size, pos + len)
      return n.data.copy(buf, 0, pos, end)
    }),
    write: (p: string | null, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) => replyValue(cb, () => {
      const n = nodeOf(p, fd)
      const end = pos + len
      reserve(n, end, pos)
      buf.copy(n.data, pos, 0, len)
      if (end > n.size) n.size = end
      n.mtime = n.ctime = now()
      return len
    }),
    truncate: (p: string, size: number, cb: Cb) => reply(cb, () => { setSize(lookup(p), size) }),
    ftruncate: (p: string | null, fd: number, size: number, cb: Cb) => reply(cb, () => { setSize(nodeOf(p, fd), size) }),
    unlink: (p: string, cb: Cb) => reply(cb, () => {
      const { dir, name } = parentOf(p)
      const n = dir.children!.get(name)
      if (!n) throw err('ENOENT')
      if (n.children) throw err('EISDIR')
      dir.children!.delete(name)
      n.nlink--
      dir.mtime = dir.ctime = now()
    }),
    mkdir: (p: string, mode: number, cb: Cb) => reply(cb, () => [stat(add(p, S_IFDIR | (mode & 0o7777)))]),
    // like foliofs, link and symlink answer with the new name's attributes
    symlink: (target: string, p: string, cb: Cb) => reply(cb, () => {
      const n = add(p, S_IFLNK | 0o777)
      n.target = target
      n.size = Buffer.byteLength(target)
      return [stat(n)]
    }),
    readlink: (p: string, cb: Cb) => reply(cb, () => {
      const n = lookup(p)
      if (n.target === undefined) throw err('EINVAL')
      return [n.target]
    }),
    link: (src: string, dst: string, cb: Cb) => reply(cb, () => {
      const n = lookup(src)
      if (n.children) throw err('EPERM')
      place(dst, () => n)
      n.nlink++
      n.ctime = now()
      return [stat(n)]
    }),
    rmdir: (p: string, cb: Cb) => reply(cb, () => {
      const { dir, name } = parentOf(p)
      const n = dir.children!.get(name)
      if (!n) throw err('ENOENT')
      if (!n.children) throw err('ENOTDIR')
      if (n.children.size) throw err('ENOTEMPTY')
      dir.children!.delete(name)
      dir.nlink--
      dir.mtime = dir.ctime = now()
    }),
    rename: (src: string, dst: string, flags: number, cb: Cb) => reply(cb, () => {
      if (flags !== 0) throw err('EINVAL') // renameat2 flags: not in the ceiling
      const s = parentOf(src)
      const d = parentOf(dst)
      const n = s.dir.children!.get(s.name)
      if (!n) throw err('ENOENT')
      if ((dst + '/').startsWith(src + '/') && dst !== src) throw err('EINVAL')
      const old = d.dir.children!.get(d.name)
      if (old === n) return
      if (old) {
        if (n.children && !old.children) throw err('ENOTDIR')
        if (!n.children && old.children) throw err('EISDIR')
        if (old.children && old.children.size) throw err('ENOTEMPTY')
        if (old.children) d.dir.nlink--
        old.nlink = 0
      }
      s.dir.children!.delete(s.name)
      d.dir.children!.set(d.name, n)
      if (n.children && s.dir !== d.dir) { s.dir.nlink--; d.dir.nlink++ }
      const t = now()
      s.dir.mtime = s.dir.ctime = d.dir.mtime = d.dir.ctime = n.ctime = t
    }),
    utimens: (p: string | null, atime: Time, mtime: Time, fd: number, cb: Cb) => reply(cb, () => {
      const n = nodeOf(p, fd)
      const t = now()
      const pick = (v: Time, old: Time): Time => v.nsec === UTIME_OMIT ? old : v.nsec === UTIME_NOW ? t : { sec: v.sec, nsec: v.nsec }
      n.atime = pick(atime, n.atime)
      n.mtime = pick(mtime, n.mtime)
      n.ctime = t
    }),
    chmod: (p: string | null, mode: number, fd: number, cb: Cb) => reply(cb, () => {
      const n = nodeOf(p, fd)
      n.mode = (n.mode & S_IFMT) | (mode & 0o7777)
      n.ctime = now()
    }),
    chown: (p: string | null, uid: number, gid: number, fd: number, cb: Cb) => reply(cb, () => {
      const n = nodeOf(p, fd)
      if (uid !== -1 && uid !== 0xffffffff) n.uid = uid
      if (gid !== -1 && gid !== 0xffffffff) n.gid = gid
      n.ctime = now()
    })
  }
  return { ops, publishAbsent }
}

async function main (): Promise<number> {
  const mnt = process.argv[2]
  if (!mnt || process.argv.length > 3) {
    process.stderr.write('usage: node dist/scripts/ceiling-fs.js MOUNTPOINT\n')
    return 2
  }
  const mountpoint = path.resolve(mnt)
  const Fuse = require('fuse-native')
  // foliofs's options, except the subtype: /proc/mounts must not call this
  // mount fuse.foliofs (foliofs's tools and tests look for that type)
  const defaults = parseMountOptions([])
  const extra = fuseExtraOptions(defaults).map(o => o.startsWith('subtype=') ? 'subtype=foliofs-ceiling' : o)
  const holder: { fuse?: Binding } = {}
  const { ops, publishAbsent } = makeOps(() => holder.fuse)
  let sessionEnded = (): void => {}
  ops.destroy = (cb: Cb) => {
    cb(0)
    setImmediate(() => sessionEnded())
  }
  const fuse = new Fuse(mountpoint, ops, {
    fsname: 'ceilingfs',
    allowOther: process.getuid?.() === 0,
    debug: false,
    timeout: false,
    extraOptions: extra
  })
  holder.fuse = fuse
  try {
    await new Promise<void>((resolve, reject) => fuse.mount((e: Error | null) => e ? reject(e) : resolve()))
  } catch (e) {
    process.stderr.write(`ceiling-fs: mount failed: ${(e as Error).message}\n`)
    return 7
  }
  publishAbsent() // the session is up: the binding takes the set from here on
  await setReadahead(mountpoint, defaults.readaheadKb) // foliofs's readahead window too
  process.stdout.write('ready\n')
  return await new Promise<number>(resolve => {
    let closing = false
    const shutdown = (): void => {
      if (closing) return
      closing = true
      fuse.unmount((e: Error | null) => {
        if (e) process.stderr.write(`ceiling-fs: unmount: ${e.message}\n`)
        resolve(e ? 1 : 0)
      })
    }
    process.on('SIGINT', shutdown)
    process.on('SIGTERM', shutdown)
    process.on('SIGHUP', shutdown)
    sessionEnded = () => { if (!closing) { closing = true; resolve(0) } }
  })
}

main().then(code => process.exit(code), e => {
  process.stderr.write(`ceiling-fs: ${String(e)}\n`)
  process.exit(1)
})
