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

test('an image without its data area, or with another image\'s, is refused as corrupt and left alone', () => {
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
  assert.equal(o.noatime, true)
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
