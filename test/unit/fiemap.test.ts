// FIEMAP's walk (src/fiemap.ts) through FolioFs (no FUSE), and the page
// cache's ordered folio index its hole scans use.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as path from 'path'
import { mkfs, openImage } from '../../src/image'
import { FolioFs, type FsOptions } from '../../src/fs'
import { PageCache } from '../../src/pagecache/cache'
import type { Folio } from '../../src/pagecache/folio'
import { FIEMAP_EXTENT_DELALLOC, FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_UNKNOWN, FIEMAP_EXTENT_UNWRITTEN } from '../../src/fiemap'
import { RESTART_REASONS } from '../../src/btree'
import { rng, tmpdir } from './helpers'

const root = { uid: 0, gid: 0 }
const B = 4096
const DELALLOC = FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_UNKNOWN

function fresh (opts: FsOptions = {}): FolioFs {
  const img = path.join(tmpdir(), 'a.img')
  mkfs(img, { capacityBytes: 1 << 30 })
  return new FolioFs(openImage(img), { dirtyExpireMs: 3600_000, ...opts })
}

const blocks = (n: number, byte = 0x5a): Buffer => Buffer.alloc(n * B, byte)
/** the map as [first block, blocks, flags] */
const brief = (ext: Array<{ logical: number, length: number, flags: number }>): Array<[number, number, number]> =>
  ext.map(e => [e.logical / B, e.length / B, e.flags])
/** yield to the event loop until cond holds (the walk reaching a point; no timing involved) */
async function until (cond: () => boolean): Promise<void> {
  for (let i = 0; !cond(); i++) {
    if (i > 10000) throw new Error('condition never reached')
    await new Promise(resolve => setImmediate(resolve))
  }
}

test('ordered folio index: ranges come back in index order, as a brute-force model says, while folios come and go', () => {
  const cache = new PageCache(1 << 30)
  const r = rng(7)
  const model = new Map<number, Folio>()
  const ino = 5
  const expect = (a: number, b: number): number[] => [...model.keys()].filter(i => i >= a && i < b).sort((x, y) => x - y)
  for (let round = 0; round < 4000; round++) {
    // clustered and sparse indices, far apart chunks too
    const idx = r() < 0.5 ? Math.floor(r() * 300) : Math.floor(r() * 5_000_000)
    const f = model.get(idx)
    if (f && r() < 0.5) { cache.remove(f); model.delete(idx) } else if (!f) model.set(idx, cache.getOrCreate(ino, idx))
    cache.getOrCreate(ino + 1, idx) // another inode's folios never show up
    if (round % 50 === 0) {
      const a = Math.floor(r() * 400)
      const b = r() < 0.3 ? Infinity : a + Math.floor(r() * 5_000_000)
      assert.deepEqual([...cache.foliosInOrder(ino, a, b)].map(x => x.index), expect(a, b), `range ${a}..${b}`)
      assert.deepEqual(cache.folioRange(ino, a, b).map(x => x.index), expect(a, b))
    }
  }
  // changes during an iteration: one removed ahead of the cursor is not yielded, one added ahead is
  const all = expect(0, Infinity)
  const seen: number[] = []
  const ahead = model.get(all[all.length - 1]) as Folio
  for (const f of cache.foliosInOrder(ino, 0)) {
    seen.push(f.index)
    if (seen.length === 1) {
      cache.remove(ahead)
      model.delete(ahead.index)
      model.set(all[0] + 1_000_000_000, cache.getOrCreate(ino, all[0] + 1_000_000_000))
    }
  }
  assert.deepEqual(seen, expect(0, Infinity))
  for (const f of model.values()) cache.remove(f)
  assert.deepEqual([...cache.foliosInOrder(ino, 0)], [], 'empty once every folio is gone')
})

test('FIEMAP of many separate dirty runs in one big hole: each run is its own delalloc extent, in order', async () => {
  const fs = fresh()
  const ino = fs.create('/f', 0o644, root)
  await fs.write(ino, blocks(4), 0)
  await fs.writeback.inode(ino) // mapped: blocks 0..3 (an fsync of so little would journal it)
  const runs = 3000
  for (let k = 0; k < runs; k++) await fs.write(ino, blocks(1 + (k % 2)), (100 + 4 * k) * B) // 1 or 2 blocks, then a hole
  const size = fs.stat(ino).size
  const r = await fs.fiemap.map(ino, 0, size, 100_000)
  assert.equal(r.extents.length, runs + 1)
  assert.equal(r.count, runs + 1)
  const want: Array<[number, number, number]> = [[0, 4, 0]]
  for (let k = 0; k < runs; k++) want.push([100 + 4 * k, 1 + (k % 2), DELALLOC | (k === runs - 1 ? FIEMAP_EXTENT_LAST : 0)])
  assert.deepEqual(brief(r.extents), want)
  // a range starting inside the hole and ending inside a run
  const mid = await fs.fiemap.map(ino, 50 * B, (100 + 4 * 10 + 1) * B - 50 * B, 100)
  // (its last extent is LAST, as on ext4: the last of the range asked for)
  assert.deepEqual(brief(mid.extents), want.slice(1, 12).map(([o, n, f], i) => [o, i === 10 ? 1 : n, i === 10 ? f | FIEMAP_EXTENT_LAST : f & ~FIEMAP_EXTENT_LAST]))
  await fs.close()
})

test('slowpath kept: a folio in a hole locked by a writer sends the scan to the blocking form, whose result is used without a restart', async () => {
  const fs = fresh()
  const ino = fs.create('/f', 0o644, root)
  await fs.write(ino, blocks(4), 0)
  await fs.writeback.inode(ino) // blocks 0..3 mapped: the step holds the leaf's lock when it reaches the hole
  await fs.write(ino, blocks(10), 10 * B) // blocks 10..19 dirty, no mapping yet
  const size = fs.stat(ino).size
  const writer = fs.cache.peek(ino, 12) as Folio
  assert.ok(writer.trylock(), 'the writer holds folio 12 (not writeback: nothing will commit meanwhile)')
  const before = { ...fs.fiemap.stats, restartReasons: { ...fs.fiemap.stats.restartReasons } }
  const walk = fs.fiemap.map(ino, 0, size, 100)
  await until(() => fs.fiemap.stats.slowpath > before.slowpath) // the trylock scan met the lock; the blocking scan waits for it
  assert.equal(fs.fiemap.stats.trylockFailures, before.trylockFailures + 1)
  assert.equal(fs.fiemap.stats.completed, before.completed, 'the walk is waiting for the folio')
  writer.data.fill(0x77) // the writer copies in and keeps the folio dirty
  fs.cache.markDirty(writer)
  writer.unlock()
  const r = await walk
  assert.deepEqual(brief(r.extents), [[0, 4, 0], [10, 10, DELALLOC | FIEMAP_EXTENT_LAST]], 'the blocking scan\'s run, reported as delalloc')
  const s = fs.fiemap.stats
  assert.equal(s.slowpath, before.slowpath + 1, 'one slowpath run')
  assert.equal(s.restarts, before.restarts, 'relock succeeded: no restart')
  assert.deepEqual(s.restartReasons, before.restartReasons)
  assert.equal(s.completed, before.completed + 1)
  await fs.close()
})

test('FIEMAP counts its restarts by reason; they add up to the total and bound each call', async () => {
  const fs = fresh({ injectRestarts: 0.3, injectMaxPerTrans: 4, random: rng(3) })
  const ino = fs.create('/f', 0o644, root)
  for (let k = 0; k < 400; k++) await fs.write(ino, blocks(1), 2 * k * B)
  await fs.fsync(ino)
  for (let k = 0; k < 200; k++) await fs.write(ino, blocks(1), (2 * k + 1) * B) // dirty blocks in the holes
  const size = fs.stat(ino).size
  // even blocks mapped, odd ones below 400 dirty: nothing merges (flags differ, or a hole between)
  const want: Array<[number, number, number]> = []
  for (let b = 0; b < 800; b++) if (b % 2 === 0 || b < 400) want.push([b, 1, b % 2 ? DELALLOC : 0])
  want[want.length - 1][2] |= FIEMAP_EXTENT_LAST
  for (let i = 0; i < 5; i++) {
    const r = await fs.fiemap.map(ino, 0, size, 1000)
    assert.deepEqual(brief(r.extents), want)
  }
  const s = fs.fiemap.stats
  assert.ok(s.restartReasons.injected > 0, JSON.stringify(s))
  assert.equal(RESTART_REASONS.reduce((n, k) => n + s.restartReasons[k], 0), s.restarts)
  assert.ok(s.maxRestartsOneCall > 0 && s.maxRestartsOneCall <= s.restarts)
  assert.equal(s.completed, s.calls)
  await fs.close()
})

// Writeback holds a run's folio locks from before its I/O until its commit is
// done (writebackDelayMs holds them, before the commit, for as long as it
// says): a walk that meets those locks must wait for them and then read the
// tree again; the folios it then finds clean are mapped by the commit.

/**
 * Start writing back blocks [0, n) of ino; returns once its folios are all
 * locked under writeback (the commit not done), with the pass to await (in
 * an object: an async function returning a promise would wait for it).
 */
async function heldByWriteback (fs: FolioFs, ino: number, n: number): Promise<{ wb: Promise<void> }> {
  const wb = fs.writeback.inode(ino)
  await until(() => {
    for (let i = 0; i < n; i++) {
      const f = fs.cache.peek(ino, i)
      if (!f || !f.writeback || !f.isLocked) return false
    }
    return true
  })
  return { wb }
}

test('SEEK_DATA/SEEK_HOLE while writeback turns a preallocated range into written extents: the dirty data stays data', async () => {
  const fs = fresh({ writebackDelayMs: 50 })
  const ino = fs.create('/f', 0o644, root)
  const n = 16
  await fs.fallocate(ino, 0, 0, n * B) // n unwritten blocks
  await fs.write(ino, blocks(n), 0) // all of them overwritten: dirty folios over the unwritten extent
  const size = fs.stat(ino).size
  assert.equal(size, n * B)
  assert.equal(await fs.fiemap.seekData(ino, size, 0), 0, 'dirty: data')
  assert.equal(await fs.fiemap.seekHole(ino, size, 0), size)
  const before = fs.fiemap.stats.restarts
  const { wb } = await heldByWriteback(fs, ino, n)
  // each lseek meets the locked folios, waits for them; by then the commit mapped them
  const seeks = Promise.all([fs.fiemap.seekData(ino, size, 0), fs.fiemap.seekHole(ino, size, 0), fs.fiemap.seekData(ino, size, 5 * B + 7), fs.fiemap.seekHole(ino, size, 5 * B + 7)])
  await wb
  assert.deepEqual(await seeks, [0, size, 5 * B + 7, size], 'SEEK_DATA finds the data, SEEK_HOLE only the end of the file')
  assert.ok(fs.fiemap.stats.restarts > before, 'the steps restarted after waiting (relock found the commit)')
  // and afterwards, with the folios clean and the extent written
  assert.deepEqual([await fs.fiemap.seekData(ino, size, 0), await fs.fiemap.seekHole(ino, size, 0)], [0, size])
  await fs.close()
})

test('SEEK over a preallocated range partly dirty: the dirty runs are data, the rest holes, also while writeback runs', async () => {
  const fs = fresh({ writebackDelayMs: 30 })
  const ino = fs.create('/f', 0o644, root)
  await fs.fallocate(ino, 0, 0, 32 * B)
  await fs.write(ino, blocks(4), 8 * B) // 8..11 dirty, 0..7 and 12..31 unwritten and clean
  const size = fs.stat(ino).size
  const check = async (): Promise<Array<number | null>> => await Promise.all([
    fs.fiemap.seekData(ino, size, 0), fs.fiemap.seekHole(ino, size, 0), fs.fiemap.seekHole(ino, size, 8 * B),
    fs.fiemap.seekData(ino, size, 12 * B).then(x => x ?? -1)])
  assert.deepEqual(await check(), [8 * B, 0, 12 * B, -1])
  const wb = fs.writeback.inode(ino)
  await until(() => fs.cache.peek(ino, 8)?.isLocked === true && fs.cache.peek(ino, 8)?.writeback === true)
  const during = check()
  await wb
  assert.deepEqual(await during, [8 * B, 0, 12 * B, -1])
  assert.deepEqual(await check(), [8 * B, 0, 12 * B, -1], 'written back: a written extent between unwritten ones')
  await fs.close()
})

test('FIEMAP while writeback maps dirty folios in a hole: every block is an extent or delalloc, never missing', async () => {
  const fs = fresh({ writebackDelayMs: 50 })
  const ino = fs.create('/f', 0o644, root)
  const n = 16
  await fs.write(ino, blocks(n), 0) // dirty, nothing mapped
  const size = fs.stat(ino).size
  assert.deepEqual(brief((await fs.fiemap.map(ino, 0, size, 100)).extents), [[0, n, DELALLOC | FIEMAP_EXTENT_LAST]])
  const { wb } = await heldByWriteback(fs, ino, n)
  const during = fs.fiemap.map(ino, 0, size, 100)
  await wb
  assert.deepEqual(brief((await during).extents), [[0, n, FIEMAP_EXTENT_LAST]], 'waited, then read the committed extent')
  await fs.close()
})

test('FIEMAP while writeback converts a preallocated range: unwritten, then written, never a gap', async () => {
  const fs = fresh({ writebackDelayMs: 50 })
  const ino = fs.create('/f', 0o644, root)
  const n = 16
  await fs.fallocate(ino, 0, 0, n * B)
  await fs.write(ino, blocks(n), 0)
  const size = fs.stat(ino).size
  const flags = async (): Promise<number[]> => brief((await fs.fiemap.map(ino, 0, size, 100)).extents).map(([o, l, f]) => { assert.deepEqual([o, l], [0, n]); return f })
  assert.deepEqual(await flags(), [FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_LAST], 'the tree takes precedence over the dirty folios')
  const { wb } = await heldByWriteback(fs, ino, n)
  const during = flags()
  await wb
  const d = await during
  assert.ok(d.length === 1 && (d[0] === (FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_LAST) || d[0] === FIEMAP_EXTENT_LAST), JSON.stringify(d))
  assert.deepEqual(await flags(), [FIEMAP_EXTENT_LAST])
  await fs.close()
})

test('FIEMAP reports extents preallocated past the end of the file (FALLOC_FL_KEEP_SIZE), as Linux does', async () => {
  const fs = fresh()
  const ino = fs.create('/f', 0o644, root)
  const KEEP_SIZE = 1
  await fs.fallocate(ino, KEEP_SIZE, 0, 16 * B) // size stays 0
  assert.equal(fs.stat(ino).size, 0)
  const all = async (start = 0, length = 2 ** 52): Promise<Array<[number, number, number]>> => brief((await fs.fiemap.map(ino, start, length, 100)).extents)
  assert.deepEqual(await all(), [[0, 16, FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_LAST]])
  await fs.write(ino, blocks(2), 0)
  await fs.writeback.inode(ino)
  await fs.fallocate(ino, KEEP_SIZE, 64 * B, 8 * B)
  assert.equal(fs.stat(ino).size, 2 * B)
  assert.deepEqual(await all(), [[0, 2, 0], [2, 14, FIEMAP_EXTENT_UNWRITTEN], [64, 8, FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_LAST]])
  assert.deepEqual(await all(0, 2 * B), [[0, 2, FIEMAP_EXTENT_LAST]], 'a range ending before more extents: its last is LAST, as on ext4')
  assert.deepEqual(await all(20 * B, 100 * B), [[64, 8, FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_LAST]], 'a range wholly past EOF')
  assert.equal((await fs.fiemap.map(ino, 0, 2 ** 52, 0)).count, 3)
  // SEEK stays within the size
  assert.equal(await fs.fiemap.seekHole(ino, 2 * B, 0), 2 * B)
  assert.equal(await fs.fiemap.seekData(ino, 2 * B, 2 * B), null)
  await fs.close()
})
