// Mount table helpers and unmounting without fuse-native: Debian's fuse3
// names the helper fusermount3; root can also use umount(8) directly.
import * as fs from 'fs'
import * as path from 'path'
import { execFileSync } from 'child_process'

export interface MountEntry { mountpoint: string, fstype: string, source: string, /** major:minor */ dev: string }

function unescapeMount (s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}

export function mountTable (): MountEntry[] {
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8')
  const out: MountEntry[] = []
  for (const line of text.split('\n')) {
    if (!line) continue
    const [pre, post] = line.split(' - ')
    if (!post) continue
    const f = pre.split(' ')
    const g = post.split(' ')
    out.push({ mountpoint: unescapeMount(f[4]), fstype: g[0], source: unescapeMount(g[1]), dev: f[2] })
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

// ---- runtime state: one JSON file per mount --------------------------------

export interface MountRecord { image: string, mountpoint: string, worker: number, supervisor: number }

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

export function removeRecord (mountpoint: string, pid?: number): void {
  const rec = readRecord(mountpoint)
  if (rec && pid !== undefined && rec.worker !== pid) return
  fs.rmSync(recordPath(mountpoint), { force: true })
}

export function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

