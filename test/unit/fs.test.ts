import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as path from 'path'
import { mkfs, openImage } from '../../src/image'
import { FolioFs, type FsOptions } from '../../src/fs'
import { TRUNCATE_BATCH, TRUNCATE_STEP_MS } from '../../src/filedata'
import { fsck } from '../../src/fsck'
import { FsError } from '../../src/errno'
import { rng, tmpdir } from './helpers'
import { FS_APPEND_FL, FS_IMMUTABLE_FL } from '../../src/iflags'

const root = { uid: 0, gid: 0 }

function fresh (capacity = 64 << 20, opts: FsOptions = {}): { img: string, fs: FolioFs } {
  const img = path.join(tmpdir(), 'a.img')
  mkfs(img, { capacityBytes: capacity })
  return { img, fs: new FolioFs(openImage(img), opts) }
}

const code = (fn: () => unknown): string => {
  try { fn() } catch (e) { if (e instanceof FsError) return e.code; throw e }
  return 'ok'
}

const acode = async (fn: () => unknown): Promise<string> => {
  try { await fn() } catch (e) { if (e instanceof FsError) return e.code; throw e }
  return 'ok'
}

test('random writes and truncates match an in-memory model, across reopen', async () => {
  let { img, fs } = fresh()
  const ino = fs.create('/f', 0o644, root)
  let model = Buffer.alloc(0)
  const r = rng(42)
  for (let k = 0; k < 400; k++) {
    if (r() < 0.8) {
      const pos = Math.floor(r() * 200000)
      const len = 1 + Math.floor(r() * 20000)
      const data = Buffer.alloc(len, Math.floor(r() * 256))
      await fs.write(ino, data, pos)
      if (model.length < pos + len) model = Buffer.concat([model, Buffer.alloc(pos + len - model.length)])
      data.copy(model, pos)
    } else {
      const size = Math.floor(r() * 220000)
      await fs.truncate(ino, size)
      model = size <= model.length ? Buffer.from(model.subarray(0, size)) : Buffer.concat([model, Buffer.alloc(size - model.length)])
    }
    if (k === 200) { await fs.close(); fs = new FolioFs(openImage(img)) }
  }
  const buf = Buffer.alloc(model.length + 100)
  assert.equal(await fs.read(ino, buf, buf.length, 0), model.length)
  assert.ok(buf.subarray(0, model.length).equals(model))
  for (let k = 0; k < 50; k++) { // reads at offsets, some across EOF
    const pos = Math.floor(r() * (model.length + 10))
    const len = 1 + Math.floor(r() * 30000)
    const b = Buffer.alloc(len)
    const n = await fs.read(ino, b, len, pos)
    assert.equal(n, Math.max(0, Math.min(len, model.length - pos)))
    assert.ok(b.subarray(0, n).equals(model.subarray(pos, pos + n)))
  }
  assert.equal(fs.stat(ino).size, model.length)
  await fs.close()
})

test('namespace errors are typed errno codes', async () => {
  const { fs } = fresh()
  fs.mkdir('/d', 0o755, root)
  fs.create('/d/f', 0o644, root)
  assert.equal(code(() => fs.mkdir('/d', 0o755, root)), 'EEXIST')
  assert.equal(code(() => fs.rmdir('/d')), 'ENOTEMPTY')
  assert.equal(await acode(() => fs.unlink('/d')), 'EISDIR')
  assert.equal(await acode(() => fs.rename('/d', '/d/sub')), 'EINVAL')
  assert.equal(code(() => fs.create('/' + 'x'.repeat(256), 0o644, root)), 'ENAMETOOLONG')
  assert.equal(code(() => fs.resolve('/d/f/x')), 'ENOTDIR')
  assert.equal(code(() => fs.link('/d', '/l')), 'EPERM')
  await fs.close()
})

test('an inode unlinked while open lives until release, or until the next mount', async () => {
  const { img, fs } = fresh()
  const ino = fs.create('/f', 0o644, root)
  await fs.write(ino, Buffer.alloc(10000, 1), 0)
  const fh = fs.open(ino, 0)
  await fs.unlink('/f')
  assert.equal(fs.stat(ino).nlink, 0)
  const b = Buffer.alloc(10)
  assert.equal(await fs.read(ino, b, 10, 0), 10)
  await fs.release(fh)
  await fs.reaper.settled() // the reaper frees it after the release
  assert.equal(code(() => fs.stat(ino)), 'ENOENT')
  assert.equal(fs.used, 0)
  // crash while an unlinked file is open: the orphan is reaped at next open
  const ino2 = fs.create('/g', 0o644, root)
  await fs.write(ino2, Buffer.alloc(8192, 2), 0)
  fs.open(ino2, 0)
  await fs.unlink('/g')
  fs.db.close()
  const again = new FolioFs(openImage(img))
  assert.equal(code(() => again.stat(ino2)), 'ENOENT')
  assert.equal(again.used, 0)
  await again.close()
})

test('short of space, a write writes what fits (a short write), then ENOSPC; the accounting stays right', async () => {
  const { fs } = fresh(64 * 4096)
  const ino = fs.create('/f', 0o644, root)
  await fs.write(ino, Buffer.alloc(60 * 4096, 3), 0)
  const n = await fs.write(ino, Buffer.alloc(8 * 4096, 4), 60 * 4096)
  assert.ok(n > 0 && n < 8 * 4096 && n % 4096 === 0, `a short write of whole blocks: ${n}`)
  assert.equal(fs.stat(ino).size, 60 * 4096 + n)
  assert.equal(await acode(() => fs.write(ino, Buffer.alloc(4096, 5), 60 * 4096 + n)), 'ENOSPC')
  assert.equal(fs.stat(ino).size, 60 * 4096 + n)
  await fs.sync()
  assert.equal(fs.used, 60 + n / 4096)
  await fs.truncate(ino, 0)
  assert.equal(fs.used, 0)
  await fs.close()
})

test('a run whose allocation waits for the punches of a delete still owns its space: no other write is let into it (found by an I/O hunt: writeback then failed with ENOSPC, answered data lost)', async (t) => {
  const { fs } = fresh(256 * 4096)
  if (!fs.data.discard.stats.enabled) { await fs.close(); t.skip('no punching here (the addon, or the host): nothing to wait for'); return }
  const a = fs.create('/a', 0o644, root)
  await fs.write(a, Buffer.alloc(200 * 4096, 1), 0)
  await fs.sync()
  fs.unlink('/a')
  await fs.reaper.settled() // a's blocks: freed, not allocatable until durable and punched
  // punches that take a while (a big delete on a slow host)
  const d = fs.data.discard as unknown as { reusable: (s: readonly number[], l: readonly number[], release: () => void) => void, stats: { inFlight: number }, idle: () => Promise<void> }
  const real = d.reusable
  d.reusable = (starts, lens, release) => {
    d.stats.inFlight++
    setTimeout(() => real(starts, lens, () => { release(); d.stats.inFlight-- }), 200)
  }
  const b = fs.create('/b', 0o644, root)
  await fs.write(b, Buffer.alloc(200 * 4096, 2), 0)
  const synced = fs.fsync(b) // its run waits for the punches to get a's blocks
  await new Promise(resolve => setTimeout(resolve, 50))
  const c = fs.create('/c', 0o644, root)
  let wrote = 0
  try { wrote = await fs.write(c, Buffer.alloc(100 * 4096, 3), 0) } catch (e) { if (!(e instanceof FsError) || e.code !== 'ENOSPC') throw e }
  await synced
  assert.ok(wrote <= (256 - 1 - 200) * 4096, `${wrote / 4096} blocks let in beside b's 200 on a 255-block device`)
  await fs.sync() // everything answered has a place
  assert.equal(fs.stat(c).size, wrote)
  await fs.close()
})

test('deleted files are freed after their unlink is answered, many per extent-tree commit, a big fragmented one over several steps', async () => {
  // every step takes TRUNCATE_STEP_MS by this clock, so each takes
  // TRUNCATE_BATCH extents (with the real one, the count followed the
  // machine's load: 9 steps in one CI run)
  let clock = 0
  const { img, fs } = fresh(1 << 30, { stepClock: () => (clock += TRUNCATE_STEP_MS) })
  const n = 300
  for (let k = 0; k < n; k++) {
    const ino = fs.create(`/f${k}`, 0o644, root)
    await fs.write(ino, Buffer.alloc(4096 * (1 + k % 3), k), 0)
  }
  const big = fs.create('/big', 0o644, root)
  const block = Buffer.alloc(4096, 9)
  for (let k = 0; k < 3000; k++) await fs.write(big, block, k * 8192) // one-block extents with holes: more than a step takes
  await fs.sync() // all written back: every file has extents to remove
  assert.equal(fs.used, 3000 + n * 2)
  const commits = fs.data.stats.commits
  const steps = fs.data.stats.truncateSteps
  const extents = fs.data.stats.truncateExtents
  for (let k = 0; k < n / 2; k++) fs.unlink(`/f${k}`)
  fs.unlink('/big')
  for (let k = n / 2; k < n; k++) fs.unlink(`/f${k}`)
  assert.equal(fs.used, 3000 + n * 2, 'nothing freed yet: the unlinks only queued their files')
  assert.equal(fs.reaper.stats.reapQueued, n + 1)
  await fs.reaper.settled()
  assert.equal(fs.used, 0)
  assert.equal(fs.reaper.stats.reaped, n + 1)
  assert.equal(fs.reaper.stats.reapBatches, 1, 'queued together, freed together')
  const took = fs.data.stats.truncateSteps - steps
  const unmapped = fs.data.stats.truncateExtents - extents
  assert.ok(unmapped >= 3000 + n, `${unmapped} extents: the big file's 3000 and at least one per small file`)
  assert.equal(took, Math.ceil(unmapped / TRUNCATE_BATCH), `${took} steps of ${TRUNCATE_BATCH} extents: the big file over several, the small ones sharing them`)
  assert.equal(fs.data.stats.commits - commits, took, 'one commit per step')
  assert.equal(fs.db.prepare('SELECT COUNT(*) FROM inodes').pluck().get(), 1, 'only the root is left')
  assert.deepEqual(fs.db.prepare('SELECT ino FROM orphans').pluck().all(), [])
  await fs.close()
  assert.deepEqual(fsck(img).errors, [])
})

test('a truncate or unlink interrupted by a crash between its steps is finished at the next mount', async () => {
  const { img, fs } = fresh(1 << 30)
  const a = fs.create('/a', 0o644, root)
  const b = fs.create('/b', 0o644, root)
  const n = 2500 // one-block extents with holes between them: several truncate steps
  const block = Buffer.alloc(4096, 9)
  for (let k = 0; k < n; k++) { await fs.write(a, block, k * 8192); await fs.write(b, block, k * 8192) }
  await fs.sync() // written back: the truncate has extents to remove
  // crash right after the first step of the truncate (the next step finds the image closed)
  const t = fs.truncate(a, 100 * 8192)
  setImmediate(() => fs.db.close())
  await assert.rejects(t)
  const interrupted = async (ino: number, more: number): Promise<void> => { // a read-only open does not recover
    const ro = new FolioFs(openImage(img, { readonly: true }))
    assert.ok((await ro.data.extents(ino)).length > more, 'the crash left work for recovery')
    await ro.close()
  }
  await interrupted(a, 100)
  let again = new FolioFs(openImage(img))
  assert.equal(again.stat(a).size, 100 * 8192)
  assert.equal(again.stat(a).blocks, 100 * 8)
  assert.equal((await again.data.extents(a)).length, 100)
  // the same for an unlink: the reaper's first step commits, the rest is left to recovery
  again.unlink('/b')
  const u = again.reaper.settled()
  setImmediate(() => again.db.close())
  await u // the reaper's failure is logged; the orphan stays in the table
  assert.equal(again.reaper.stats.reapFailures, 1)
  await interrupted(b, 0)
  again = new FolioFs(openImage(img))
  assert.equal(code(() => again.stat(b)), 'ENOENT')
  assert.equal((await again.data.extents(b)).length, 0)
  assert.equal(again.used, 100)
  await again.close()
  assert.deepEqual(fsck(img).errors, [])
})

test('the inode row and dentry caches never show what a rolled-back operation changed', async () => {
  const { img, fs } = fresh()
  const ino = fs.create('/f', 0o644, root)
  assert.equal(fs.stat(ino).mode & 0o7777, 0o644)
  // an operation that changes the row, reads it back (caching what it read) and then fails
  assert.throws(() => fs.tx(() => {
    fs.chmod(ino, 0o600)
    assert.equal(fs.stat(ino).mode & 0o7777, 0o600, 'inside: the change is seen')
    fs.link('/f', '/g')
    assert.equal(fs.stat(ino).nlink, 2)
    assert.equal(fs.resolve('/g'), ino)
    throw new Error('fail after the changes')
  }), /fail after the changes/)
  const st = fs.stat(ino)
  assert.equal(st.mode & 0o7777, 0o644, 'the mode is back')
  assert.equal(st.nlink, 1, 'and the link count')
  assert.throws(() => fs.resolve('/g'), (e: FsError) => e.code === 'ENOENT')
  // changes that commit are seen at once
  fs.chmod(ino, 0o640)
  assert.equal(fs.stat(ino).mode & 0o7777, 0o640)
  await fs.close()
  assert.deepEqual(fsck(img).errors, [])
})

test('the inode row cache agrees with the rows SQLite holds after every kind of namespace change', async () => {
  const { img, fs } = fresh()
  const cols = ['mode', 'uid', 'gid', 'nlink', 'size', 'rdev', 'atime_s', 'atime_ns', 'mtime_s', 'mtime_ns', 'ctime_s', 'ctime_ns'] as const
  const stored = fs.db.prepare(`SELECT ino, ${cols.join(', ')}, blocks FROM inodes`)
  const check = (step: string): void => {
    for (const r of stored.all() as Array<Record<string, number>>) {
      const st = fs.stat(r.ino)
      const seen = { mode: st.mode, uid: st.uid, gid: st.gid, nlink: st.nlink, size: st.size, rdev: st.rdev, atime_s: st.atime.sec, atime_ns: st.atime.nsec, mtime_s: st.mtime.sec, mtime_ns: st.mtime.nsec, ctime_s: st.ctime.sec, ctime_ns: st.ctime.nsec, blocks: st.blocks / 8 }
      const want = Object.fromEntries([...cols, 'blocks'].map(c => [c, r[c]]))
      assert.deepEqual(seen, want, `${step}: inode ${r.ino}`)
    }
  }
  const d = fs.mkdir('/d', 0o755, root)
  check('mkdir')
  for (let i = 0; i < 20; i++) fs.create(`/d/f${i}`, 0o644, root)
  fs.symlink('/d/f0', '/d/s', root)
  fs.mkdir('/d/sub', 0o700, root)
  check('creates')
  fs.link('/d/f1', '/d/f1-again')
  await fs.rename('/d/f2', '/d/sub/f2')
  await fs.rename('/d/sub', '/sub2')
  check('links and renames')
  for (let i = 3; i < 10; i++) await fs.unlink(`/d/f${i}`)
  await fs.unlink('/sub2/f2')
  fs.rmdir('/sub2')
  await fs.reaper.settled()
  check('unlinks and rmdir')
  fs.chmod(d, 0o711)
  fs.chown(d, 12, 34)
  fs.utimens(d, { sec: 5, nsec: 6 }, { sec: 7, nsec: 8 })
  check('attribute changes')
  // data: writeback commits (size, blocks), truncates, atime
  const f = fs.resolve('/d/f10')
  await fs.write(f, Buffer.alloc(300000, 7), 0)
  await fs.fsync(f)
  check('writeback')
  await fs.truncate(f, 5000)
  await fs.fsync(f)
  check('truncate')
  fs.atime = 'strictatime'
  await fs.read(f, Buffer.alloc(100), 100, 0)
  check('atime')
  // an open file unlinked (an orphan), then closed (freed)
  const g = fs.resolve('/d/f11')
  await fs.write(g, Buffer.alloc(8192, 1), 0)
  await fs.sync() // written back (an fsync would journal two blocks: stat would count them, the row not yet)
  const fh = fs.open(g, 2)
  await fs.unlink('/d/f11')
  check('orphan')
  assert.deepEqual(fs.db.prepare('SELECT ino FROM orphans').pluck().all(), [g])
  await fs.release(fh)
  await fs.reaper.settled() // the reaper frees it after the release
  assert.deepEqual(fs.db.prepare('SELECT ino FROM orphans').pluck().all(), [])
  check('orphan freed')
  await fs.close()
  assert.deepEqual(fsck(img).errors, [])
})

test('names known not to exist are found once any operation adds them, and gone once removed', async () => {
  const { img, fs } = fresh()
  const d = fs.mkdir('/d', 0o755, root)
  const absent = (p: string): void => assert.equal(fs.lookupPath(p), undefined, `${p} is absent`)
  const names = ['c', 'm', 's', 'l', 'r', 'n']
  for (const n of names) absent(`/d/${n}`) // each now a cached "no such name"
  const c = fs.create('/d/c', 0o644, root)
  const m = fs.mkdir('/d/m', 0o755, root)
  const s = fs.symlink('/x', '/d/s', root)
  fs.link('/d/c', '/d/l')
  const r = fs.create('/r0', 0o644, root)
  await fs.rename('/r0', '/d/r', 0)
  fs.mknod('/d/n', 0o10644, 0, root)
  assert.deepEqual([c, m, s, c, r].map((_, k) => fs.lookupPath(`/d/${names[k]}`)), [c, m, s, c, r])
  assert.ok(fs.lookupPath('/d/n') !== undefined)
  absent('/r0')
  // a failed operation that added a name leaves it absent again
  absent('/d/t')
  assert.throws(() => fs.tx(() => { fs.create('/d/t', 0o644, root); assert.ok(fs.lookupPath('/d/t')); throw new Error('undo') }), /undo/)
  absent('/d/t')
  for (const n of ['c', 's', 'l', 'r', 'n']) await fs.unlink(`/d/${n}`)
  fs.rmdir('/d/m')
  for (const n of names) absent(`/d/${n}`)
  assert.equal(code(() => fs.resolve('/d/c')), 'ENOENT')
  assert.equal(code(() => fs.resolve('/d/c/x')), 'ENOENT')
  fs.create('/d/f', 0o644, root)
  assert.equal(code(() => fs.lookupPath('/d/f/x')), 'ENOTDIR', 'a file in the middle of a path is still ENOTDIR')
  assert.equal(fs.stat(d).nlink, 2)
  await fs.close()
  assert.deepEqual(fsck(img).errors, [])
})

test('a directory listing is read a chunk at a time, in order, each name once, while names come and go', async () => {
  const { img, fs } = fresh()
  const d = fs.mkdir('/d', 0o755, root)
  const keep: string[] = []
  for (let i = 0; i < 1500; i++) {
    // every third name is not valid UTF-8: stored as a BLOB, listed after all TEXT names
    const name = i % 3 === 0 ? `b\xff${String(i).padStart(5, '0')}` : `t${String(i).padStart(5, '0')}`
    fs.create(`/d/${name}`, 0o644, root)
    keep.push(name)
  }
  const listing = fs.openListing(d)
  const seen: string[] = []
  let offset = 0
  let rounds = 0
  for (let round = 0; ; round++) {
    const r = fs.readdirFrom(d, listing, offset, 100)
    if (r.names.length === 0) break
    rounds++
    if (round === 0) assert.ok(listing.names.length <= 2 + 1024, `the first request read ${listing.names.length} names, not all of them`)
    seen.push(...r.names)
    offset = r.offsets[r.offsets.length - 1]
    // churn: a name behind the reader and one far ahead of it, added and removed
    fs.create(`/d/a-new${round}`, 0o644, root)
    fs.create(`/d/z-new${round}`, 0o644, root)
    await fs.unlink(`/d/z-new${round}`)
  }
  assert.deepEqual(seen.slice(0, 2), ['.', '..'])
  const names = seen.slice(2)
  assert.equal(new Set(names).size, names.length, 'no name twice')
  const kept = names.filter(n => !n.includes('-new'))
  assert.deepEqual(kept, [...keep].sort((a, b) => (a.startsWith('b\xff') ? 1 : 0) - (b.startsWith('b\xff') ? 1 : 0) || (a < b ? -1 : a > b ? 1 : 0)))
  assert.ok(!names.some(n => n.startsWith('z-new')), 'a name removed before the reader got to it is not listed')
  // rewinddir: a new listing from offset 0 sees everything there is now
  const again = fs.openListing(d)
  let total = 0
  for (let off = 0; ;) {
    const r = fs.readdirFrom(d, again, off, 700)
    if (r.names.length === 0) break
    total += r.names.length
    off = r.offsets[r.offsets.length - 1]
  }
  assert.equal(total, 2 + 1500 + rounds, 'every name there is now: the 1500 and one a-new per round')
  await fs.close()
  assert.deepEqual(fsck(img).errors, [])
})

test('copy_file_range does not punch an immutable or append-only target where the source has a hole', async () => {
  const { fs } = fresh()
  const src = fs.create('/src', 0o644, root)
  await fs.write(src, Buffer.alloc(4096, 0x53), 32768)
  await fs.truncate(src, 65536) // a hole, 4 KiB of data, a hole: the first hole is met before any write
  for (const flag of [FS_IMMUTABLE_FL, FS_APPEND_FL]) {
    const dst = fs.create(`/dst${flag}`, 0o644, root)
    await fs.write(dst, Buffer.alloc(65536, 0x44), 0)
    fs.setIflags(dst, flag, root)
    assert.equal(await acode(async () => await fs.copyFileRange(src, 0, dst, 0, 65536)), 'EPERM')
    const got = Buffer.alloc(65536)
    await fs.read(dst, got, 65536, 0)
    assert.ok(got.equals(Buffer.alloc(65536, 0x44)), `flag ${flag}: the target's bytes are as they were`)
    fs.setIflags(dst, 0, root)
  }
  await fs.close()
})
