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

/** a cgroup whose memory limit applies to this process */
interface Limited { dir: string, v2: boolean, bytes: number }

/** cgroup `cg` and its ancestors under mount m that have a limit */
function limitedUnder (m: CgroupMount, cg: string): Limited[] {
  const rel = path.posix.relative(m.root, cg)
  if (rel === '..' || rel.startsWith('../')) return [] // the cgroup is outside what this mount shows
  const file = m.v2 ? 'memory.max' : 'memory.limit_in_bytes'
  const out: Limited[] = []
  for (let dir = path.posix.join(m.dir, rel); ; dir = path.posix.dirname(dir)) {
    const n = readLimit(path.posix.join(dir, file))
    if (n !== null) out.push({ dir, v2: m.v2, bytes: n })
    if (dir === m.dir || dir === '/' || !dir.startsWith(m.dir)) break
  }
  return out
}

/** every cgroup level whose memory limit applies to this process (none where /proc cannot be read) */
function limitedCgroups (procRoot: string): Limited[] {
  const out: Limited[] = []
  try {
    const mounts = cgroupMounts(fs.readFileSync(`${procRoot}/mountinfo`, 'utf8'))
    for (const line of fs.readFileSync(`${procRoot}/cgroup`, 'utf8').split('\n')) {
      const m = /^\d+:([^:]*):(.*)$/.exec(line)
      if (!m) continue
      const v2 = m[1] === ''
      if (!v2 && !m[1].split(',').includes('memory')) continue
      for (const mount of mounts.filter(x => x.v2 === v2)) out.push(...limitedUnder(mount, m[2]))
    }
  } catch { /* no /proc: no cgroup limit */ }
  return out
}

/**
 * Bytes of memory this process may use: os.totalmem(), or the memory
 * cgroup's limit when smaller. `procRoot` is for tests only.
 */
export function memoryLimit (procRoot = '/proc/self'): { bytes: number, cgroup: boolean } {
  const total = os.totalmem()
  const limit = Math.min(...limitedCgroups(procRoot).map(l => l.bytes))
  return limit < total ? { bytes: limit, cgroup: true } : { bytes: total, cgroup: false }
}

/**
 * Memory a limited cgroup has left, in bytes: its limit less what its
 * processes use that the kernel cannot reclaim (usage less the page
 * cache's files: v2 memory.current and memory.stat's active_file and
 * inactive_file, v1 memory.usage_in_bytes and total_*_file). The host's
 * MemAvailable says nothing of it: a container of 512M on a host with
 * gigabytes free is OOM-killed all the same. Null where unreadable.
 */
function cgroupAvailable (l: Limited): number | null {
  const num = (file: string): number | null => {
    try {
      const n = Number(fs.readFileSync(path.posix.join(l.dir, file), 'utf8').trim())
      return Number.isFinite(n) ? n : null
    } catch { return null }
  }
  const usage = num(l.v2 ? 'memory.current' : 'memory.usage_in_bytes')
  let stat: string
  try { stat = fs.readFileSync(path.posix.join(l.dir, 'memory.stat'), 'utf8') } catch { return null }
  const field = (key: string): number => Number(new RegExp(`^${key} (\\d+)$`, 'm').exec(stat)?.[1] ?? 0)
  const file = l.v2 ? field('active_file') + field('inactive_file') : field('total_active_file') + field('total_inactive_file')
  return usage === null ? null : l.bytes - Math.max(usage - file, 0)
}

/**
 * Is a memory cgroup of this process short of memory? True when one whose
 * limit applies has less than a twentieth of its limit left (at least
 * 64 MiB, or an eighth of a limit below 512M), as writeback.ts's
 * memoryLow() judges the machine. `procRoot` is for tests only.
 */
export function cgroupMemoryLow (procRoot = '/proc/self'): boolean {
  return limitedCgroups(procRoot).some(l => {
    const avail = cgroupAvailable(l)
    return avail !== null && avail < Math.max(l.bytes / 20, Math.min(64 << 20, l.bytes / 8))
  })
}
