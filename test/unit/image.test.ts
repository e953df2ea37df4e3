import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as fs from 'fs'
import * as path from 'path'
import { EXIT, ImageError, WAL_AUTOCHECKPOINT, mkfs, openImage, parseSize } from '../../src/image'
import { parseMountOptions } from '../../src/daemon'
import { tmpdir } from './helpers'

test('mkfs creates an image that validates; refuses to overwrite', () => {
  const d = tmpdir()
  const img = path.join(d, 'a.img')
  const sb = mkfs(img, { capacityBytes: 16 << 20, label: 'lbl' })
  assert.equal(sb.capacityBlocks, 4096)
  const o = openImage(img, { readonly: true })
  assert.equal(o.sb.uuid, sb.uuid)
  assert.equal(o.sb.label, 'lbl')
  o.db.close()
  assert.throws(() => mkfs(img), (e: unknown) => e instanceof ImageError && e.exitCode === EXIT.USAGE)
  assert.deepEqual(fs.readdirSync(d).sort(), ['a.img', 'a.img-data'], 'the image and its data area; no -wal/-shm left at rest')
})

test('an image without its data area, with another image\'s, or a directory there, is refused as corrupt and left alone', () => {
  const d = tmpdir()
  const a = path.join(d, 'a.img')
  const b = path.join(d, 'b.img')
  mkfs(a, { capacityBytes: 16 << 20 })
  mkfs(b, { capacityBytes: 16 << 20 })
  fs.copyFileSync(`${b}-data`, `${a}-data`) // b's data area beside a
  const before = fs.readFileSync(a)
  assert.throws(() => openImage(a), (e: unknown) => e instanceof ImageError && e.exitCode === EXIT.CORRUPT && /belongs to another image/.test(e.message))
  fs.rmSync(`${a}-data`)
  assert.throws(() => openImage(a), (e: unknown) => e instanceof ImageError && e.exitCode === EXIT.CORRUPT && /data area .* is missing/.test(e.message))
  assert.ok(fs.readFileSync(a).equals(before), 'the image was not modified')
  assert.ok(!fs.existsSync(`${a}-data`), 'no empty data area was created')
  fs.mkdirSync(`${a}-data`) // a directory in its place: named as such (was "cannot read image (EISDIR: EISDIR: ...)")
  assert.throws(() => openImage(a), (e: unknown) => e instanceof ImageError && e.exitCode === EXIT.CORRUPT && /data area .* is not a regular file/.test(e.message))
})

test('openImage refuses non-images without touching them', () => {
  const d = tmpdir()
  const junk = path.join(d, 'junk')
  fs.writeFileSync(junk, Buffer.alloc(5000, 7))
  const before = fs.readFileSync(junk)
  assert.throws(() => openImage(junk), (e: unknown) => e instanceof ImageError && e.exitCode === EXIT.NOT_FOLIOFS)
  assert.deepEqual(fs.readFileSync(junk), before)
  assert.throws(() => openImage(path.join(d, 'nope')), (e: unknown) => e instanceof ImageError && e.exitCode === EXIT.NOT_FOUND)
})

test('a second read-write open of the same image is refused as busy', () => {
  const d = tmpdir()
  const img = path.join(d, 'a.img')
  mkfs(img)
  const first = openImage(img)
  try {
    assert.throws(() => openImage(img), (e: unknown) => e instanceof ImageError && e.exitCode === EXIT.BUSY)
  } finally {
    first.db.close()
  }
})

test('parseSize', () => {
  assert.equal(parseSize('512M'), 512 << 20)
  assert.equal(parseSize('2g'), 2 * 1024 ** 3)
  assert.equal(parseSize('4096'), 4096)
  assert.throws(() => parseSize('lots'))
})

test('mount options: known ones parsed, unknown ones rejected', () => {
  const o = parseMountOptions(['ro,noatime,nosuid,x-systemd.automount', 'attr_timeout=1.5'])
  assert.equal(o.readonly, true)
  assert.equal(o.atime, 'noatime')
  assert.equal(parseMountOptions(['noatime,strictatime']).atime, 'strictatime', 'the last atime option wins')
  assert.equal(parseMountOptions([]).atime, 'relatime')
  assert.equal(parseMountOptions(['ro,rw']).readonly, false, 'the last of ro and rw wins, as with mount(8)')
  assert.equal(parseMountOptions(['rw', 'ro']).readonly, true)
  assert.deepEqual(o.fuseOptions, ['nosuid', 'attr_timeout=1.5'])
  assert.throws(() => parseMountOptions(['bogus']), /unknown or malformed mount option 'bogus'/)
  assert.throws(() => parseMountOptions(['ro=1']))
  const c = parseMountOptions(['cache_size=64M,dirty_expire=30,writeback_delay_ms=10,sync'])
  assert.equal(c.cacheBytes, 64 << 20)
  assert.equal(c.dirtyExpireMs, 30000)
  assert.equal(c.writebackDelayMs, 10)
  assert.equal(c.syncWrites, true)
  assert.deepEqual(c.fuseOptions, ['sync'], 'sync also goes to the kernel')
  for (const bad of ['cache_size=lots', 'cache_size=4k', 'dirty_expire=-1', 'writeback_delay_ms=x']) {
    assert.throws(() => parseMountOptions([bad]), /mount option/, bad)
  }
})

test('a read-write image checkpoints its WAL in small pieces (a 1000-page autocheckpoint stalled one commit ~25 ms)', () => {
  const img = path.join(tmpdir(), 'a.img')
  mkfs(img)
  const o = openImage(img)
  assert.equal(o.db.pragma('wal_autocheckpoint', { simple: true }), WAL_AUTOCHECKPOINT)
  assert.ok(WAL_AUTOCHECKPOINT < 1000)
  o.db.close()
})

test('a format 2 image (free space a row per range) is upgraded to format 5 at its first read-write open, with its files and free space intact', async () => {
  const { FolioFs } = await import('../../src/fs')
  const { fsck } = await import('../../src/fsck')
  const { decodeBucket } = await import('../../src/btree/alloc')
  const Database = (await import('better-sqlite3')).default
  const img = path.join(tmpdir(), 'old.img')
  mkfs(img, { capacityBytes: 64 << 20 })
  const f = new FolioFs(openImage(img))
  const root = { uid: 0, gid: 0 }
  const data = Buffer.alloc(300 * 1024, 7)
  for (let i = 0; i < 20; i++) {
    const ino = f.create(`/f${i}`, 0o644, root)
    await f.write(ino, data, i * 8192) // leading holes: fragmented free space
    await f.fsync(ino)
  }
  for (let i = 0; i < 20; i += 3) await f.unlink(`/f${i}`)
  await f.close()
  // what format 2 was: the same image with free space in free_space rows
  const db = new Database(img)
  const ranges: Array<[number, number]> = []
  for (const r of db.prepare('SELECT bucket, ranges FROM free_buckets ORDER BY bucket').all() as Array<{ bucket: number, ranges: Buffer }>) {
    decodeBucket(r.bucket, r.ranges, 64 << 8, (s, l) => ranges.push([s, l]))
  }
  assert.ok(ranges.length > 5, 'fragmented free space')
  db.exec('CREATE TABLE free_space (start INTEGER PRIMARY KEY, len INTEGER NOT NULL); DROP TABLE free_buckets; DROP TABLE data_csums; DROP TABLE data_journal; UPDATE superblock SET version = 2')
  const ins = db.prepare('INSERT INTO free_space (start, len) VALUES (?, ?)')
  for (const [s, l] of ranges) ins.run(s, l)
  db.close()

  assert.throws(() => openImage(img, { readonly: true }), (e: unknown) => e instanceof ImageError && /format version 2: mount it read-write once/.test(e.message))
  const up = openImage(img)
  assert.equal(up.sb.version, 5)
  const g = new FolioFs(up)
  const back = Buffer.alloc(data.length)
  assert.equal(await g.read(g.resolve('/f1'), back, back.length, 8192), data.length)
  assert.ok(back.equals(data))
  await g.close()
  const check = new Database(img, { readonly: true })
  const after: Array<[number, number]> = []
  for (const r of check.prepare('SELECT bucket, ranges FROM free_buckets ORDER BY bucket').all() as Array<{ bucket: number, ranges: Buffer }>) {
    decodeBucket(r.bucket, r.ranges, 64 << 8, (s, l) => after.push([s, l]))
  }
  assert.equal(check.prepare('SELECT version FROM superblock').pluck().get(), 5)
  check.close()
  assert.deepEqual(after, ranges, 'the same free ranges, now in buckets')
  assert.deepEqual(fsck(img).errors, [])
})

test('a format 3 image (no data checksums) reads as it is read-only, and is upgraded to format 5 at its first read-write open: old blocks read unverified, new ones checksummed', async () => {
  const { FolioFs } = await import('../../src/fs')
  const { fsck } = await import('../../src/fsck')
  const Database = (await import('better-sqlite3')).default
  const img = path.join(tmpdir(), 'v3.img')
  mkfs(img, { capacityBytes: 64 << 20 })
  const root = { uid: 0, gid: 0 }
  const old = Buffer.alloc(64 * 1024, 3)
  const f = new FolioFs(openImage(img))
  const a = f.create('/old', 0o644, root)
  await f.write(a, old, 0)
  await f.close()
  // what format 3 was: no data_csums
  const db = new Database(img)
  db.exec('DROP TABLE data_csums; DROP TABLE data_journal; UPDATE superblock SET version = 3')
  db.close()

  const ro = new FolioFs(openImage(img, { readonly: true }))
  const back = Buffer.alloc(old.length)
  assert.equal(await ro.read(ro.resolve('/old'), back, back.length, 0), old.length)
  assert.ok(back.equals(old))
  assert.equal(ro.data.csums.stats.unverifiedBlocks, 16)
  await ro.close()
  assert.equal(new Database(img, { readonly: true }).prepare('SELECT version FROM superblock').pluck().get(), 3, 'a read-only open changes nothing')

  const up = openImage(img)
  assert.equal(up.sb.version, 5)
  const g = new FolioFs(up)
  back.fill(0)
  assert.equal(await g.read(g.resolve('/old'), back, back.length, 0), old.length)
  assert.ok(back.equals(old))
  assert.equal(g.data.csums.stats.unverifiedBlocks, 16)
  const fresh = Buffer.alloc(32 * 1024, 9)
  const b = g.create('/new', 0o644, root)
  await g.write(b, fresh, 0)
  await g.close()
  const h = new FolioFs(openImage(img, { readonly: true }))
  const back2 = Buffer.alloc(fresh.length)
  assert.equal(await h.read(h.resolve('/new'), back2, back2.length, 0), fresh.length)
  assert.ok(back2.equals(fresh))
  assert.deepEqual(h.data.csums.stats, { verifiedBlocks: 8, unverifiedBlocks: 0, errors: 0 })
  await h.close()
  const r = fsck(img, { verifyData: true })
  assert.deepEqual(r.errors, [])
  assert.equal(r.verified, 8)
  assert.equal(r.unverified, 16)
})

test('a data block that no longer matches its checksum reads as EIO (never wrong bytes), the rest of the file reads, and fsck --verify-data names the file', async () => {
  const { FolioFs } = await import('../../src/fs')
  const { fsck } = await import('../../src/fsck')
  const img = path.join(tmpdir(), 'csum.img')
  mkfs(img, { capacityBytes: 64 << 20 })
  const root = { uid: 0, gid: 0 }
  const data = Buffer.alloc(16 * 4096)
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 12)) & 0xff
  const f = new FolioFs(openImage(img))
  f.mkdir('/d', 0o755, root)
  const ino = f.create('/d/file', 0o644, root)
  await f.write(ino, data, 0)
  await f.close()
  const g0 = new FolioFs(openImage(img, { readonly: true }))
  const pblk = (await g0.data.extents(g0.resolve('/d/file')))[0].pblk
  await g0.close()
  // flip one byte of the file's block 5 in the data area
  const fd = fs.openSync(`${img}-data`, 'r+')
  const one = Buffer.alloc(1)
  fs.readSync(fd, one, 0, 1, (pblk + 5) * 4096 + 100)
  one[0] ^= 0x01
  fs.writeSync(fd, one, 0, 1, (pblk + 5) * 4096 + 100)
  fs.closeSync(fd)
  const scrub = fsck(img, { verifyData: true })
  assert.deepEqual(scrub.damaged, ['/d/file'])
  assert.match(scrub.errors.join('\n'), /^inode \d+ \(\/d\/file\): data checksum mismatch in 1 block \(first: block 5, byte 20480\)/)

  const g = new FolioFs(openImage(img))
  const ino2 = g.resolve('/d/file')
  const buf = Buffer.alloc(data.length)
  await assert.rejects(g.read(ino2, buf, buf.length, 0), (e: unknown) => (e as { code?: string }).code === 'EIO')
  await assert.rejects(g.read(ino2, buf, 4096, 5 * 4096), (e: unknown) => (e as { code?: string }).code === 'EIO')
  const head = Buffer.alloc(5 * 4096)
  assert.equal(await g.read(ino2, head, head.length, 0), head.length)
  assert.ok(head.equals(data.subarray(0, 5 * 4096)))
  const tail = Buffer.alloc(10 * 4096)
  assert.equal(await g.read(ino2, tail, tail.length, 6 * 4096), tail.length)
  assert.ok(tail.equals(data.subarray(6 * 4096)))
  assert.ok(g.data.csums.stats.errors >= 2)
  // overwriting the whole damaged block repairs it (copy-on-write, a new crc)
  await g.write(ino2, data.subarray(5 * 4096, 6 * 4096), 5 * 4096)
  await g.close()
  const h = new FolioFs(openImage(img, { readonly: true }))
  assert.equal(await h.read(h.resolve('/d/file'), buf, buf.length, 0), buf.length)
  assert.ok(buf.equals(data))
  await h.close()
  assert.deepEqual(fsck(img, { verifyData: true }).damaged, [])
})

test('an extent-tree node found damaged while mounted makes the filesystem refuse every write from then on (EROFS): an image known corrupt is never written', async () => {
  const { FolioFs } = await import('../../src/fs')
  const Database = (await import('better-sqlite3')).default
  const img = path.join(tmpdir(), 'rot.img')
  mkfs(img, { capacityBytes: 64 << 20 })
  const root = { uid: 0, gid: 0 }
  const f = new FolioFs(openImage(img))
  const a = f.create('/a', 0o644, root)
  await f.write(a, Buffer.alloc(8192, 1), 0)
  await f.close()
  // damage the leaf that maps /a (bypassing mount's page check: damage that appears while mounted)
  const db = new Database(img)
  const { id, page } = db.prepare('SELECT id, page FROM btree_nodes ORDER BY id DESC LIMIT 1').get() as { id: number, page: Buffer }
  page[100] ^= 0xff
  db.prepare('UPDATE btree_nodes SET page = ? WHERE id = ?').run(page, id)
  db.close()

  const g = new FolioFs(openImage(img))
  const buf = Buffer.alloc(8192)
  await assert.rejects(g.read(g.resolve('/a'), buf, buf.length, 0), /checksum mismatch/)
  assert.match(String(g.data.damaged), /checksum mismatch/)
  assert.throws(() => g.create('/new', 0o644, root), (e: unknown) => (e as { code?: string }).code === 'EROFS')
  await assert.rejects(async () => { await g.unlink('/a') }, (e: unknown) => (e as { code?: string }).code === 'EROFS')
  await g.close()
  const after = new Database(img, { readonly: true })
  assert.deepEqual(after.prepare('SELECT name FROM dirents ORDER BY name').pluck().all(), ['a'], 'nothing written after the damage was seen')
  after.close()
})
