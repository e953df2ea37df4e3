// Adapter from fuse-native's callback API to FolioFs. Rules enforced here:
// every handler calls back exactly once, and only with a negative errno or a
// result (fuse-native hangs on Error objects and times out on throws).
import * as nodefs from 'fs'
import { constants } from 'os'
import { appends, FolioFs, noAtime, RENAME_EXCHANGE, type Listing, type Stat, type Time, type Writer } from './fs'
import { fsErr, toNegErrno } from './errno'
import { FOLIOFS_IOC_BUFSIZE, FOLIOFS_IOC_FIEMAP, FOLIOFS_IOC_REMOUNT, FOLIOFS_IOC_STATS, iocSize } from './ioctl'
import { flagsToXflags, FS_IOC_FSGETXATTR, FS_IOC_FSSETXATTR, FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FSXATTR_SIZE, IFLAGS_SIZE, xflagsToFlags } from './iflags'
import type { Coherence } from './coherence'
import { Flocks } from './flocks'
import type { PlanSink } from './readplan'
import createDebug from 'debug'

const debug = createDebug('foliofs:ops')

type Cb = (...args: any[]) => void

export interface FuseLike {
  /** the caller of the request being dispatched; writepage: a write of the kernel's page writeback (the binding's fuse_file_info.writepage) */
  context?: { uid: number, gid: number, pid: number, umask: number, writepage?: boolean }
  /** wakes the binding's blocked flock requests (flocks.ts) */
  flockReleased?: () => void
}

export interface OpsContext {
  fs: FolioFs
  fuse: FuseLike
  /** extra daemon statistics merged into the stats ioctl */
  extraStats: () => Record<string, unknown>
  /** the FUSE requests being served (filled in by makeOps) */
  requests: RequestStats
  /** kernel cache coherence (set once the mount is up; none: the kernel caches nothing that can go stale) */
  coherence?: Coherence
  /** the binding's libfuse threads run read plans (readplan.ts), and the mount wants them */
  readPlans?: boolean
  /** the binding's fsync takes a descriptor to fdatasync before it answers (Fuse.SYNC_FDS) */
  syncFds?: boolean
  /** flock(2) locks (set by makeOps) */
  flocks?: Flocks
}

/** /proc/PID/status of the caller (the request's pid is its thread's: /proc has that too), or null when it is gone or not in our /proc */
function procStatus (pid: number): string | null {
  if (!pid) return null
  try {
    return nodefs.readFileSync(`/proc/${pid}/status`, 'utf8')
  } catch {
    return null
  }
}

/** the supplementary groups of process pid (as libfuse's fuse_getgroups: /proc); none if it is gone */
function supplementaryGroups (pid: number): number[] {
  const m = /^Groups:\s*(.*)$/m.exec(procStatus(pid) ?? '')
  return m ? m[1].trim().split(/\s+/).filter(Boolean).map(Number) : []
}

export const CAP_FSETID = 4
export const CAP_SYS_ADMIN = 21

/**
 * What tells process pid's user namespace ('self': ours) apart, or null
 * when /proc cannot say: its uid_map, which anyone may read (the ns/user
 * link needs ptrace access to the process, which root lacks in a default
 * container: every caller then counted as in another namespace).
 */
function userNs (pid: number | 'self'): string | null {
  try {
    return nodefs.readFileSync(`/proc/${pid}/uid_map`, 'utf8')
  } catch {
    return null
  }
}

/**
 * Process pid has capability cap in its effective set (CapEff of
 * /proc/PID/status). Where /proc cannot say (the process is gone, or in
 * another pid namespace), uid 0 stands for it.
 * Misuse: trusting CapEff of a process in another user namespace. It is
 * relative to that namespace: after `unshare -r` an ordinary user has all
 * of them there, and none over our files (the kernel checks against the
 * namespace that owns them). Such a caller has none here.
 */
export function capable (pid: number, uid: number, cap: number): boolean {
  const m = /^CapEff:\s*([0-9a-fA-F]+)$/m.exec(procStatus(pid) ?? '')
  if (!m) return uid === 0
  const ns = userNs(pid)
  if (ns === null || ns !== userNs('self')) return false
  return ((BigInt(`0x${m[1]}`) >> BigInt(cap)) & 1n) === 1n
}
/**
 * Entries one READDIR request is answered with, at most: the binding drops
 * what does not fit the kernel's buffer (4 KiB to 1 MiB; ~150 bytes an
 * entry with attributes) and the kernel asks again from there.
 */
const READDIR_CHUNK = 256

function fail (name: string, cb: Cb, err: unknown): void {
  const n = toNegErrno(err)
  if (n === -5) debug('%s: EIO from %o', name, err)
  cb(n)
}

/** an answer of reply(): the callback's results, or a negative errno (an expected failure, not thrown) */
type Answer = unknown[] | void | number
const ENOENT = -constants.errno.ENOENT

function answer (cb: Cb, r: Answer): void {
  if (typeof r === 'number') cb(r)
  else cb(0, ...(r ?? []))
}

/**
 * Run fn (sync or async); reply cb(0, ...result) or cb(-errno), exactly
 * once. An operation that may answer before it is done calls `early`,
 * which answers at once (the binding hands the answer to the kernel there
 * and then), and passes `late`: once it has answered, what fn returns is
 * ignored, and an exception (or a rejection) goes to `late`: the answer
 * stands, so the failure is the filesystem's, not the request's.
 */
function reply (name: string, cb: Cb, fn: (early: (r: Answer) => void) => Answer | Promise<Answer>, late?: (err: unknown) => void): void {
  let answered = false
  const early = (r: Answer): void => {
    answered = true
    answer(cb, r)
  }
  const failed = (err: unknown): void => {
    if (!answered) fail(name, cb, err)
    else if (late) late(err)
    else debug('%s failed after its early answer, with no one to tell: %o', name, err) // (every caller of early passes late: replyEarly)
  }
  let res: Answer | Promise<Answer>
  try {
    res = fn(early)
  } catch (err) {
    failed(err)
    return
  }
  if (res instanceof Promise) res.then(r => { if (!answered) answer(cb, r) }, failed)
  else if (!answered) answer(cb, res)
}

/** Like reply, but the result itself is the first callback argument (read/write/ioctl). */
function replyValue (name: string, cb: Cb, fn: () => number | Promise<number>): void {
  let n: number | Promise<number>
  try {
    n = fn()
  } catch (err) {
    fail(name, cb, err)
    return
  }
  if (n instanceof Promise) n.then(v => cb(v), err => fail(name, cb, err))
  else cb(n)
}

/**
 * FUSE requests the daemon is serving: libfuse's worker threads each wait
 * on their own semaphore until JS answers, so inFlight is also how many of
 * them are busy (the binding runs at most 16).
 */
export interface RequestStats {
  total: number
  inFlight: number
  maxInFlight: number
  /** requests by operation */
  byOp: Record<string, number>
  /** ms from each request's start to its answer, summed by operation (where the latency a caller sees is spent in the daemon) */
  msByOp: Record<string, number>
  /** the longest synchronous stretch of one handler (ms), and its operation */
  maxSyncMs: number
  maxSyncOp: string
}

export const newRequestStats = (): RequestStats => ({ total: 0, inFlight: 0, maxInFlight: 0, byOp: {}, msByOp: {}, maxSyncMs: 0, maxSyncOp: '' })

/** wrap every handler so that its request is counted until it calls back */
function counted (ops: Record<string, Cb>, stats: RequestStats): Record<string, Cb> {
  for (const [name, fn] of Object.entries(ops)) {
    ops[name] = (...args: any[]) => {
      const cb = args[args.length - 1] as Cb
      stats.total++
      stats.byOp[name] = (stats.byOp[name] ?? 0) + 1
      stats.inFlight++
      if (stats.inFlight > stats.maxInFlight) stats.maxInFlight = stats.inFlight
      const t0 = performance.now()
      args[args.length - 1] = (...res: any[]) => {
        stats.inFlight--
        stats.msByOp[name] = (stats.msByOp[name] ?? 0) + (performance.now() - t0)
        cb(...res)
      }
      fn(...args)
      const ms = performance.now() - t0
      if (ms > stats.maxSyncMs) { stats.maxSyncMs = ms; stats.maxSyncOp = name }
    }
  }
  return ops
}

export function makeOps (ctx: OpsContext): Record<string, Cb> {
  const fs = ctx.fs
  const flocks = ctx.flocks = new Flocks(() => ctx.fuse.flockReleased?.())
  const creds = (): { uid: number, gid: number, umask: number } => {
    const c = ctx.fuse.context
    return { uid: c?.uid ?? process.getuid?.() ?? 0, gid: c?.gid ?? process.getgid?.() ?? 0, umask: c?.umask ?? 0 }
  }
  /** the caller of a write, truncate or ACL change (killPriv, setAcl): its groups and capability read from /proc only when needed */
  const writer = (): Writer => {
    const c = ctx.fuse.context
    const w = creds()
    const pid = c?.pid ?? 0
    return { ...w, inGroup: gid => supplementaryGroups(pid).includes(gid), fsetid: () => capable(pid, w.uid, CAP_FSETID) }
  }
  const ino = (path: string | null): number => {
    if (path === null) throw fsErr('ENOENT', 'unlinked')
    return fs.resolve(path)
  }
  const fileIno = (path: string | null, fd: number): number => (fd ? fs.handle(fd).ino : ino(path))
  /** the path whose kernel inode sent a request (coherence.ts) */
  const via = (path: string | null, fd: number): string | null => path ?? (fd ? ctx.coherence?.via(fd) ?? null : null)
  /**
   * r is the result of a change to inos made through the kernel inodes of
   * `from`: answer only once their other names are invalidated. `known`
   * inos were found shared before the change (an unlink makes them
   * unshared); the others are checked after it.
   */
  function settled<T> (r: T | Promise<T>, inos: number[], from: Array<string | null>, known: number[] = []): T | Promise<T> {
    const coh = ctx.coherence
    if (!coh) return r
    const finish = (v: T): T | Promise<T> => {
      const hit = [...known, ...inos.filter(i => !known.includes(i) && coh.shared(i))]
      return hit.length === 0 ? v : coh.others(hit, from).then(() => v)
    }
    return r instanceof Promise ? r.then(finish) : finish(r)
  }
  /** ino of path if it exists and has several names (before a change that may drop one) */
  const sharedAt = (path: string): number[] => {
    const coh = ctx.coherence
    if (!coh) return []
    try {
      const i = fs.lookupPath(path)
      return i !== undefined && coh.shared(i) ? [i] : []
    } catch { return [] }
  }
  const opened = (path: string, fh: number): number => { ctx.coherence?.opened(fh, path, fs.handle(fh).ino); return fh }
  /** reply() for an operation that may answer early: a failure after that stops further changes */
  const replyEarly = (name: string, cb: Cb, fn: (early: (r: Answer) => void) => Answer | Promise<Answer>): void =>
    reply(name, cb, fn, err => fs.failedAfterAnswer(name, err))
  /** open directory handle -> its listing */
  const listings = new Map<number, Listing>()

  return counted({
    init: (cb: Cb) => cb(0),
    // deleted files' space counts as free once the reaper has freed it: `rm; df` sees it back
    statfs: (_path: string, cb: Cb) => reply('statfs', cb, async () => { await fs.reaper.settled(); return [fs.statfs()] }),
    // libfuse's LOOKUP is a getattr: of a name that does not exist before
    // every create, so "none" is answered without an exception
    getattr: (path: string, cb: Cb) => reply('getattr', cb, () => {
      const i = fs.lookupPath(path)
      return i === undefined ? ENOENT : [fs.stat(i)]
    }),
    fgetattr: (path: string | null, fd: number, cb: Cb) => reply('fgetattr', cb, () => [fs.stat(fileIno(path, fd))]),
    readdir: (path: string | null, fd: number, offset: number, cb: Cb) => reply('readdir', cb, () => {
      const dir = fileIno(path, fd)
      // a listing starts when a reader does (offset 0: opendir or
      // rewinddir) and is read READDIR_CHUNK entries per request
      let listing = fd ? listings.get(fd) : undefined
      if (offset === 0 || !listing) {
        listing = fs.openListing(dir, fd !== 0 && noAtime(fs.handle(fd)))
        if (fd) listings.set(fd, listing)
      }
      const r = fs.readdirFrom(dir, listing, offset, READDIR_CHUNK)
      return [r.names, r.stats, r.offsets]
    }),
    opendir: (path: string, flags: number, cb: Cb) => reply('opendir', cb, () => {
      const i = ino(path)
      if ((fs.inode(i).mode & 0o170000) !== 0o040000) throw fsErr('ENOTDIR')
      return [fs.open(i, flags, true)]
    }),
    releasedir: (_path: string, fd: number, cb: Cb) => reply('releasedir', cb, async () => {
      listings.delete(fd)
      await fs.release(fd)
    }),
    open: (path: string, flags: number, cb: Cb) => reply('open', cb, () => [opened(path, fs.open(ino(path), flags))]),
    // create, mkdir, symlink and link answer with the new name's attributes: libfuse's
    // getattr of it right after is then answered by the binding (no round trip)
    // answered as soon as the create cannot fail any more, before its rows
    // are written (FolioFs.createNode): the caller goes on meanwhile
    create: (path: string, mode: number, flags: number, cb: Cb) => replyEarly('create', cb, early => {
      let r: unknown[] | undefined // the handle is opened once, whichever answers
      const result = (i: number): unknown[] => (r ??= [opened(path, fs.open(i, flags)), fs.stat(i)])
      const i = fs.create(path, mode, creds(), ino => early(result(ino)))
      return result(i)
    }),
    release: (_path: string, fd: number, cb: Cb) => reply('release', cb, () => {
      ctx.coherence?.released(fd)
      flocks.released(fd)
      return fs.release(fd)
    }),
    // flock(2): the daemon's, per inode, so that hard links share them (flocks.ts)
    flock: (path: string | null, fd: number, op: number, cb: Cb) => {
      let r: number
      try {
        r = flocks.apply(fileIno(path, fd), fd, op)
      } catch (err) {
        fail('flock', cb, err)
        return
      }
      cb(r)
    },
    // no flush: foliofs has nothing to do at close(2), and without the op the
    // kernel stops sending FLUSH (one upcall less per close)
    // a journaled fsync's last step, the WAL's fdatasync, is the binding's (fsyncHandOff)
    fsync: (path: string | null, _datasync: number, fd: number, cb: Cb) => reply('fsync', cb, async () => {
      const syncFd = await fs.fsyncHandOff(fileIno(path, fd), ctx.syncFds === true)
      return syncFd === null ? undefined : [syncFd]
    }),
    fsyncdir: (_path: string, _datasync: number, _fd: number, cb: Cb) => reply('fsyncdir', cb, async () => { await fs.fsync() }),
    // again: a READ whose plan failed in the libfuse thread, read without
    // one (a binding without read plans passes the callback there)
    read: (path: string | null, fd: number, buf: Buffer, len: number, pos: number, again: boolean | Cb, cb: Cb) => {
      if (typeof again === 'function') { cb = again; again = false }
      if (again) fs.data.plans.failedOnce()
      const sink: PlanSink | undefined = ctx.readPlans && !again ? { ticket: null } : undefined
      replyValue('read', (res: number) => {
        const t = sink?.ticket
        if (!t) return cb(res)
        if (res < 0) fs.data.plans.end(t) // an error answers without the plan: it does not run
        cb(res, 0, t.plan)
      }, () => {
        // A read that moves atime does not invalidate the file's other
        // names: their cached atime may lag by attr_timeout. Waiting for it
        // deadlocked against partial writes through another name (the
        // kernel keeps such a write's folio locked until its answer, which
        // waited for this read's pages: seconds each, until the timeout);
        // not waiting, each reader's invalidation raced the other readers'
        // GETATTRs, whose answers the kernel then drops, and a read through
        // an open descriptor could use the old size (generic/080).
        return fs.read(fileIno(path, fd), buf, len, pos, sink, fd !== 0 && noAtime(fs.handle(fd)))
      })
    },
    // write and truncate carry the caller (setuid/setgid: FolioFs.killPriv)
    write: (path: string | null, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) => replyValue('write', cb, () => {
      const i = fileIno(path, fd)
      const from = via(path, fd)
      let at = pos
      // other names' writes do not wait for this name's pages (coherence.ts)
      const token = from !== null ? ctx.coherence?.writeStarts(fd, from) : undefined
      const done = (): void => { if (token) ctx.coherence?.writeEnds(token) }
      let r: Promise<number>
      try {
        // the kernel's page writeback (an mmap's dirty pages) comes through
        // any handle open for writing, O_APPEND ones too, at the page's own
        // offset: never an append
        const append = fd !== 0 && ctx.fuse.context?.writepage !== true && appends(fs.handle(fd))
        r = fs.write(i, buf.subarray(0, len), pos, writer(), append, p => { at = p })
      } catch (err) {
        done()
        throw err
      }
      return r.then(async n => {
        await settled(n, [i], [from])
        if (at !== pos && from !== null) ctx.coherence?.stale(from) // the kernel's pages of this name got the bytes at pos
        return n
      }).finally(done)
    }),
    truncate: (path: string, size: number, cb: Cb) => reply('truncate', cb, () => {
      const i = ino(path)
      return settled(fs.truncate(i, size, writer()), [i], [path])
    }),
    ftruncate: (path: string | null, fd: number, size: number, cb: Cb) => reply('ftruncate', cb, () => {
      const i = fileIno(path, fd)
      return settled(fs.truncate(i, size, writer()), [i], [via(path, fd)])
    }),
    // chmod, chown, utimens: fd names an open file (its name may be gone) when path is null
    utimens: (path: string | null, atime: Time, mtime: Time, fd: number, cb: Cb) => reply('utimens', cb, () => {
      const i = fileIno(path, fd)
      return settled(fs.utimens(i, atime, mtime), [i], [via(path, fd)])
    }),
    readlink: (path: string, cb: Cb) => reply('readlink', cb, () => [fs.readlink(path)]),
    chown: (path: string | null, uid: number, gid: number, fd: number, cb: Cb) => reply('chown', cb, () => {
      const i = fileIno(path, fd)
      return settled(fs.chown(i, uid, gid, writer()), [i], [via(path, fd)])
    }),
    chmod: (path: string | null, mode: number, fd: number, cb: Cb) => reply('chmod', cb, () => {
      const i = fileIno(path, fd)
      return settled(fs.chmod(i, mode), [i], [via(path, fd)])
    }),
    mknod: (path: string, mode: number, dev: number, cb: Cb) => reply('mknod', cb, () => { fs.mknod(path, mode, dev, creds()) }),
    unlink: (path: string, cb: Cb) => replyEarly('unlink', cb, early => {
      const known = sharedAt(path)
      const done = (): void | Promise<void> => {
        ctx.coherence?.unlinked(path)
        return settled(undefined, [], [path], known)
      }
      // the last name of an inode is answered before the writes (its data
      // is freed later: reaper.ts); another name of a shared one only once
      // the others are invalidated
      fs.unlink(path, known.length === 0 ? () => early(undefined) : undefined)
      return done()
    }),
    rename: (src: string, dst: string, flags: number, cb: Cb) => replyEarly('rename', cb, async early => {
      if (flags & RENAME_EXCHANGE) { // both names stay, on each other's inode: both ctimes change
        await fs.rename(src, dst, flags)
        ctx.coherence?.exchanged(src, dst)
        await settled(undefined, [...sharedAt(src), ...sharedAt(dst)], [src, dst])
        return
      }
      const known = sharedAt(dst) // the replaced file loses a name
      // no other name of either inode to invalidate: answered before the writes
      const alone = known.length === 0 && sharedAt(src).length === 0
      await fs.rename(src, dst, flags, alone ? () => early(undefined) : undefined)
      ctx.coherence?.renamed(src, dst)
      const moved = sharedAt(dst) // its ctime changed: its other names too
      await settled(undefined, moved, [src, dst], known)
    }),
    // link and symlink answer with dst's attributes too, as create does
    link: (src: string, dst: string, cb: Cb) => reply('link', cb, () => {
      fs.link(src, dst)
      // src too: the kernel gives dst its own inode (its attributes come with
      // the answer) and only bumps src's ctime in its cache, not its nlink
      const i = fs.resolve(dst)
      return settled([fs.stat(i)], [i], [dst])
    }),
    symlink: (target: string, path: string, cb: Cb) => reply('symlink', cb, () => [fs.stat(fs.symlink(target, path, creds()))]),
    mkdir: (path: string, mode: number, cb: Cb) => reply('mkdir', cb, () => [fs.stat(fs.mkdir(path, mode, creds()))]),
    rmdir: (path: string, cb: Cb) => reply('rmdir', cb, () => { fs.rmdir(path) }),
    // the xattr operations of an open file come by its handle (fd), even
    // once its name is gone (the binding: libfuse could not name it); by
    // path (fd 0) otherwise
    setxattr: (path: string | null, name: string, value: Buffer, _pos: number, flags: number, fd: number, cb: Cb) => reply('setxattr', cb, () => {
      const i = fileIno(path, fd)
      return settled(fs.setxattr(i, name, value, flags, writer()), [i], [via(path, fd)])
    }),
    getxattr: (path: string | null, name: string, _pos: number, fd: number, cb: Cb) =>
      reply('getxattr', cb, () => [fs.getxattr(fileIno(path, fd), name)]),
    listxattr: (path: string | null, fd: number, cb: Cb) => reply('listxattr', cb, () => {
      const c = ctx.fuse.context
      return [fs.listxattr(fileIno(path, fd), () => capable(c?.pid ?? 0, creds().uid, CAP_SYS_ADMIN))]
    }),
    removexattr: (path: string | null, name: string, fd: number, cb: Cb) => reply('removexattr', cb, () => {
      const i = fileIno(path, fd)
      return settled(fs.removexattr(i, name), [i], [via(path, fd)])
    }),
    lseek: (path: string | null, fd: number, offset: number, whence: number, cb: Cb) =>
      reply('lseek', cb, async () => [await fs.lseek(fileIno(path, fd), offset, whence)]),
    fallocate: (path: string | null, fd: number, mode: number, offset: number, length: number, cb: Cb) => reply('fallocate', cb, () => {
      const i = fileIno(path, fd)
      return settled(fs.fallocate(i, mode, offset, length, writer()), [i], [via(path, fd)])
    }),
    copy_file_range: (pathIn: string | null, fdIn: number, offIn: number, pathOut: string | null, fdOut: number, offOut: number, len: number, _flags: number, cb: Cb) =>
      replyValue('copy_file_range', cb, () => {
        const out = fileIno(pathOut, fdOut)
        return settled(fs.copyFileRange(fileIno(pathIn, fdIn), offIn, out, offOut, len, writer()), [out], [via(pathOut, fdOut)])
      }),
    ioctl: (path: string | null, fd: number, cmd: number, data: Buffer, cb: Cb) =>
      replyValue('ioctl', cb, () => ioctl(ctx, cmd >>> 0, data, () => fileIno(path, fd), creds))
  }, ctx.requests)
}

/** the ioctl commands ioctl() serves: the binding answers any other ENOTTY itself (a TCGETS of every stdio open) */
export const SERVED_IOCTLS = [FOLIOFS_IOC_FIEMAP, FOLIOFS_IOC_STATS, FOLIOFS_IOC_REMOUNT,
  FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IOC_FSGETXATTR, FS_IOC_FSSETXATTR].map(c => c >>> 0)

/** foliofs's private ioctls carry a buffer of exactly FOLIOFS_IOC_BUFSIZE bytes */
function privateBuffer (cmd: number, data: Buffer): void {
  if (data.length !== FOLIOFS_IOC_BUFSIZE || iocSize(cmd) !== FOLIOFS_IOC_BUFSIZE) throw fsErr('EINVAL')
}

function ioctl (ctx: OpsContext, cmd: number, data: Buffer, ino: () => number, creds: () => { uid: number, gid: number }): number | Promise<number> {
  /** set inode flags; ctime moved, which the kernel learns from no answer: every name's attributes go */
  const setIflags = (flags: number): number | Promise<number> => {
    const i = ino()
    ctx.fs.setIflags(i, flags, creds())
    return ctx.coherence ? ctx.coherence.everywhere(i).then(() => 0) : 0
  }
  if (cmd === FS_IOC_GETFLAGS || cmd === FS_IOC_SETFLAGS) { // chattr, lsattr (iflags.ts)
    if (data.length !== IFLAGS_SIZE) throw fsErr('EINVAL')
    if (cmd === FS_IOC_SETFLAGS) return setIflags(data.readUInt32LE(0))
    data.writeUInt32LE(ctx.fs.iflags(ino()), 0)
    return 0
  }
  if (cmd === FS_IOC_FSGETXATTR || cmd === FS_IOC_FSSETXATTR) { // struct fsxattr: fsx_xflags only
    if (data.length !== FSXATTR_SIZE) throw fsErr('EINVAL')
    if (cmd === FS_IOC_FSGETXATTR) {
      data.fill(0)
      data.writeUInt32LE(flagsToXflags(ctx.fs.iflags(ino())), 0)
      return 0
    }
    const flags = xflagsToFlags(data.readUInt32LE(0))
    if (flags === null || data.readUInt32LE(4) !== 0 || data.readUInt32LE(12) !== 0 || data.readUInt32LE(16) !== 0) throw fsErr('EOPNOTSUPP')
    return setIflags(flags)
  }
  if (cmd === FOLIOFS_IOC_FIEMAP) {
    privateBuffer(cmd, data)
    return ctx.fs.fiemapIoctl(ino(), data).then(() => 0)
  }
  if (cmd === FOLIOFS_IOC_REMOUNT) { // foliofs mount -o remount,ro|rw (root: the kernel's remount is root's)
    privateBuffer(cmd, data)
    if (creds().uid !== 0) throw fsErr('EPERM')
    if (data[0] > 1) throw fsErr('EINVAL', `remount mode ${data[0]}`) // 0 rw, 1 ro (foliofs_ioctl.h)
    return ctx.fs.setReadonly(data[0] === 1).then(() => 0)
  }
  if (cmd === FOLIOFS_IOC_STATS) {
    privateBuffer(cmd, data)
    const json = Buffer.from(JSON.stringify(statsOf(ctx)))
    if (json.length + 1 > data.length) throw fsErr('EOVERFLOW')
    json.copy(data)
    data[json.length] = 0
    return 0
  }
  throw fsErr('ENOTTY')
}

export function statsOf (ctx: OpsContext): Record<string, unknown> {
  const fs = ctx.fs
  const st = fs.statfs()
  return {
    uuid: fs.sb.uuid,
    blockSize: st.bsize,
    capacityBlocks: fs.sb.capacityBlocks,
    usedBlocks: fs.used,
    inodes: st.files - st.ffree,
    openHandles: fs.openHandles(),
    ops: { ...fs.counters, groupCommit: fs.groupCommitStats(), reaper: fs.reaper.stats },
    btree: { ...fs.data.stats, ...fs.data.summary() },
    pagecache: pageCacheStats(fs),
    fiemap: { ...fs.fiemap.stats },
    checksums: { ...fs.data.csums.stats },
    journal: { ...fs.journal.stats, rows: fs.journal.rows },
    discard: { ...fs.data.discard.stats },
    requests: { ...ctx.requests, msByOp: roundedMs(ctx.requests.msByOp) },
    coherence: ctx.coherence ? { ...ctx.coherence.stats, workers: ctx.coherence.workers() } : null,
    flocks: ctx.flocks ? { ...ctx.flocks.stats } : null,
    ...ctx.extraStats()
  }
}

const roundedMs = (m: Record<string, number>): Record<string, number> => Object.fromEntries(Object.entries(m).map(([k, v]) => [k, Math.round(v * 10) / 10]))

/** page cache and writeback counters (foliofs stats) */
export function pageCacheStats (fs: FolioFs): Record<string, number> {
  const c = fs.cache
  const lookups = c.stats.hits + c.stats.misses
  return {
    cacheBytes: c.maxBytes,
    cachedBytes: c.bytes,
    folios: c.folios,
    dirtyBytes: c.dirtyBytes,
    writebackBytes: c.writebackFolios * 4096,
    hits: c.stats.hits,
    misses: c.stats.misses,
    hitRatio: lookups ? Math.round(c.stats.hits / lookups * 1000) / 1000 : 0,
    readaheadFolios: c.stats.readaheadFolios,
    streamedBytes: fs.io.streams.stats.streamedBytes,
    streamChunkFills: fs.io.streams.stats.chunkFills,
    streamChunksWasted: fs.io.streams.stats.chunksWasted,
    streamDirectBytes: fs.io.streams.stats.directBytes,
    streamDirectRetried: fs.io.streams.stats.directRetried,
    // read plans (readplan.ts): direct reads the libfuse threads read themselves
    readPlans: fs.data.plans.stats.plans,
    readPlannedBytes: fs.data.plans.stats.plannedBytes,
    readPlansFailed: fs.data.plans.stats.plansFailed,
    readPlanReuseWaits: fs.data.plans.stats.reuseWaits,
    streamBytes: fs.io.streams.bytes,
    evictions: c.stats.evictions,
    writebackPasses: fs.writeback.stats.passes,
    writebackRuns: fs.writeback.stats.runs,
    writebackBytes_total: fs.writeback.stats.bytes,
    writebackErrors: fs.writeback.stats.errors,
    throttled: fs.writeback.stats.throttled,
    memoryPressure: fs.writeback.stats.memoryPressure,
    writebackYielded: fs.writeback.stats.yielded,
    dataReads: fs.data.area.stats.reads,
    dataWrites: fs.data.area.stats.writes,
    dataSyncs: fs.data.area.stats.syncs
  }
}

export type { Stat }
