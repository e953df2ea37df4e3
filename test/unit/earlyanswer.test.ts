// create and unlink answer the kernel before their rows are written
// (FolioFs.createNode's `answer`, fuse-ops replyEarly): the answer goes out
// once nothing can refuse the operation any more, and a write failing after
// it is the filesystem's failure (it refuses further changes), never a
// second answer.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as path from 'path'
import { mkfs, openImage } from '../../src/image'
import { FolioFs } from '../../src/fs'
import { Coherence } from '../../src/coherence'
import { makeOps, newRequestStats } from '../../src/fuse-ops'
import { fsck } from '../../src/fsck'
import { tmpdir } from './helpers'

type Cb = (...args: any[]) => void

function mount (): { img: string, fs: FolioFs, ops: Record<string, Cb>, invalidated: string[][] } {
  const img = path.join(tmpdir(), 'e.img')
  mkfs(img, { capacityBytes: 64 << 20 })
  const fs = new FolioFs(openImage(img))
  const invalidated: string[][] = []
  const ctx = {
    fs,
    fuse: { context: { uid: 0, gid: 0, pid: 0, umask: 0o022 } },
    extraStats: () => ({}),
    requests: newRequestStats(),
    coherence: undefined as Coherence | undefined
  }
  ctx.coherence = new Coherence(fs, { invalidatePaths: (p, cb) => { invalidated.push(p); cb(0) }, setAbsentXattrs: () => {} })
  return { img, fs, ops: makeOps(ctx), invalidated }
}

const root = { uid: 0, gid: 0 }

/** how many entries named name there are, as stored */
const stored = (fs: FolioFs, name: string): number => fs.db.prepare('SELECT count(*) FROM dirents WHERE name = ?').pluck().get(name) as number

/** call a handler; resolves with what probe() gives when it answers (without an error) */
async function atAnswer<T> (ops: Record<string, Cb>, op: string, args: unknown[], probe: () => T): Promise<T> {
  return await new Promise<T>(resolve => ops[op](...args, (err: number) => { assert.equal(err, 0); resolve(probe()) }))
}

/** a file of 1 MiB written back: how many blocks are used with it */
async function withData (fs: FolioFs, p: string): Promise<number> {
  const ino = fs.create(p, 0o644, root)
  await fs.write(ino, Buffer.alloc(1 << 20, 1), 0)
  await fs.fsync(ino)
  return fs.used
}

/** call a handler; resolves with every callback it made (one, if all is well), a tick after the first */
async function call (ops: Record<string, Cb>, op: string, ...args: unknown[]): Promise<unknown[][]> {
  const calls: unknown[][] = []
  await new Promise<void>(resolve => {
    ops[op](...args, (...r: unknown[]) => { calls.push(r); setTimeout(resolve, 20) })
  })
  return calls
}

test('a create is answered before its rows are written, and its handle and attributes are the real ones', async () => {
  const { img, fs, ops } = mount()
  const names = fs.db.prepare("SELECT count(*) FROM dirents WHERE name = 'f'").pluck()
  let rowsAtAnswer = -1
  const calls: unknown[][] = []
  ops.create('/f', 0o100644, 1, (...r: unknown[]) => { rowsAtAnswer = names.get() as number; calls.push(r) })
  assert.equal(calls.length, 1, 'answered once, synchronously')
  assert.equal(rowsAtAnswer, 0, 'the answer came before the dirent was written')
  assert.equal(names.get(), 1, 'and the rows are there once the handler returns')
  const [err, fh, st] = calls[0] as [number, number, { ino: number, mode: number, nlink: number }]
  assert.equal(err, 0)
  assert.equal(fs.handle(fh).ino, st.ino)
  assert.equal(fs.resolve('/f'), st.ino)
  assert.deepEqual(fs.stat(st.ino), st, 'the attributes answered are the ones stored')
  assert.equal(fs.openHandles(), 1, 'one handle, not one per answer')
  // an inode number is never handed out twice, across a remount too
  await call(ops, 'release', '/f', fh)
  await call(ops, 'unlink', '/f')
  await fs.close()
  const again = new FolioFs(openImage(img))
  const g = again.create('/g', 0o644, root)
  assert.ok(g > st.ino, `a new inode (${g}) gets a number never used (${st.ino} was)`)
  await again.close()
  assert.deepEqual(fsck(img).errors, [])
})

test('a refused create is answered with its errno, not early', async () => {
  const { fs, ops } = mount()
  fs.create('/f', 0o644, root)
  assert.deepEqual(await call(ops, 'create', '/f', 0o100644, 1), [[-17]])
  assert.deepEqual(await call(ops, 'create', '/nodir/f', 0o100644, 1), [[-2]])
  await fs.close()
})

test('a write failing after the early answer does not answer again: the filesystem refuses further changes', async () => {
  const { fs, ops } = mount()
  const create = fs.create.bind(fs)
  // the inode's row appears under it between the answer and the insert: the insert fails
  fs.create = (p, mode, creds, answer) => create(p, mode, creds, ino => {
    answer?.(ino)
    fs.db.prepare('INSERT INTO inodes (ino, mode, uid, gid, nlink, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns) VALUES (?, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0)').run(ino)
  })
  const logged: string[] = []
  const write = process.stderr.write
  process.stderr.write = ((s: string) => { logged.push(String(s)); return true }) as typeof process.stderr.write
  let calls: unknown[][]
  try {
    calls = await call(ops, 'create', '/f', 0o100644, 1)
  } finally {
    process.stderr.write = write
  }
  assert.equal(calls.length, 1, 'one answer')
  assert.equal(calls[0][0], 0, 'the early answer stands')
  assert.ok(logged.some(l => /create failed after it was answered/.test(l)), logged.join(''))
  fs.create = create
  assert.deepEqual(await call(ops, 'mkdir', '/d', 0o755), [[-5]], 'further changes: EIO')
  await fs.close()
})

test('unlink answers early the last name of an inode, and its data is freed after the answer', async () => {
  const { fs, ops, invalidated } = mount()
  // an empty file: answered before its dirent is deleted
  fs.create('/e', 0o644, root)
  assert.equal(await atAnswer(ops, 'unlink', ['/e'], () => stored(fs, 'e')), 1, 'answered before the delete')
  assert.equal(stored(fs, 'e'), 0)
  // a hard-linked file: its other name is invalidated before the answer
  fs.create('/h1', 0o644, root)
  fs.link('/h1', '/h2')
  assert.deepEqual(await atAnswer(ops, 'unlink', ['/h1'], () => [...invalidated]), [['/h2']])
  // a file with data: answered before its name is removed; its blocks are freed later (reaper.ts)
  const used = await withData(fs, '/big')
  assert.deepEqual(await atAnswer(ops, 'unlink', ['/big'], () => [stored(fs, 'big'), fs.used]), [1, used], 'answered before the writes and the freeing')
  assert.equal(stored(fs, 'big'), 0)
  await fs.reaper.settled()
  assert.equal(fs.used, used - 256, 'freed by the reaper')
  assert.deepEqual(await call(ops, 'unlink', '/big'), [[-2]])
  await fs.close()
})

test('rename answers early unless a name is shared; refusals keep their errno', async () => {
  const { fs, ops, invalidated } = mount()
  fs.create('/a', 0o644, root)
  assert.equal(await atAnswer(ops, 'rename', ['/a', '/b', 0], () => stored(fs, 'b')), 0, 'answered before the new name was written')
  await new Promise(resolve => setTimeout(resolve, 10))
  assert.equal(stored(fs, 'b'), 1)
  // over an empty file: early too, and the replaced inode is gone
  const c = fs.create('/c', 0o644, root)
  assert.equal(await atAnswer(ops, 'rename', ['/b', '/c', 0], () => stored(fs, 'b')), 1, 'answered before the old name was removed')
  await new Promise(resolve => setTimeout(resolve, 10))
  assert.equal(fs.db.prepare('SELECT count(*) FROM inodes WHERE ino = ?').pluck().get(c), 0)
  // over a file with data: early too; the reaper frees its blocks after
  const used = await withData(fs, '/big')
  assert.equal(await atAnswer(ops, 'rename', ['/c', '/big', 0], () => fs.used), used)
  await fs.reaper.settled()
  assert.equal(fs.used, used - 256)
  // a hard-linked file moved: its other name is invalidated before the answer
  fs.create('/h1', 0o644, root)
  fs.link('/h1', '/h2')
  assert.deepEqual(await atAnswer(ops, 'rename', ['/h1', '/h3', 0], () => [...invalidated]), [['/h2']])
  // refusals
  fs.mkdir('/d', 0o755, root)
  fs.mkdir('/e', 0o755, root)
  fs.create('/e/x', 0o644, root)
  assert.deepEqual(await call(ops, 'rename', '/d', '/e', 0), [[-39]], 'ENOTEMPTY')
  assert.deepEqual(await call(ops, 'rename', '/big', '/d', 0), [[-21]], 'EISDIR')
  assert.deepEqual(await call(ops, 'rename', '/d', '/big', 0), [[-20]], 'ENOTDIR')
  assert.deepEqual(await call(ops, 'rename', '/nothere', '/z', 0), [[-2]], 'ENOENT')
  await fs.close()
})
