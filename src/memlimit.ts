/**
 * How much memory this process may use: the machine's, or less when a
 * memory cgroup (a container's `--memory`, a systemd unit's MemoryMax)
 * limits it. The page cache's size is checked against it and its default
 * is cut to fit it (daemon.ts): a cache sized from the machine's memory in
 * a container of 512M lets writers fill the cgroup with dirty data, and
 * the kernel's OOM killer ends the daemon (a dead mount) instead of
 * writers waiting for writeback.
 *
 * The limit is the smallest of the process's cgroup and its ancestors
 * (each level's limit applies), in the v2 hierarchy and in v1's memory
 * controller, whichever is mounted (a hybrid host has both; only the v1
 * one limits then, but reading both costs nothing). Paths come from
 * /proc/self/cgroup and are placed under their mount through
 * /proc/self/mountinfo's root field (a container sees its own cgroup at
 * the mount's root). Anything unreadable counts as no limit: this is
 * advice, and a wrong "no limit" is today's behaviour.
 */

import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import { parseMountinfo } from './mounts'

interface CgroupMount { root: string, dir: string, v2: boolean }

/** the v2 mount and v1 memory controller mounts in mountinfo */
function cgroupMounts (mountinfo: string): CgroupMount[] {
  return parseMountinfo(mountinfo)
    .filter(m => m.fstype === 'cgroup2' || (m.fstype === 'cgroup' && m.superOptions.split(',').includes('memory')))
    .map(m => ({ root: m.root, dir: m.mountpoint, v2: m.fstype === 'cgroup2' }))
}

/** a limit file's value in bytes, or null for none ("max", v1's huge number, unreadable) */
function readLimit (file: string): number | null {
  let s: string
  try { s = fs.readFileSync(file, 'utf8').trim() } catch { return null }
  if (!/^\d+$/.test(s)) return null
  const n = Number(s)
  return n > 0 && n < 2 ** 60 ? n : null
}

/** the smallest limit of cgroup `cg` and its ancestors under mount m */
function limitUnder (m: CgroupMount, cg: string): number | null {
  const rel = path.posix.relative(m.root, cg)
  if (rel === '..' || rel.startsWith('../')) return null // the cgroup is outside what this mount shows
  const file = m.v2 ? 'memory.max' : 'memory.limit_in_bytes'
  let best: number | null = null
  for (let dir = path.posix.join(m.dir, rel); ; dir = path.posix.dirname(dir)) {
    const n = readLimit(path.posix.join(dir, file))
    if (n !== null && (best === null || n < best)) best = n
    if (dir === m.dir || dir === '/' || !dir.startsWith(m.dir)) break
  }
  return best
}

/**
 * Bytes of memory this process may use: os.totalmem(), or the memory
 * cgroup's limit when smaller. `procRoot` is for tests only.
 */
export function memoryLimit (procRoot = '/proc/self'): { bytes: number, cgroup: boolean } {
  const total = os.totalmem()
  let limit: number | null = null
  try {
    const mounts = cgroupMounts(fs.readFileSync(`${procRoot}/mountinfo`, 'utf8'))
    for (const line of fs.readFileSync(`${procRoot}/cgroup`, 'utf8').split('\n')) {
      const m = /^\d+:([^:]*):(.*)$/.exec(line)
      if (!m) continue
      const v2 = m[1] === ''
      if (!v2 && !m[1].split(',').includes('memory')) continue
      for (const mount of mounts.filter(x => x.v2 === v2)) {
        const n = limitUnder(mount, m[2])
        if (n !== null && (limit === null || n < limit)) limit = n
      }
    }
  } catch { /* no /proc: the machine's memory */ }
  return limit !== null && limit < total ? { bytes: limit, cgroup: true } : { bytes: total, cgroup: false }
}
