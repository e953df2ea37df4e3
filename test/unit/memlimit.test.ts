import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import { cgroupMemoryLow, memoryLimit } from '../../src/memlimit'

/** a fake /proc/self: mountinfo lines and a cgroup file; limit files under tmp */
function fakeProc (mountinfo: (tmp: string) => string, cgroup: string, limits: Record<string, string>): string {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'memlimit-'))
  for (const [rel, v] of Object.entries(limits)) {
    fs.mkdirSync(path.dirname(path.join(tmp, rel)), { recursive: true })
    fs.writeFileSync(path.join(tmp, rel), v + '\n')
  }
  fs.mkdirSync(path.join(tmp, 'proc'))
  fs.writeFileSync(path.join(tmp, 'proc', 'mountinfo'), mountinfo(tmp))
  fs.writeFileSync(path.join(tmp, 'proc', 'cgroup'), cgroup)
  return tmp
}

const M = 1 << 20

test('memlimit: a v2 cgroup seen from a container (mount root /docker/x), the smallest of the cgroup and its ancestors', () => {
  const tmp = fakeProc(t => `40 30 0:37 /docker/x ${t}/cg\\040v2 rw,relatime - cgroup2 cgroup2 rw\n`, '0::/docker/x/sub\n',
    { 'cg v2/memory.max': `${512 * M}`, 'cg v2/sub/memory.max': 'max' })
  try {
    assert.deepEqual(memoryLimit(path.join(tmp, 'proc')), { bytes: 512 * M, cgroup: true })
  } finally { fs.rmSync(tmp, { recursive: true }) }
})

test('memlimit: a v1 memory controller among others; v1\'s "no limit" and other controllers ignored', () => {
  const tmp = fakeProc(t => [
    `31 30 0:28 / ${t}/cpu rw - cgroup cgroup rw,cpu`,
    `34 30 0:31 / ${t}/mem rw,relatime - cgroup cgroup rw,memory`, ''].join('\n'),
  '4:memory:/a/b\n1:cpu:/a/b\n0::/\n',
  { 'mem/memory.limit_in_bytes': '9223372036854771712', 'mem/a/memory.limit_in_bytes': `${300 * M}`, 'mem/a/b/memory.limit_in_bytes': `${700 * M}`, 'cpu/a/b/memory.limit_in_bytes': `${M}` })
  try {
    assert.deepEqual(memoryLimit(path.join(tmp, 'proc')), { bytes: 300 * M, cgroup: true })
  } finally { fs.rmSync(tmp, { recursive: true }) }
})

test('memlimit: no cgroup limit, or none readable: the machine\'s memory', () => {
  const tmp = fakeProc(t => `40 30 0:37 / ${t}/cg rw - cgroup2 cgroup2 rw\n`, '0::/u\n', { 'cg/u/memory.max': 'max' })
  try {
    assert.deepEqual(memoryLimit(path.join(tmp, 'proc')), { bytes: os.totalmem(), cgroup: false })
    assert.deepEqual(memoryLimit(path.join(tmp, 'nowhere')), { bytes: os.totalmem(), cgroup: false })
  } finally { fs.rmSync(tmp, { recursive: true }) }
})

test('memlimit: a cgroup is short of memory when its limit less what cannot be reclaimed (usage less file pages) is under max(1/20, min(64M, 1/8)) of it', () => {
  const v2 = (current: number, file: number): string => fakeProc(t => `40 30 0:37 / ${t}/cg rw - cgroup2 cgroup2 rw\n`, '0::/c\n',
    { 'cg/c/memory.max': `${400 * M}`, 'cg/c/memory.current': `${current}`, 'cg/c/memory.stat': `anon 1\nactive_file ${file / 2}\ninactive_file ${file / 2}\nfile_mapped 7` })
  const v1 = (usage: number, file: number): string => fakeProc(t => `34 30 0:31 / ${t}/mem rw - cgroup cgroup rw,memory\n`, '4:memory:/c\n',
    { 'mem/c/memory.limit_in_bytes': `${400 * M}`, 'mem/c/memory.usage_in_bytes': `${usage}`, 'mem/c/memory.stat': `cache 9\nactive_file 5\ntotal_active_file ${file / 2}\ntotal_inactive_file ${file / 2}` })
  // 400M: short below 50M left (an eighth); page cache counts as free
  for (const [make, name] of [[v2, 'v2'], [v1, 'v1']] as const) {
    for (const [use, file, low] of [[360 * M, 0, true], [340 * M, 0, false], [399 * M, 100 * M, false], [390 * M, 20 * M, true]] as const) {
      const tmp = make(use, file)
      try {
        assert.equal(cgroupMemoryLow(path.join(tmp, 'proc')), low, `${name}: usage ${use / M}M, file ${file / M}M`)
      } finally { fs.rmSync(tmp, { recursive: true }) }
    }
  }
  // nothing readable, or no limit: not short
  const tmp = fakeProc(t => `40 30 0:37 / ${t}/cg rw - cgroup2 cgroup2 rw\n`, '0::/u\n', { 'cg/u/memory.max': 'max', 'cg/u/memory.current': `${M}` })
  try {
    assert.equal(cgroupMemoryLow(path.join(tmp, 'proc')), false)
    assert.equal(cgroupMemoryLow(path.join(tmp, 'nowhere')), false)
  } finally { fs.rmSync(tmp, { recursive: true }) }
})
