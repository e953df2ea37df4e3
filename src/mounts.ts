// Mount table helpers and unmounting without fuse-native: Debian's fuse3
// names the helper fusermount3; root can also use umount(8) directly.
import * as fs from 'fs'
import * as path from 'path'
import { execFileSync } from 'child_process'

export interface MountEntry {
  mountpoint: string, fstype: string, source: string, /** major:minor */ dev: string
  /** the directory of the mounted filesystem shown there (a bind mount's, a container's cgroup) */
  root: string
  /** the filesystem's own options (mountinfo's super options) */
  superOptions: string
  /** a FUSE mount's owner (its user_id= option): who besides root may unmount it */
  owner?: number
}

function unescapeMount (s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}

/** the entries of a mountinfo file's text (proc(5)) */
export function parseMountinfo (text: string): MountEntry[] {
  const out: MountEntry[] = []
  for (const line of text.split('\n')) {
    if (!line) continue
    const [pre, post] = line.split(' - ')
    if (!post) continue
    const f = pre.split(' ')
    const g = post.split(' ')
    const superOptions = g[2] ?? ''
    const uid = /(?:^|,)user_id=(\d+)(?:,|$)/.exec(superOptions)
    out.push({ mountpoint: unescapeMount(f[4]), fstype: g[0], source: unescapeMount(g[1]), dev: f[2], root: unescapeMount(f[3]), superOptions, ...(uid ? { owner: Number(uid[1]) } : {}) })
  }
  return out
}

export function mountTable (): MountEntry[] {
  return parseMountinfo(fs.readFileSync('/proc/self/mountinfo', 'utf8'))
}

/**
 * Every mount point of one FUSE connection (its device major:minor): the
 * first mount and the bind mounts of it that `foliofs mount` makes for a
 * second mount point of the same image.
 */
export function mountsOfDev (dev: string): MountEntry[] {
  return mountTable().filter(m => m.dev === dev && m.fstype.startsWith('fuse'))
}

/**
 * p with its symlinks resolved by readlink alone, never a stat: the path
 * a mount table entry names when p is (or leads through a link to) a
 * mount point. fs.realpathSync stats the mount point, which waits forever
 * for a daemon that does not answer (stopped): `foliofs stats LINK` hung
 * there while `stats MOUNTPOINT` said at once that the daemon is stopped.
 * readlink of a directory (EINVAL) does not ask its filesystem. Lexical
 * '..' as path.resolve; a loop or anything unreadable stops the walk (the
 * caller's own checks then report it).
 */
export function linksResolved (p: string): string {
  let rest = path.resolve(p).split('/').filter(Boolean)
  let out = '/'
  for (let hops = 0; rest.length > 0;) {
    const next = path.posix.join(out, rest[0])
    let target: string
    try {
      target = fs.readlinkSync(next)
    } catch {
      out = next // not a link (or gone): taken as it is
      rest = rest.slice(1)
      continue
    }
    if (++hops > 40) return path.resolve(p) // ELOOP
    rest = [...path.posix.resolve(out, target).split('/').filter(Boolean), ...rest.slice(1)]
    out = '/'
  }
  return out
}

export function findMount (mountpoint: string): MountEntry | undefined {
  const mp = path.resolve(mountpoint)
  const all = mountTable().filter(m => m.mountpoint === mp)
  return all[all.length - 1]
}

/** A FUSE mount whose daemon died answers ENOTCONN to everything. */
export function isStale (mountpoint: string): boolean {
  try {
    fs.statSync(mountpoint)
    return false
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOTCONN'
  }
}

function which (cmd: string): string | null {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':').concat(['/usr/bin', '/bin', '/usr/sbin', '/sbin'])) {
    const p = path.join(dir, cmd)
    try {
      fs.accessSync(p, fs.constants.X_OK)
      return p
    } catch { /* next */ }
  }
  return null
}

/** Unmount (lazily if asked). Tries fusermount3, then umount(8). */
export function unmountPath (mountpoint: string, lazy = false): void {
  const tries: Array<[string, string[]]> = [
    ['fusermount3', [lazy ? '-uz' : '-u', mountpoint]],
    ['umount', lazy ? ['-l', mountpoint] : [mountpoint]]
  ]
  const errors: string[] = []
  for (const [cmd, args] of tries) {
    const bin = which(cmd)
    if (!bin) continue
    try {
      execFileSync(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] })
      return
    } catch (err) {
      errors.push(`${cmd}: ${String((err as { stderr?: Buffer }).stderr ?? err).trim()}`)
    }
  }
  throw new Error(`cannot unmount ${mountpoint}: ${errors.join('; ') || 'no fusermount3/umount found'}`)
}

/**
 * What uses the mount at mp: "pid N (comm: what)" for each process whose
 * cwd, root, open files or mapped files lie in it (what umount(8) calls
 * busy; cf. fuser -m). Best effort: processes we may not look at are
 * left out.
 */
export function mountUsers (mp: string): string[] {
  const inside = (p: string): boolean => p === mp || p.startsWith(mp + '/')
  const link = (p: string): string => { try { return fs.readlinkSync(p) } catch { return '' } }
  return eachProcess(pid => {
    const uses: string[] = []
    for (const what of ['cwd', 'root']) if (inside(link(`/proc/${pid}/${what}`))) uses.push(what)
    for (const fd of fdsOf(pid)) {
      const target = link(`/proc/${pid}/fd/${fd}`).replace(/ \(deleted\)$/, '')
      if (inside(target)) uses.push(`fd ${fd} ${target}`)
    }
    try {
      for (const line of fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
        const file = line.split(/\s+/).slice(5).join(' ')
        if (inside(file) && !uses.includes(`mapped ${file}`)) uses.push(`mapped ${file}`)
      }
    } catch {}
    return uses.length === 0 ? null : `${uses.slice(0, 3).join(', ')}${uses.length > 3 ? ', ...' : ''}`
  })
}

/**
 * Processes that have one of these files open ("pid N (comm)"), found
 * like fuser(1) by the file each /proc/PID/fd names. Best effort, as
 * mountUsers; files that do not exist have no users.
 */
export function fileUsers (files: string[]): string[] {
  const ids = new Set<string>()
  for (const f of files) {
    try { const st = fs.statSync(f); ids.add(`${st.dev}:${st.ino}`) } catch {}
  }
  if (ids.size === 0) return []
  return eachProcess(pid => fdsOf(pid).some(fd => {
    try { const st = fs.statSync(`/proc/${pid}/fd/${fd}`); return ids.has(`${st.dev}:${st.ino}`) } catch { return false }
  }) ? '' : null)
}

/**
 * The walk of /proc both share: for each other process, use(pid) says
 * how it uses what is looked for (null: not at all; '' : it does, with
 * nothing more to say), listed as "pid N (comm[: how])". Processes that
 * go away meanwhile, or that we may not look at, are skipped.
 */
function eachProcess (use: (pid: string) => string | null): string[] {
  const out: string[] = []
  let pids: string[] = []
  try { pids = fs.readdirSync('/proc').filter(d => /^\d+$/.test(d) && Number(d) !== process.pid) } catch { return out }
  for (const pid of pids) {
    const how = use(pid)
    if (how === null) continue
    let comm = '?'
    try { comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() } catch {}
    out.push(`pid ${pid} (${comm}${how ? ': ' + how : ''})`)
  }
  return out
}

/** a process's open descriptors ([] when it is gone or not ours to see) */
function fdsOf (pid: string): string[] {
  try { return fs.readdirSync(`/proc/${pid}/fd`) } catch { return [] }
}

// ---- runtime state: one JSON file per mount --------------------------------

/**
 * One per mount (the daemon's), keyed by a mount point of it: the first
 * one, or a remaining bind mount once the first was unmounted (umount
 * moves it). dev: the connection's major:minor, for its other mount points.
 */
/**
 * A mount's record in runDir(). workerStart/supervisorStart: the
 * processes' start times (/proc/PID/stat, clock ticks since boot), so that
 * a pid reused by another process after the daemon died is not taken for
 * it (a stopped shell job there made umount of the dead mount refuse it as
 * "stopped"); records written before they existed have none.
 */
export interface MountRecord {
  image: string, mountpoint: string, worker: number, supervisor: number, dev?: string
  workerStart?: number, supervisorStart?: number
}

export function runDir (): string {
  return process.env.FOLIOFS_RUNDIR ?? (process.getuid?.() === 0 ? '/run/foliofs' : path.join(process.env.XDG_RUNTIME_DIR ?? '/tmp', 'foliofs'))
}

function recordPath (mountpoint: string): string {
  return path.join(runDir(), path.resolve(mountpoint).replace(/\//g, '_') + '.json')
}

export function writeRecord (rec: MountRecord): void {
  fs.mkdirSync(runDir(), { recursive: true })
  fs.writeFileSync(recordPath(rec.mountpoint), JSON.stringify(rec))
}

export function readRecord (mountpoint: string): MountRecord | null {
  try {
    return JSON.parse(fs.readFileSync(recordPath(mountpoint), 'utf8')) as MountRecord
  } catch {
    return null
  }
}

/** the records of a daemon, wherever they moved */
export function recordsOfWorker (pid: number): MountRecord[] {
  let names: string[]
  try { names = fs.readdirSync(runDir()).filter(n => n.endsWith('.json')) } catch { return [] }
  const out: MountRecord[] = []
  for (const n of names) {
    try {
      const r = JSON.parse(fs.readFileSync(path.join(runDir(), n), 'utf8')) as MountRecord
      if (r.worker === pid) out.push(r)
    } catch { /* not ours, or being rewritten */ }
  }
  return out
}

/**
 * A daemon that could not close its image cleanly (closing failed, or it
 * died: the supervisor writes that) leaves why, for the `foliofs umount`
 * waiting for it (takeOutcome): umount must not say all is well when
 * changes not written back were lost. Keyed by the worker's pid.
 */
const outcomePath = (mountpoint: string, worker: number): string => `${recordPath(mountpoint)}.${worker}.failed`

export function writeOutcome (mountpoint: string, worker: number, why: string): void {
  try {
    fs.mkdirSync(runDir(), { recursive: true })
    fs.writeFileSync(outcomePath(mountpoint, worker), why)
  } catch { /* best effort: the daemon's log has it too */ }
}

/** why worker did not close its image cleanly, or null; forgets it */
export function takeOutcome (mountpoint: string, worker: number): string | null {
  const file = outcomePath(mountpoint, worker)
  try {
    const why = fs.readFileSync(file, 'utf8')
    fs.rmSync(file, { force: true })
    return why
  } catch {
    return null
  }
}

/**
 * A worker that has just mounted: its record. An outcome left under the
 * same mount point and pid belongs to an earlier worker that died with no
 * umount waiting to read it; pids wrap (32768 here), and a clean umount
 * of this one then said it had died and lost data (generic/021 in a full
 * run): it goes first.
 */
export function recordMounted (rec: MountRecord): void {
  fs.rmSync(outcomePath(rec.mountpoint, rec.worker), { force: true })
  writeRecord({ ...rec, workerStart: procStat(rec.worker)?.start, supervisorStart: procStat(rec.supervisor)?.start })
}

export function removeRecord (mountpoint: string, pid?: number): void {
  const rec = readRecord(mountpoint)
  if (rec && pid !== undefined && rec.worker !== pid) return
  fs.rmSync(recordPath(mountpoint), { force: true })
}

/**
 * Is pid running? A zombie is not: it has exited and waits for its parent
 * to reap it, which may be never (an orphaned supervisor in a container
 * whose PID 1 reaps nobody: umount waited its whole minute for one).
 * One look at /proc/PID/stat answers both: gone (no entry) or a zombie is
 * not running. Asking kill(pid, 0) first and /proc after raced: a zombie
 * reaped in between had no entry any more, which read as "no /proc here,
 * kill's answer stands", alive, and umount said the daemon had not exited
 * (generic/024 in CI). kill(pid, 0) answers only where there is no /proc.
 */
export function alive (pid: number, start?: number): boolean {
  const st = procStat(pid)
  if (st === undefined) {
    if (fs.existsSync('/proc/self/stat')) return false // /proc is there: pid is gone
    try {
      process.kill(pid, 0)
      return true
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'EPERM'
    }
  }
  return st.state !== 'Z' && (start === undefined || st.start === start)
}

/**
 * /proc/PID/stat's state letter (R, S, D, T stopped, Z zombie...) and start
 * time (clock ticks since boot: with the pid, names one process for good);
 * undefined without an entry
 */
function procStat (pid: number): { state: string, start: number } | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ') // the fields after "(comm) ", the state first
    return { state: f[0], start: Number(f[19]) } // starttime is field 22
  } catch {
    return undefined
  }
}

/**
 * Is pid stopped (SIGSTOP, SIGTSTP, a tracer)? A stopped daemon answers
 * no request until it is continued, and a stat of its mount point waits
 * for it in a sleep only SIGKILL ends: check this before touching the
 * mount when a hang must not happen.
 */
export function stopped (pid: number, start?: number): boolean {
  const st = procStat(pid)
  return st !== undefined && (st.state === 'T' || st.state === 't') && (start === undefined || st.start === start)
}

