// src/mounts.ts: what the CLI knows of a daemon's process.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'child_process'
import nodefs = require('fs')
import { alive } from '../../src/mounts'

test('alive(): a zombie (exited, never reaped) is not alive', async () => {
  // a child of python that has exited while python, its parent, waits on
  // its stdin without reaping it: `foliofs umount` waited a whole minute
  // for such a supervisor in a container whose PID 1 reaps nobody
  const py = spawn('python3', ['-c', `
import os, sys, time
pid = os.fork()
if pid == 0: os._exit(0)
state = lambda: open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0]
end = time.time() + 10 # a loaded machine may take a while to run the child to its exit
while state() != "Z" and time.time() < end: time.sleep(0.05)
print(pid, state(), flush=True)
sys.stdin.read()
`], { stdio: ['pipe', 'pipe', 'inherit'] })
  // the whole line, however the pipe delivers it
  const line = await new Promise<string>(resolve => {
    let got = ''
    py.stdout.on('data', (d: Buffer) => { got += d.toString(); if (got.includes('\n')) resolve(got) })
  })
  const [pid, state] = line.trim().split(' ')
  try {
    assert.equal(state, 'Z', 'the child is a zombie while python lives')
    assert.equal(alive(Number(pid)), false)
    assert.equal(alive(process.pid), true)
  } finally {
    py.stdin.end()
    await new Promise(resolve => py.once('exit', resolve))
  }
})

test('alive(): a zombie reaped between two looks is not alive (umount said the daemon had not exited)', async () => {
  // the race, made to happen: the process still answers kill(pid, 0) (a
  // zombie does) while its /proc entry is already gone (reaped just then)
  const py = spawn('python3', ['-c', `
import os, sys, time
pid = os.fork()
if pid == 0: os._exit(0)
end = time.time() + 10
while open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0] != "Z" and time.time() < end: time.sleep(0.05)
print(pid, flush=True)
sys.stdin.read()
`], { stdio: ['pipe', 'pipe', 'inherit'] })
  const pid = Number(await new Promise<string>(resolve => {
    let got = ''
    py.stdout.on('data', (d: Buffer) => { got += d.toString(); if (got.includes('\n')) resolve(got) })
  }))
  const real = nodefs.readFileSync
  const gone = `/proc/${pid}/stat`
  ;(nodefs as { readFileSync: unknown }).readFileSync = (p: unknown, ...rest: unknown[]) => {
    if (p === gone) throw Object.assign(new Error(`ENOENT: ${gone}`), { code: 'ENOENT' })
    return (real as (...a: unknown[]) => unknown)(p, ...rest)
  }
  try {
    assert.equal(alive(pid), false)
  } finally {
    nodefs.readFileSync = real
    py.stdin.end()
    await new Promise(resolve => py.once('exit', resolve))
  }
})
