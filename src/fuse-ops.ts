// Adapter from fuse-native's callback API to FolioFs. Rules enforced here:
// every handler calls back exactly once, and only with a negative errno or a
// result (fuse-native hangs on Error objects and times out on throws).
import { FolioFs, type Stat, type Time } from './fs'
import { fsErr, toNegErrno } from './errno'
import { FOLIOFS_IOC_BUFSIZE, FOLIOFS_IOC_FIEMAP, FOLIOFS_IOC_STATS, iocSize } from './ioctl'
import createDebug from 'debug'

const debug = createDebug('foliofs:ops')

type Cb = (...args: any[]) => void

export interface FuseLike { context?: { uid: number, gid: number, pid: number, umask: number } }

export interface OpsContext {
  fs: FolioFs
  fuse: FuseLike
  /** extra daemon statistics merged into the stats ioctl */
  extraStats: () => Record<string, unknown>
  /** the FUSE requests being served (filled in by makeOps) */
  requests: RequestStats
}

function fail (name: string, cb: Cb, err: unknown): void {
  const n = toNegErrno(err)
  if (n === -5) debug('%s: EIO from %o', name, err)
  cb(n)
}

/** Run fn (sync or async); reply cb(0, ...result) or cb(-errno), exactly once. */
function reply (name: string, cb: Cb, fn: () => unknown[] | void | Promise<unknown[] | void>): void {
  let res: unknown[] | void | Promise<unknown[] | void>
  try {
    res = fn()
  } catch (err) {
    fail(name, cb, err)
    return
  }
  if (res instanceof Promise) res.then(r => cb(0, ...(r ?? [])), err => fail(name, cb, err))
  else cb(0, ...(res ?? []))
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
export interface RequestStats { total: number, inFlight: number, maxInFlight: number }

/** wrap every handler so that its request is counted until it calls back */
function counted (ops: Record<string, Cb>, stats: RequestStats): Record<string, Cb> {
  for (const [name, fn] of Object.entries(ops)) {
    ops[name] = (...args: any[]) => {
      const cb = args[args.length - 1] as Cb
      stats.total++
      stats.inFlight++
      if (stats.inFlight > stats.maxInFlight) stats.maxInFlight = stats.inFlight
      args[args.length - 1] = (...res: any[]) => { stats.inFlight--; cb(...res) }
      fn(...args)
    }
  }
  return ops
}

export function makeOps (ctx: OpsContext): Record<string, Cb> {
  const fs = ctx.fs
  const creds = (): { uid: number, gid: number } => {
    const c = ctx.fuse.context
    return { uid: c?.uid ?? process.getuid?.() ?? 0, gid: c?.gid ?? process.getgid?.() ?? 0 }
  }
  const ino = (path: string | null): number => {
    if (path === null) throw fsErr('ENOENT', 'unlinked')
    return fs.resolve(path)
  }
  const fileIno = (path: string | null, fd: number): number => (fd ? fs.handle(fd).ino : ino(path))

  return counted({
    init: (cb: Cb) => cb(0),
    statfs: (_path: string, cb: Cb) => reply('statfs', cb, () => [fs.statfs()]),
    getattr: (path: string, cb: Cb) => reply('getattr', cb, () => [fs.stat(ino(path))]),
    fgetattr: (path: string | null, fd: number, cb: Cb) => reply('fgetattr', cb, () => [fs.stat(fileIno(path, fd))]),
    readdir: (path: string | null, fd: number, cb: Cb) => reply('readdir', cb, () => {
      const { names, stats } = fs.readdir(fileIno(path, fd))
      return [names, stats]
    }),
    opendir: (path: string, flags: number, cb: Cb) => reply('opendir', cb, () => {
      const i = ino(path)
      if ((fs.inode(i).mode & 0o170000) !== 0o040000) throw fsErr('ENOTDIR')
      return [fs.open(i, flags, true)]
    }),
    releasedir: (_path: string, fd: number, cb: Cb) => reply('releasedir', cb, async () => { await fs.release(fd) }),
    open: (path: string, flags: number, cb: Cb) => reply('open', cb, () => [fs.open(ino(path), flags)]),
    create: (path: string, mode: number, flags: number, cb: Cb) => reply('create', cb, () => {
      const i = fs.create(path, mode, creds())
      return [fs.open(i, flags)]
    }),
    release: (_path: string, fd: number, cb: Cb) => reply('release', cb, async () => { await fs.release(fd) }),
    flush: (_path: string, _fd: number, cb: Cb) => cb(0),
    fsync: (path: string | null, _datasync: number, fd: number, cb: Cb) => reply('fsync', cb, async () => { await fs.fsync(fileIno(path, fd)) }),
    fsyncdir: (_path: string, _datasync: number, _fd: number, cb: Cb) => reply('fsyncdir', cb, async () => { await fs.fsync() }),
    read: (path: string | null, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) =>
      replyValue('read', cb, () => fs.read(fileIno(path, fd), buf, len, pos)),
    write: (path: string | null, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) =>
      replyValue('write', cb, () => fs.write(fileIno(path, fd), buf.subarray(0, len), pos)),
    truncate: (path: string, size: number, cb: Cb) => reply('truncate', cb, async () => { await fs.truncate(ino(path), size) }),
    ftruncate: (path: string | null, fd: number, size: number, cb: Cb) =>
      reply('ftruncate', cb, async () => { await fs.truncate(fileIno(path, fd), size) }),
    utimens: (path: string | null, atime: Time, mtime: Time, cb: Cb) =>
      reply('utimens', cb, () => { fs.utimens(ino(path), atime, mtime) }),
    readlink: (path: string, cb: Cb) => reply('readlink', cb, () => [fs.readlink(path)]),
    chown: (path: string | null, uid: number, gid: number, cb: Cb) => reply('chown', cb, () => { fs.chown(ino(path), uid, gid) }),
    chmod: (path: string | null, mode: number, cb: Cb) => reply('chmod', cb, () => { fs.chmod(ino(path), mode) }),
    mknod: (path: string, mode: number, dev: number, cb: Cb) => reply('mknod', cb, () => { fs.mknod(path, mode, dev, creds()) }),
    unlink: (path: string, cb: Cb) => reply('unlink', cb, async () => { await fs.unlink(path) }),
    rename: (src: string, dst: string, cb: Cb) => reply('rename', cb, async () => { await fs.rename(src, dst) }),
    link: (src: string, dst: string, cb: Cb) => reply('link', cb, () => { fs.link(src, dst) }),
    symlink: (target: string, path: string, cb: Cb) => reply('symlink', cb, () => { fs.symlink(target, path, creds()) }),
    mkdir: (path: string, mode: number, cb: Cb) => reply('mkdir', cb, () => { fs.mkdir(path, mode, creds()) }),
    rmdir: (path: string, cb: Cb) => reply('rmdir', cb, () => { fs.rmdir(path) }),
    setxattr: (path: string | null, name: string, value: Buffer, _pos: number, flags: number, cb: Cb) =>
      reply('setxattr', cb, () => { fs.setxattr(ino(path), name, value, flags) }),
    getxattr: (path: string | null, name: string, _pos: number, cb: Cb) =>
      reply('getxattr', cb, () => [fs.getxattr(ino(path), name)]),
    listxattr: (path: string | null, cb: Cb) => reply('listxattr', cb, () => [fs.listxattr(ino(path))]),
    removexattr: (path: string | null, name: string, cb: Cb) =>
      reply('removexattr', cb, () => { fs.removexattr(ino(path), name) }),
    lseek: (path: string | null, fd: number, offset: number, whence: number, cb: Cb) =>
      reply('lseek', cb, async () => [await fs.lseek(fileIno(path, fd), offset, whence)]),
    fallocate: (path: string | null, fd: number, mode: number, offset: number, length: number, cb: Cb) =>
      reply('fallocate', cb, async () => { await fs.fallocate(fileIno(path, fd), mode, offset, length) }),
    copy_file_range: (pathIn: string | null, fdIn: number, offIn: number, pathOut: string | null, fdOut: number, offOut: number, len: number, _flags: number, cb: Cb) =>
      replyValue('copy_file_range', cb, () => fs.copyFileRange(fileIno(pathIn, fdIn), offIn, fileIno(pathOut, fdOut), offOut, len)),
    ioctl: (path: string | null, fd: number, cmd: number, data: Buffer, cb: Cb) =>
      replyValue('ioctl', cb, () => ioctl(ctx, cmd >>> 0, data, () => fileIno(path, fd)))
  }, ctx.requests)
}

function ioctl (ctx: OpsContext, cmd: number, data: Buffer, ino: () => number): number | Promise<number> {
  if (cmd === FOLIOFS_IOC_FIEMAP) {
    if (data.length !== FOLIOFS_IOC_BUFSIZE || iocSize(cmd) !== FOLIOFS_IOC_BUFSIZE) throw fsErr('EINVAL')
    return ctx.fs.fiemapIoctl(ino(), data).then(() => 0)
  }
  if (cmd === FOLIOFS_IOC_STATS) {
    if (data.length !== FOLIOFS_IOC_BUFSIZE || iocSize(cmd) !== FOLIOFS_IOC_BUFSIZE) throw fsErr('EINVAL')
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
    capacityBlocks: st.blocks,
    usedBlocks: fs.used,
    inodes: st.files - st.ffree,
    openHandles: fs.openHandles(),
    ops: { ...fs.counters },
    btree: { ...fs.data.stats, ...fs.data.summary() },
    pagecache: pageCacheStats(fs),
    fiemap: { ...fs.fiemap.stats },
    checksums: { ...fs.data.csums.stats },
    discard: { ...fs.data.discard.stats },
    requests: { ...ctx.requests },
    ...ctx.extraStats()
  }
}

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
    evictions: c.stats.evictions,
    writebackPasses: fs.writeback.stats.passes,
    writebackRuns: fs.writeback.stats.runs,
    writebackBytes_total: fs.writeback.stats.bytes,
    writebackErrors: fs.writeback.stats.errors,
    throttled: fs.writeback.stats.throttled,
    memoryPressure: fs.writeback.stats.memoryPressure,
    dataReads: fs.data.area.stats.reads,
    dataWrites: fs.data.area.stats.writes,
    dataSyncs: fs.data.area.stats.syncs
  }
}

export type { Stat }
