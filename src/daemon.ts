// Mount lifecycle: option parsing, the FUSE worker (foreground mount), and
// the supervisor that runs it in the background and cleans up after it.
import * as fs from 'fs'
import * as path from 'path'
import { spawn } from 'child_process'
import createDebug from 'debug'
import Database from 'better-sqlite3'
import { EXIT, ImageError, openImage, parseSize, type Superblock } from './image'
import { refusedReadWrite } from './imageerror'
import { DEFAULT_CACHE_BYTES, FolioFs, type AtimeMode } from './fs'
import { makeOps, newRequestStats, SERVED_IOCTLS, type FuseLike, type OpsContext } from './fuse-ops'
import { Coherence } from './coherence'
import { ExtentTree } from './btree'
import { progress } from './progress'
import { memoryLimit } from './memlimit'
import { alive, findMount, isStale, linksResolved, mountsOfDev, mountTable, mountUsers, recordMounted, recordsOfWorker, removeRecord, stopped, takeOutcome, unmountPath, writeOutcome, writeRecord, readRecord, type MountEntry, type MountRecord } from './mounts'
import { execFileSync } from 'child_process'

const debug = createDebug('foliofs:daemon')

export interface MountOptions {
  readonly: boolean
  allowOther: boolean
  debug: boolean
  /** atime rule for reads that reach the daemon (the last of noatime, relatime, strictatime given) */
  atime: AtimeMode
  /** probability of injected B-tree transaction restarts (fault injection) */
  injectRestarts: number
  /** B-tree debug checks (awaits while holding node locks) */
  debugChecks: boolean
  /** page cache size in bytes (-o cache_size=SIZE) */
  cacheBytes?: number
  /** -o sync: writes are durable when they return */
  syncWrites: boolean
  /** fault injection: writeback holds its folio locks this long after each run's I/O (-o writeback_delay_ms=N) */
  writebackDelayMs: number
  /** dirty data older than this is written back (-o dirty_expire=SECONDS, default 5) */
  dirtyExpireMs?: number
  /** kernel readahead window of the mount in KiB (-o readahead=KB, default 2048; 0 leaves the kernel's 128) */
  readaheadKb: number
  /** punch freed data-area blocks out of IMAGE-data (-o discard, the default; -o nodiscard) */
  discard: boolean
  /** the libfuse threads read large sequential reads themselves, from the daemon's read plans (-o read_plans, the default; -o noread_plans) */
  readPlans: boolean
  /** options handed to the kernel mount / libfuse */
  fuseOptions: string[]
}

// mount(8) passes these; they are either mount flags libfuse understands or no-ops for us
const PASS_THROUGH = new Set(['nosuid', 'suid', 'nodev', 'dev', 'noexec', 'exec', 'sync', 'async', 'dirsync'])
const IGNORED = new Set(['defaults', 'auto', 'noauto', 'user', 'nouser', 'users', '_netdev', 'nofail',
  'nodiratime', 'diratime', 'default_permissions', 'loop',
  // libfuse 2's option, refused by libfuse 3 (which always allows big writes): accepted for old fstab lines
  'big_writes'])

export function parseMountOptions (opts: string[]): MountOptions {
  const o: MountOptions = { readonly: false, allowOther: false, debug: false, atime: 'relatime', injectRestarts: 0, debugChecks: false, syncWrites: false, writebackDelayMs: 0, readaheadKb: 2048, discard: true, readPlans: true, fuseOptions: [] }
  for (const group of opts) {
    for (const raw of group.split(',')) {
      const opt = raw.trim()
      if (!opt) continue
      const eq = opt.indexOf('=')
      const key = eq < 0 ? opt : opt.slice(0, eq)
      const val = eq < 0 ? undefined : opt.slice(eq + 1)
      const flag = val === undefined
      if ((key === 'ro' || key === 'rw') && flag) o.readonly = key === 'ro' // the last wins, as with mount(8)
      else if (key === 'allow_other' && flag) o.allowOther = true
      else if (key === 'debug' && flag) o.debug = true
      else if ((key === 'noatime' || key === 'relatime' || key === 'strictatime') && flag) o.atime = key
      else if (key === 'atime' && flag) o.atime = 'relatime' // mount(8)'s default is relatime too
      else if (key === 'debug_checks' && flag) o.debugChecks = true
      else if ((key === 'discard' || key === 'nodiscard') && flag) o.discard = key === 'discard'
      else if ((key === 'read_plans' || key === 'noread_plans') && flag) o.readPlans = key === 'read_plans'
      else if (key === 'inject_restarts' && val !== undefined && /^(0(\.\d+)?|1(\.0*)?)$/.test(val)) o.injectRestarts = Number(val)
      else if (key === 'cache_size' && val !== undefined) o.cacheBytes = parseCacheSize(val, opt)
      else if (key === 'writeback_delay_ms' && val !== undefined && /^\d{1,6}$/.test(val)) o.writebackDelayMs = Number(val)
      else if (key === 'readahead' && val !== undefined && /^\d{1,6}$/.test(val)) o.readaheadKb = Number(val)
      else if (key === 'dirty_expire' && val !== undefined && /^\d{1,6}(\.\d+)?$/.test(val)) o.dirtyExpireMs = Math.round(Number(val) * 1000)
      else if (key === 'sync' && flag) { o.syncWrites = true; o.fuseOptions.push(key) }
      else if (PASS_THROUGH.has(key) && flag) o.fuseOptions.push(key)
      else if (IGNORED.has(key) && flag) continue
      else if (key.startsWith('x-')) continue // systemd/fstab annotations
      else if ((key === 'attr_timeout' || key === 'entry_timeout') && val !== undefined && /^\d+(\.\d+)?$/.test(val)) o.fuseOptions.push(opt)
      else throw new ImageError(`unknown or malformed mount option '${opt}'`, EXIT.USAGE)
    }
  }
  return o
}

/** -o remount,...: a remount of a live mount, not a mount */
export const isRemount = (opts: string[]): boolean => opts.some(g => g.split(',').some(o => o.trim() === 'remount'))

// what the kernel shows of a FUSE mount in /proc/mounts, which mount(8)
// hands a remount's helper with the other current options
const KERNEL_FUSE_OPTIONS = new Set(['user_id', 'group_id', 'rootmode', 'max_read', 'blksize', 'fd'])

/**
 * The options of a remount: only ro/rw matter (the last wins; default rw,
 * as mount(8)). FUSE takes no other option on a remount, and mount(8)
 * hands the helper the mount's current ones (user_id=, allow_other, the
 * fstab line's): valid ones are ignored, not refused. An option no mount
 * takes is refused as a mount refuses it (it was accepted in silence).
 */
export function parseRemountOptions (opts: string[]): { readonly: boolean } {
  let readonly = false
  for (const group of opts) {
    for (const raw of group.split(',')) {
      const o = raw.trim()
      const eq = o.indexOf('=')
      if (o === '' || o === 'remount') continue
      if (eq > 0 && KERNEL_FUSE_OPTIONS.has(o.slice(0, eq)) && /^\d+$/.test(o.slice(eq + 1))) continue
      parseMountOptions([o]) // throws for an option no mount takes
      if (o === 'ro') readonly = true
      else if (o === 'rw') readonly = false
    }
  }
  return { readonly }
}

/**
 * `foliofs mount -o remount,ro|rw MOUNTPOINT` (and mount(8)'s remount
 * through the helper). The kernel's read-only flag is the superblock's,
 * set by mount(2) MS_REMOUNT (here `mount -i`, which calls no helper):
 * root only; fusermount3 cannot remount. To read-only, the kernel first
 * (it refuses while files are open for writing, and afterwards no write
 * can start), then the daemon writes everything back and refuses changes
 * (EROFS). To read-write, the daemon first (refused if the image was
 * opened read-only), then the kernel; a failed step undoes the other.
 */
export async function remount (mountpoint: string, readonly: boolean): Promise<void> {
  const mp = path.resolve(mountpoint)
  const m = findMount(mp)
  if (!m || m.fstype !== 'fuse.foliofs') throw new ImageError(`${mp}: not a foliofs mount point`, EXIT.USAGE)
  if (process.getuid?.() !== 0) throw new ImageError(`${mp}: remount needs root (the kernel's MS_REMOUNT; fusermount3 cannot remount)`, EXIT.MOUNT_FAILED)
  const mode = readonly ? 'ro' : 'rw'
  const kernel = (to: string): void => {
    try {
      execFileSync('mount', ['-i', '-o', `remount,${to}`, mp], { stdio: ['ignore', 'ignore', 'pipe'] })
    } catch (err) {
      const msg = String((err as { stderr?: Buffer }).stderr ?? err).trim().replace(/^mount: /, '')
      const busy = /busy/i.test(msg)
      throw new ImageError(`${mp}: remount,${to} refused: ${busy ? 'files are open for writing, or deleted files are still open' : msg}`, busy ? EXIT.BUSY : EXIT.MOUNT_FAILED)
    }
  }
  const daemon = (to: string): void => {
    try {
      execFileSync(ioctlTool(), ['remount', mp, to], { stdio: ['ignore', 'ignore', 'pipe'] })
    } catch (err) {
      const msg = String((err as { stderr?: Buffer }).stderr ?? err).trim()
      const rofs = /read-only file system/i.test(msg)
      throw new ImageError(`${mp}: remount,${to}: ${rofs ? 'mounted read-only from the start (-o ro); unmount and mount it read-write' : msg}`, EXIT.MOUNT_FAILED)
    }
  }
  if (readonly) {
    kernel(mode)
    try { daemon(mode) } catch (err) { try { kernel('rw') } catch { /* stays read-only in the kernel */ } throw err }
  } else {
    daemon(mode)
    try { kernel(mode) } catch (err) { try { daemon('ro') } catch { /* the kernel still refuses writes */ } throw err }
  }
}

/** native/build/foliofs-ioctl (the private ioctls) */
function ioctlTool (): string {
  return path.resolve(__dirname, '..', '..', 'native', 'build', 'foliofs-ioctl')
}

/**
 * memory the daemon uses besides its page cache, at most (measured: a
 * 250M cache writing 1.5G peaked at 380M anonymous memory, 470M resident;
 * the V8 heap, SQLite's cache of up to 64M, I/O buffers): cache_size must
 * leave this much of the memory limit (parseCacheSize)
 */
const DAEMON_RESERVE = 192 << 20

function parseCacheSize (val: string, opt: string): number {
  let n: number
  try { n = parseSize(val) } catch { throw new ImageError(`malformed mount option '${opt}' (use e.g. cache_size=256M)`, EXIT.USAGE) }
  if (n < 1024 * 1024) throw new ImageError(`mount option '${opt}': the page cache needs at least 1M`, EXIT.USAGE)
  // the cache fills (clean folios are evicted only when it is full) and
  // the rest of the daemon comes on top of it: a cache that leaves less
  // than DAEMON_RESERVE of the memory this process may use gets the
  // daemon OOM-killed by the writers that fill it (cache_size=300M in a
  // 400M cgroup: killed writing 1.5G, a dead mount)
  const mem = memoryLimit()
  const whose = mem.cgroup ? "this process's memory cgroup limit" : "this machine's memory"
  const mib = (b: number): string => `${Math.floor(b / (1 << 20))}M`
  const most = mem.bytes - DAEMON_RESERVE
  const least = defaultCacheBytes() // a small limit still takes what the default takes
  const why = most >= least
    ? `${mib(most)}: ${whose} (${mib(mem.bytes)}) less the ${mib(DAEMON_RESERVE)} the daemon needs besides it`
    : `${mib(least)}, the default for ${whose} (${mib(mem.bytes)}), which leaves less than the ${mib(DAEMON_RESERVE)} the daemon needs besides it`
  if (n > Math.max(most, least)) throw new ImageError(`mount option '${opt}': the page cache can take at most ${why}`, EXIT.USAGE)
  return n
}

/**
 * cache_size's default: DEFAULT_CACHE_BYTES, or a quarter of a memory
 * cgroup's limit when that is less (the daemon's V8 heap and SQLite's
 * cache come on top of the page cache), whole MiB, at least 8M (below
 * that a streaming read's chunk does not fit: README).
 */
function defaultCacheBytes (): number {
  const mem = memoryLimit()
  const quarter = Math.floor(mem.bytes / 4 / (1 << 20)) * (1 << 20)
  return Math.max(Math.min(DEFAULT_CACHE_BYTES, quarter), 8 << 20)
}

function checkMountpoint (mountpoint: string): void {
  if (isStale(mountpoint)) {
    // a previous daemon died: clear its dead mount so the user is not stuck
    process.stderr.write(`foliofs: clearing stale mount at ${mountpoint}\n`)
    unmountPath(mountpoint, true)
  }
  let st: fs.Stats
  try {
    st = fs.statSync(mountpoint)
  } catch {
    throw new ImageError(`${mountpoint}: mount point does not exist`, EXIT.USAGE)
  }
  if (!st.isDirectory()) throw new ImageError(`${mountpoint}: mount point is not a directory`, EXIT.USAGE)
  const m = findMount(mountpoint)
  if (m && m.fstype.startsWith('fuse')) throw new ImageError(`${mountpoint}: already a FUSE mount (${m.source})`, EXIT.BUSY)
}

/**
 * A read-only mount holds SQLite's shared lock on the image for its whole
 * life: a read transaction on a connection of its own, never ended (the
 * lock goes with the process). A read-write open (another mount, fsck
 * --repair, mkfs --force) then finds the image in use, as it does while a
 * read-write mount holds the exclusive lock. A read-only open takes none
 * otherwise, and a read-write mount could start beside it (mountOfImage
 * sends a second mount of a mounted image to a bind mount, but two mounts
 * started together both passed it): two daemons, the read-only one
 * answering EIO as the other changed the file under it.
 * Misuse: opening and closing the image through any other descriptor of
 * this process afterwards (fs.openSync on it): POSIX drops all of the
 * process's locks on a file when one of its descriptors closes.
 */
function holdSharedLock (image: string): void {
  let db: Database.Database | null = null
  try {
    db = new Database(image, { readonly: true, fileMustExist: true, timeout: 100 })
    db.prepare('BEGIN').run()
    db.prepare('SELECT count(*) FROM sqlite_master').pluck().get() // the read that takes the lock
    lockHolders.push(db) // unreferenced, the connection was collected and the lock went with it
  } catch (e) {
    db?.close()
    const code = String((e as { code?: string }).code)
    // a read-write open got in since openImage looked: it holds the exclusive lock
    if (code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED') throw new ImageError(`${image}: image is in use (mounted?); unmount it first`, EXIT.BUSY)
    // anything else (no such file, not SQLite, damage) is openImage's to report, in its words
  }
}
const lockHolders: Database.Database[] = []

/** Everything a mount checks before it daemonizes, so errors reach the user's terminal. */
export function preflight (image: string, mountpoint: string, readonly = false): void {
  checkMountpoint(mountpoint)
  // the worker runs the full quick_check; here only the cheap header/superblock checks
  // (the worker upgrades an older format; a read-write mount needs an image this build may write)
  const img = openImage(image, { readonly: true, check: false, upgradable: true, writable: !readonly })
  img.db.close()
}

/**
 * The libfuse options foliofs mounts with (also used by the benchmark's
 * in-memory ceiling filesystem, so both run with the same options).
 */
export function fuseExtraOptions (opts: MountOptions): string[] {
  // (libfuse 3: use_ino and nullpath_ok are set by the binding's init, not options)
  const extra = ['default_permissions', 'subtype=foliofs', ...opts.fuseOptions]
  // the kernel caches names and attributes for a second (libfuse's default);
  // coherence.ts invalidates what another hard link of an inode changes
  if (!opts.fuseOptions.some(o => o.startsWith('attr_timeout='))) extra.push('attr_timeout=1')
  if (!opts.fuseOptions.some(o => o.startsWith('entry_timeout='))) extra.push('entry_timeout=1')
  if (opts.readonly) extra.push('ro')
  // the daemon keeps atime itself (FolioFs.atime); the kernel's mount flag
  // only shows it (findmnt, /proc/mounts said relatime whatever was asked).
  // libfuse takes noatime, not strictatime (fuse_new fails): that one
  // shows as the kernel's default, relatime.
  if (opts.atime === 'noatime') extra.push('noatime')
  return extra
}

/**
 * The kernel reads ahead 128 KiB at a time on a FUSE mount (its backing
 * device's default), so a sequential reader sends 128 KiB requests although
 * the binding takes 1 MiB: widen the window (about 1.5x the cold sequential
 * read here). 2 MiB keeps two 1 MiB requests in flight: a cold GiB, 5
 * runs each, interleaved: 0.91/0.94/0.95/1.08/1.21 s at 1 MiB, 0.82/0.82/
 * 0.86/1.00/1.01 s at 2 MiB (4 MiB measured no better). Root only
 * (sysfs); the device comes from the mount table, so the daemon never
 * touches its own mount. Best effort.
 * The mount's callback runs before libfuse has sent its INIT reply, and the
 * kernel clamps the window to the reply's max_readahead when it takes it:
 * set it, then check for 100 ms that it stays set.
 */
export async function setReadahead (mountpoint: string, kb: number): Promise<void> {
  const dev = findMount(mountpoint)?.dev
  try {
    if (!dev) throw new Error('not in the mount table')
    const file = `/sys/class/bdi/${dev}/read_ahead_kb`
    for (let i = 0; i < 5; i++) {
      if (fs.readFileSync(file, 'utf8').trim() !== String(kb)) fs.writeFileSync(file, String(kb))
      await new Promise(resolve => setTimeout(resolve, 20))
    }
  } catch (err) {
    debug('readahead of %s left as it is: %s', mountpoint, String(err))
  }
}

/**
 * A damaged extent tree (a node page failing its crc or page checks): a
 * read-write mount is refused, before anything is written (FolioFs writes
 * at once: orphan recovery); a read-only one is served, reporting it, so
 * files can be copied off (those mapped by the damaged node read as EIO).
 * A tree whose meta rows are gone cannot be opened at all: both are
 * refused, and the line says fsck --repair, not -o ro. One line for the user, the details in the log (our stderr).
 */
function refuseDamagedTree (db: Database.Database, sb: Superblock, image: string, readonly: boolean): void {
  const errs = ExtentTree.checkPages(db, undefined, undefined, sb.capacityBlocks)
  if (errs.length === 0) return
  for (const e of errs) process.stderr.write(`foliofs: ${image}: extent tree: ${e}\n`)
  const what = `extent tree damaged (${errs[0]}${errs.length > 1 ? `, and ${errs.length - 1} more` : ''})`
  if (ExtentTree.metaUnusable(db) !== null) {
    throw new ImageError(`${image}: corrupt image (${what}): cannot be served, not even read-only; foliofs fsck --repair rebuilds the tree from its nodes`, EXIT.CORRUPT)
  }
  if (readonly) {
    process.stderr.write(`foliofs: ${image}: ${what}: serving read-only; files it maps read as EIO; see foliofs fsck\n`)
    return
  }
  throw refusedReadWrite(image, what)
}

type Notify = (msg: { ready?: true, error?: string, exitCode?: number, phase?: string }) => void

/** The FUSE worker: mounts, serves until unmounted or signalled, then closes the image. */
export async function runWorker (image: string, mountpoint: string, opts: MountOptions, notify: Notify): Promise<number> {
  const Fuse = require('fuse-native')
  image = path.resolve(image)
  mountpoint = path.resolve(mountpoint)
  checkMountpoint(mountpoint)
  // each phase is told to `foliofs mount`, which shows it once the mount takes over a second
  const t0 = performance.now()
  notify({ phase: 'checking the image' })
  let t1 = 0
  // the tree's check runs on openImage's read-only connection: a refused
  // read-write mount has not touched the file
  const img = openImage(image, {
    readonly: opts.readonly,
    validate: (db, sb) => {
      t1 = performance.now()
      notify({ phase: 'checking the extent tree' })
      refuseDamagedTree(db, sb, image, opts.readonly)
    }
  })
  // after openImage, which reads the image's header through a descriptor
  // of its own: closing that dropped every lock of this process on the file
  // (POSIX), this one too when it was taken first
  if (img.readonly) {
    try { holdSharedLock(img.path) } catch (e) { img.db.close(); throw e }
  }
  const t2 = performance.now()
  notify({ phase: 'opening, finishing interrupted truncates and frees' })
  const folio = new FolioFs(img, {
    injectRestarts: opts.injectRestarts,
    debugChecks: opts.debugChecks || undefined,
    cacheBytes: opts.cacheBytes ?? defaultCacheBytes(),
    syncWrites: opts.syncWrites,
    writebackDelayMs: opts.writebackDelayMs,
    dirtyExpireMs: opts.dirtyExpireMs,
    discard: opts.discard
  })
  folio.atime = opts.atime
  notify({ phase: 'mounting' })
  debug('mount checks: image %d ms, extent tree pages %d ms, open and orphan recovery %d ms', Math.round(t1 - t0), Math.round(t2 - t1), Math.round(performance.now() - t2))
  const started = Date.now()
  const holder: { fuse: FuseLike } = { fuse: {} }
  const ctx: OpsContext = {
    fs: folio,
    get fuse () { return holder.fuse },
    requests: newRequestStats(),
    readPlans: opts.readPlans && (Fuse as unknown as { READ_PLANS?: boolean }).READ_PLANS === true,
    syncFds: (Fuse as unknown as { SYNC_FDS?: boolean }).SYNC_FDS === true,
    extraStats: () => ({ pid: process.pid, image, mountpoint, uptimeSec: Math.round((Date.now() - started) / 1000), readonly: folio.readonly })
  }
  const ops = makeOps(ctx)
  // libfuse calls destroy when the session ends: unmounted (umount(8),
  // fusermount3 -u, or a lazy unmount once the last open file is closed)
  let sessionEnded = (): void => {}
  ops.destroy = (cb: (err: number) => void) => {
    cb(0)
    setImmediate(() => sessionEnded())
  }
  const extra = fuseExtraOptions(opts)
  const fuse = new Fuse(mountpoint, ops, {
    fsname: fsnameOf(image),
    allowOther: opts.allowOther || process.getuid?.() === 0,
    debug: opts.debug,
    timeout: false,
    ioctls: SERVED_IOCTLS,
    extraOptions: extra
  })
  holder.fuse = fuse
  const syncErrno = (Fuse as unknown as { syncErrno?: () => number }).syncErrno
  if (ctx.syncFds === true && syncErrno) folio.data.handOffSyncErrno = syncErrno

  // A signal from here on must unmount: the kernel's mount appears before
  // the session's handlers below are installed, and a SIGINT in between
  // (Ctrl-C as the mount comes up) killed the process and left the mount
  // point dead. Once the kernel's mount is there, the signal is kept and
  // acted on when the handlers are in. Before (a mount point on a hung
  // NFS server stalls the mount), and for a second signal, it does what
  // it did without a handler: there is nothing to leave dead yet.
  let early: NodeJS.Signals | null = null
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const
  const dropEarly = (): void => { for (const sig of signals) process.off(sig, keepEarly) }
  function keepEarly (sig: NodeJS.Signals): void {
    if (early === null && findMount(mountpoint)?.fstype.startsWith('fuse') === true) {
      early = sig
      return
    }
    dropEarly()
    process.kill(process.pid, sig)
  }
  for (const sig of signals) process.on(sig, keepEarly)
  await new Promise<void>((resolve, reject) => {
    fuse.mount((err: Error | null) => {
      if (err) return reject(new ImageError(`mount failed: ${err.message}`, EXIT.MOUNT_FAILED))
      // the session is up (its INIT answered): the kernel caches from here on
      ctx.coherence = new Coherence(folio, fuse)
      resolve()
    })
  }).catch(async err => {
    dropEarly()
    await folio.close()
    throw err
  })
  const dev = findMount(mountpoint)?.dev
  // a worker the supervisor started talks to it (IPC); one run by hand
  // (--foreground) has none, and its parent (a shell) may live on: umount
  // waited its whole minute for that "supervisor" to exit
  recordMounted({ image, mountpoint, worker: process.pid, supervisor: process.send !== undefined ? process.ppid : process.pid, dev })
  debug('mounted %s on %s', image, mountpoint)

  return await new Promise<number>(resolve => {
    let closing = false
    // over: the session has ended (no request can come any more)
    const finish = (code: number, over: boolean): void => {
      if (closing) return
      closing = true
      // writes back everything still dirty, then closes the image
      folio.close(over)
        .catch(err => {
          const why = err instanceof Error ? err.message : String(err)
          process.stderr.write(`foliofs: close failed: ${why}\n`)
          for (const r of recordsOfWorker(process.pid)) writeOutcome(r.mountpoint, process.pid, `could not close the image (${why})`)
        })
        .finally(() => {
          for (const r of recordsOfWorker(process.pid)) removeRecord(r.mountpoint, process.pid)
          resolve(code)
        })
    }
    const shutdown = (sig: string): void => {
      if (closing) return
      debug('%s: unmounting %s', sig, mountpoint)
      unmountOthers(dev, mountpoint) // bind mounts of this mount (second mount points) go too
      // committed data is already in the image; unmount, then close it
      fuse.unmount((err: Error | null) => {
        if (err && findMount(mountpoint)) {
          try { unmountPath(mountpoint, true) } catch (e) { process.stderr.write(`foliofs: ${String(e)}\n`) }
        }
        // the unmount is lazy: files open through the mount may still send
        // requests until the daemon is gone, so the session is not over
        finish(0, false)
      })
    }
    dropEarly()
    for (const sig of signals) process.on(sig, () => shutdown(sig))
    sessionEnded = () => {
      debug('session of %s ended; closing image', mountpoint)
      finish(0, true)
    }
    // a signal that came while mounting: shut down once this set-up is
    // done, and tell `foliofs mount` so rather than that the mount is ready
    const pending: NodeJS.Signals | null = early
    if (pending !== null) {
      notify({ error: `mount interrupted (${pending}): unmounted again`, exitCode: EXIT.MOUNT_FAILED })
      setImmediate(() => shutdown(pending))
      return
    }
    // ready once the mount is as it will stay (signals are handled from here on)
    const ra = opts.readaheadKb > 0 ? setReadahead(mountpoint, opts.readaheadKb) : Promise.resolve()
    void ra.then(() => notify({ ready: true }))
  })
}

/**
 * The supervisor: started detached by `foliofs mount`, runs the worker as
 * its child and, if the worker dies without unmounting (crash, kill -9),
 * lazily unmounts the dead mount so nobody is left with ENOTCONN.
 */
export function runSupervisor (argv: string[]): void {
  const [image, mountpoint, ...rest] = argv
  const child = spawn(process.execPath, [require.resolve('./cli'), 'mount', '--foreground', image, mountpoint, ...rest], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  const forward = (msg: unknown): void => { if (process.send) process.send(msg) }
  child.on('message', forward)
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => { if (child.pid) child.kill(sig) })
  }
  child.on('exit', (code, signal) => {
    const mp = path.resolve(mountpoint)
    if (code !== 0 || signal) {
      const recs = child.pid ? recordsOfWorker(child.pid) : []
      const dev = recs[0]?.dev ?? findMount(mp)?.dev
      const dead = dev ? mountsOfDev(dev) : [findMount(mp)].filter((m): m is MountEntry => m?.fstype === 'fuse.foliofs')
      for (const m of dead) {
        process.stderr.write(`foliofs: worker ${child.pid} died (${signal ?? `exit ${code}`}); unmounting ${m.mountpoint}\n`)
        try { unmountPath(m.mountpoint, true) } catch (err) { process.stderr.write(`foliofs: ${String(err)}\n`) }
      }
      for (const r of recs) {
        if (child.pid) writeOutcome(r.mountpoint, child.pid, `died (${signal ?? `exit ${code}`}) before it closed the image`)
        removeRecord(r.mountpoint, child.pid) // not a new mount's, made there since
      }
      forward({ error: `worker exited (${signal ?? `exit ${code}`})`, exitCode: code ?? EXIT.MOUNT_FAILED })
    }
    process.exit(code ?? 1)
  })
}

/** `foliofs mount` without --foreground: start the supervisor and wait for ready. */
/**
 * The log file of a background worker, open for appending. The default
 * one's directory (runDir) is made; a --log FILE is the user's, as a shell
 * redirection: its directory must exist (a recursive mkdir under /proc
 * looped forever), and what cannot be opened is a usage error.
 */
function openLog (logFile: string, given: boolean): number {
  try {
    if (!given) fs.mkdirSync(path.dirname(logFile), { recursive: true })
    return fs.openSync(logFile, 'a')
  } catch (e) {
    const err = e as NodeJS.ErrnoException
    if (!given) throw e
    throw new ImageError(`--log ${logFile}: cannot open it for appending (${err.code ?? err.message})`, EXIT.USAGE)
  }
}

export function startBackground (image: string, mountpoint: string, optArgs: string[], logFile: string, logGiven = false): Promise<number> {
  const log = openLog(logFile, logGiven)
  const sup = spawn(process.execPath, [require.resolve('./cli'), '__supervise', image, mountpoint, ...optArgs], {
    detached: true,
    stdio: ['ignore', log, log, 'ipc']
  })
  fs.closeSync(log)
  // a mount that takes over a second shows what it is doing (on a terminal)
  const shown = progress(`mount ${image}`)
  let phase = 'starting'
  let showing = false
  const slow = setTimeout(() => { showing = true; shown.update(phase) }, 1000)
  return new Promise(resolve => {
    let done = false
    const end = (code: number, msg?: string): void => {
      if (done) return
      done = true
      clearTimeout(slow)
      shown.end()
      if (msg) process.stderr.write(`foliofs: ${msg}\n`)
      // only our own listeners go: removeAllListeners() also took node's
      // internal IPC ones, and a message still queued (the supervisor
      // forwards the worker's exit after its error) then threw TypeError
      // (reading 'Symbol(kPendingMessages)') after the right answer (issue 13 item 7)
      sup.removeAllListeners('message')
      sup.removeAllListeners('exit')
      sup.on('message', () => {})
      setImmediate(() => {
        if (sup.connected) sup.disconnect()
        sup.unref()
      })
      resolve(code)
    }
    sup.on('message', (m: { ready?: boolean, error?: string, exitCode?: number, phase?: string }) => {
      if (m.phase) {
        phase = m.phase
        if (showing) shown.update(phase) // shown already: follow the phases
      }
      if (m.ready) end(0)
      else if (m.error) end(m.exitCode || EXIT.MOUNT_FAILED, m.error)
    })
    sup.on('exit', code => end(code || EXIT.MOUNT_FAILED, `mount failed; see ${logFile}`))
  })
}

/** how long a busy unmount is tried again while no process is found using the mount */
const BUSY_RETRY_MS = 2000

/**
 * Unmount mp; if the kernel says busy, name what uses it. While nothing
 * is found (a process that has just exited can hold the mount for a
 * moment: what is found busy right after a stress run ends), try again
 * for up to BUSY_RETRY_MS before giving up.
 */
async function unmountOrNameUsers (mp: string, lazy: boolean): Promise<void> {
  const deadline = Date.now() + BUSY_RETRY_MS
  for (;;) {
    try {
      unmountPath(mp, lazy)
      return
    } catch (err) {
      if (!/busy/i.test((err as Error).message)) throw err
      const users = mountUsers(mp)
      if (users.length > 0 || Date.now() >= deadline) {
        const who = users.length > 0 ? `in use by ${users.slice(0, 4).join('; ')}${users.length > 4 ? `; and ${users.length - 4} more` : ''}` : 'files or directories in use'
        throw new ImageError(`${mp}: target is busy (${who}); close them, or use --lazy`, EXIT.BUSY)
      }
      debug('%s: busy, but no process uses it: trying again', mp)
      await new Promise(resolve => setTimeout(resolve, 100))
    }
  }
}

/**
 * `foliofs umount`: unmount like umount(8) (a busy filesystem is refused),
 * then wait for the daemon to close the image. A dead mount is cleared.
 * With lazy, detach now; the daemon exits once the last open file closes.
 */
export async function umount (mountpoint: string, opts: { lazy?: boolean, timeoutMs?: number } = {}): Promise<void> {
  const mp = linksResolved(mountpoint) // as umount(8): a symlink to the mount point names it
  const rec = readRecord(mp)
  const m = findMount(mp)
  if (!m) {
    if (rec) removeRecord(mp)
    throw new ImageError(`${mp}: not mounted`, EXIT.USAGE)
  }
  if (!m.fstype.startsWith('fuse')) throw new ImageError(`${mp}: not a foliofs mount (${m.fstype})`, EXIT.USAGE)
  const uid = process.getuid?.()
  if (uid !== undefined && uid !== 0 && m.owner !== undefined && m.owner !== uid) {
    throw new ImageError(`${mp}: permission denied: mounted by uid ${m.owner}; only that user or root can unmount it`, EXIT.MOUNT_FAILED)
  }
  // a lazy unmount detaches whatever state the daemon is in; looking
  // first (a stat) hung on a daemon that does not answer (stopped, hung),
  // and a stopped one would only write its dirty data back once continued
  if (!opts.lazy) refuseStopped(mp, 'unmount again; foliofs umount --lazy detaches the mount point at once')
  if (!opts.lazy && isStale(mp)) {
    unmountPath(mp, true)
    removeRecord(mp)
    return
  }
  await unmountOrNameUsers(mp, opts.lazy === true)
  // other mount points of the same mount (second mount points: bind
  // mounts) keep it alive: the record moves to one of them
  const others = mountsOfDev(m.dev)
  if (others.length > 0) {
    if (rec) {
      writeRecord({ ...rec, mountpoint: others[0].mountpoint })
      removeRecord(mp)
    }
    return
  }
  if (opts.lazy && rec && !alive(rec.worker, rec.workerStart)) removeRecord(mp, rec.worker) // a dead one's
  if (opts.lazy || !rec) return
  const deadline = Date.now() + (opts.timeoutMs ?? 60000)
  while (alive(rec.worker, rec.workerStart) && Date.now() < deadline) await new Promise(r => setTimeout(r, 25))
  if (alive(rec.worker, rec.workerStart)) throw new ImageError(`${mp}: unmounted, but daemon ${rec.worker} has not exited yet`, EXIT.BUSY)
  // a worker that died: its supervisor says so as it exits
  while (alive(rec.supervisor, rec.supervisorStart) && Date.now() < deadline) await new Promise(r => setTimeout(r, 25))
  removeRecord(mp, rec.worker)
  const failed = takeOutcome(mp, rec.worker)
  if (failed !== null) throw new ImageError(`${mp}: unmounted, but daemon ${rec.worker} ${failed}: changes not written back are lost; check it with foliofs fsck ${rec.image}`, EXIT.MOUNT_FAILED)
}

/** lazily unmount the mount points of connection dev other than mountpoint (best effort) */
function unmountOthers (dev: string | undefined, mountpoint: string): void {
  if (!dev) return
  for (const m of mountsOfDev(dev)) {
    if (m.mountpoint === mountpoint) continue
    try { unmountPath(m.mountpoint, true) } catch (err) { process.stderr.write(`foliofs: ${String(err)}\n`) }
  }
}

/**
 * The mount's source name (fsname) for an image path: libfuse's option
 * parser takes ',' as a separator and a backslash as an escape (it ate
 * the one in a\b.img), so both become '_'.
 */
export function fsnameOf (image: string): string {
  return image.replace(/[,\\]/g, '_')
}

/**
 * The live foliofs mount of image, if there is one: a mount table entry
 * of type fuse.foliofs whose source has the image's file name (the
 * daemon's fsname is the image's path: fsnameOf) and whose daemon says,
 * through the stats ioctl, that it serves this very file (same device and
 * inode: the image may be reached by another path, through a bind mount
 * of its directory or a symlink).
 */
export function mountOfImage (image: string): MountEntry | undefined {
  let want: fs.Stats
  try { want = fs.statSync(image) } catch { return undefined }
  const names = new Set([path.basename(image), path.basename(fs.realpathSync(image))].map(fsnameOf))
  const same = (file: string): boolean => { try { const st = fs.statSync(file); return st.dev === want.dev && st.ino === want.ino } catch { return false } }
  const candidates = mountTable().filter(m => m.fstype === 'fuse.foliofs' && names.has(path.basename(m.source)))
  // first without a word to any daemon: the source names the image file
  // itself unless it was renamed since (or had ',' or '\' in its name)
  // and its daemon is alive by its record: a dead mount (ENOTCONN) keeps
  // its entry until cleared, and a mount onto it clears it (checkMountpoint)
  const named = candidates.find(m => same(m.source) && daemonAlive(m))
  if (named) return named
  for (const m of candidates) {
    try {
      const served = (liveStats(m.mountpoint, 5000) as { image?: string }).image
      if (served !== undefined && same(served)) return m
    } catch { /* dead, hung or foreign: not this image's */ }
  }
  return undefined
}

/** The record of the daemon serving mountpoint: its own, or a second mount point's (same connection). */
function recordOfMount (mp: string, m: MountEntry | undefined): MountRecord | null | undefined {
  return readRecord(mp) ?? (m ? mountsOfDev(m.dev).map(o => readRecord(o.mountpoint)).find(r => r !== null) : undefined)
}

/** Whether m's daemon is alive by its record, without a word to it (a stat of a stopped daemon's mount never returns). */
function daemonAlive (m: MountEntry): boolean {
  const rec = recordOfMount(m.mountpoint, m)
  return rec !== null && rec !== undefined && alive(rec.worker, rec.workerStart)
}

/**
 * Exit 6 at once if the daemon serving mountpoint (its record's worker,
 * or a second mount point's, found by the connection) is stopped: it
 * would answer nothing, and the caller would hang (a stat, unmount's wait
 * for the write-back) or wait out a timeout.
 */
function refuseStopped (mountpoint: string, then: string): void {
  const mp = path.resolve(mountpoint)
  const rec = recordOfMount(mp, findMount(mp))
  if (rec && stopped(rec.worker, rec.workerStart)) {
    throw new ImageError(`${mp}: its daemon ${rec.worker} is stopped (SIGSTOP?): continue it (kill -CONT ${rec.worker}) and ${then}`, EXIT.BUSY)
  }
}

/**
 * The live numbers of the daemon of mountpoint (the stats ioctl). A
 * daemon that does not answer within timeoutMs (stopped with SIGSTOP,
 * hung) is an error (exit 6), not a hang: the ioctl's FUSE request waits
 * for the daemon and only SIGKILL ends that wait, so the helper that
 * sends it is killed with SIGKILL.
 */
export function liveStats (mountpoint: string, timeoutMs = 10000): Record<string, unknown> {
  refuseStopped(mountpoint, 'ask again')
  try {
    return JSON.parse(execFileSync(ioctlTool(), ['stats', mountpoint], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs, killSignal: 'SIGKILL' })) as Record<string, unknown>
  } catch (err) {
    const e = err as { signal?: string, stderr?: string, message: string }
    if (e.signal === 'SIGKILL') throw new ImageError(`${mountpoint}: its daemon does not answer (stopped or hung?)`, EXIT.BUSY)
    throw new ImageError(`${mountpoint}: ${String(e.stderr || e.message).trim().replace(/^foliofs-ioctl: /, '')}`, EXIT.MOUNT_FAILED)
  }
}

/**
 * The options of a second mount point (bindSecondMount) that it cannot
 * take: all but ro/rw and the ignored fstab ones are the first mount's.
 * They are valid (parseMountOptions took them) and the mount goes on: the
 * caller says which, so that `-o cache_size=1G` or `noatime` is not
 * silently without effect.
 */
export function optionsOfFirstMount (opts: string[]): string[] {
  return opts.flatMap(g => g.split(',')).map(o => o.trim()).filter(o => {
    const key = o.split('=')[0]
    return o !== '' && key !== 'ro' && key !== 'rw' && !(IGNORED.has(key) && !o.includes('=')) && !key.startsWith('x-')
  })
}

/**
 * A second mount point of an image that is mounted already: as a block
 * filesystem mounted twice, the same filesystem at both places, here a
 * bind mount of the first (root only: mount(2) MS_BIND). -o ro makes the
 * new mount point read-only (a read-only bind); every other option is
 * the first mount's. Unmounting either leaves the other working
 * (umount moves the daemon's record).
 */
export function bindSecondMount (first: MountEntry, mountpoint: string, opts: MountOptions): void {
  const mp = path.resolve(mountpoint)
  checkMountpoint(mp)
  if (process.getuid?.() !== 0) {
    throw new ImageError(`${first.source}: already mounted at ${first.mountpoint} (a second mount point is a bind mount: root only)`, EXIT.BUSY)
  }
  try {
    execFileSync('mount', ['--bind', first.mountpoint, mp], { stdio: ['ignore', 'ignore', 'pipe'] })
    if (opts.readonly) execFileSync('mount', ['-o', 'remount,bind,ro', mp], { stdio: ['ignore', 'ignore', 'pipe'] })
  } catch (err) {
    if (findMount(mp)?.dev === first.dev) try { unmountPath(mp, true) } catch { /* best effort */ }
    throw new ImageError(`${mp}: bind mount of ${first.mountpoint} failed: ${String((err as { stderr?: Buffer }).stderr ?? err).trim()}`, EXIT.MOUNT_FAILED)
  }
}
