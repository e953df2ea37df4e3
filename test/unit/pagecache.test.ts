// The page cache through FolioFs (no FUSE): delayed allocation, writeback,
// contiguity, memory bound, crash semantics.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as nodefs from 'fs'
import * as path from 'path'
import { mkfs, openImage } from '../../src/image'
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FolioFs, type FsOptions } from '../../src/fs'
import { fsck } from '../../src/fsck'
import { COMMIT_GROUP, MAX_RUN } from '../../src/pagecache/writeback'
import { rng, tmpdir } from './helpers'

const root = { uid: 0, gid: 0 }
const MiB = 1024 * 1024

function fresh (opts: FsOptions = {}, capacity = 1 << 30): { img: string, fs: FolioFs } {
  const img = path.join(tmpdir(), 'a.img')
  mkfs(img, { capacityBytes: capacity })
  return { img, fs: new FolioFs(openImage(img), opts) }
}

/** the inode's size as stored (not the in-memory one stat() shows) */
const storedSize = (f: FolioFs, ino: number): number => f.db.prepare('SELECT size FROM inodes WHERE ino = ?').pluck().get(ino) as number

const pattern = (seed: number, len: number): Buffer => {
  const r = rng(seed)
  const b = Buffer.alloc(len)
  for (let i = 0; i < len; i += 4) b.writeUInt32LE(Math.floor(r() * 2 ** 32), i)
  return b
}

/** n new files /PREFIXi, file i holding pattern(seed + i, len(i)), not written back; their inodes */
async function smallFiles (fs: FolioFs, prefix: string, n: number, seed: number, len: (i: number) => number): Promise<number[]> {
  const inos: number[] = []
  for (let i = 0; i < n; i++) {
    const ino = fs.create(`/${prefix}${i}`, 0o644, root)
    await fs.write(ino, pattern(seed + i, len(i)), 0)
    inos.push(ino)
  }
  return inos
}

/** the closed image img reads data back for ino, and fsck finds it clean */
async function sameAfterRemount (img: string, ino: number, data: Buffer): Promise<void> {
  const again = new FolioFs(openImage(img))
  const all = Buffer.alloc(data.length)
  assert.equal(await again.read(ino, all, all.length, 0), all.length)
  assert.ok(all.equals(data), 'identical after remount')
  await again.close()
  assert.deepEqual(fsck(img).errors, [])
}

test('a write is visible at once, gets no block until writeback, and a sequential file is one extent after fsync', async () => {
  const { img, fs } = fresh()
  const ino = fs.create('/f', 0o644, root)
  const data = pattern(1, 64 * MiB)
  for (let off = 0; off < data.length; off += 128 * 1024) await fs.write(ino, data.subarray(off, off + 128 * 1024), off)
  assert.equal(fs.stat(ino).size, 64 * MiB, 'stat sees the size')
  assert.equal(storedSize(fs, ino), 0, 'the stored size covers written-back data only')
  assert.equal(fs.stat(ino).blocks, 64 * MiB / 512, 'and counts the blocks writeback will allocate')
  const back = Buffer.alloc(1 * MiB)
  assert.equal(await fs.read(ino, back, back.length, 7 * MiB), back.length)
  assert.ok(back.equals(data.subarray(7 * MiB, 8 * MiB)), 'readers see data that is not written back')
  assert.ok((await fs.data.extents(ino)).length < 64 * MiB / 4096, 'nothing like one extent per write')
  await fs.fsync(ino)
  const ex = await fs.data.extents(ino)
  assert.equal(ex.length, 1, `one extent: ${JSON.stringify(ex.slice(0, 3))}`)
  assert.equal(ex[0].len, 64 * MiB / 4096)
  assert.equal(storedSize(fs, ino), 64 * MiB)
  await fs.close()
  await sameAfterRemount(img, ino, data)
})

test('the on-disk size covers written-back data only: a crash loses unfsynced writes, never exposes unwritten blocks', async () => {
  const { img, fs } = fresh()
  const ino = fs.create('/f', 0o644, root)
  const a = pattern(2, 1 * MiB)
  await fs.write(ino, a, 0)
  await fs.fsync(ino)
  const b = pattern(3, 1 * MiB)
  await fs.write(ino, b, 1 * MiB) // not fsynced
  await fs.write(ino, pattern(4, 4096), 0) // overwrite, not fsynced
  assert.equal(fs.stat(ino).size, 2 * MiB)
  // crash: the process dies, nothing is written back
  fs.db.close()
  fs.data.area.close()
  const again = new FolioFs(openImage(img))
  assert.equal(again.stat(ino).size, 1 * MiB, 'size as of the fsync')
  const got = Buffer.alloc(1 * MiB)
  await again.read(ino, got, got.length, 0)
  assert.ok(got.equals(a), 'the fsynced data, not the later overwrite, and no garbage')
  await again.close()
  assert.deepEqual(fsck(img).errors, [])
})

test('a file larger than the cache streams through it: the cache stays bounded and writers are throttled', async () => {
  const { img, fs } = fresh({ cacheBytes: 8 * MiB })
  const ino = fs.create('/big', 0o644, root)
  const chunk = pattern(5, 256 * 1024)
  let maxBytes = 0
  for (let off = 0; off < 48 * MiB; off += chunk.length) {
    await fs.write(ino, chunk, off)
    maxBytes = Math.max(maxBytes, fs.cache.bytes)
  }
  assert.ok(maxBytes <= 8 * MiB + 256 * 1024, `cache held ${maxBytes} bytes`)
  assert.ok(fs.writeback.stats.throttled > 0, 'writers waited for writeback')
  await fs.fsync(ino)
  const back = Buffer.alloc(chunk.length)
  for (const off of [0, 13 * MiB, 47 * MiB + 768 * 1024]) {
    await fs.read(ino, back, back.length, off)
    assert.ok(back.equals(chunk), `data at ${off}`)
  }
  assert.ok(fs.cache.bytes <= 8 * MiB)
  await fs.close()
  assert.deepEqual(fsck(img).errors, [])
})

test('writeback pipelines its runs: the next runs are written while a batch syncs, one fdatasync covers them, and the file stays one extent', async () => {
  // each batch waits 300 ms between its fdatasync and its commits: the
  // write stage goes on meanwhile, allocating after runs not committed yet
  const { img, fs } = fresh({ writebackDelayMs: 300 })
  const ino = fs.create('/f', 0o644, root)
  const data = pattern(9, 32 * MiB)
  await fs.write(ino, data, 0)
  const syncs0 = fs.data.area.stats.syncs
  await fs.fsync(ino)
  const runs = fs.writeback.stats.runs
  const syncs = fs.data.area.stats.syncs - syncs0
  assert.equal(runs, 4, 'four runs of 8 MiB')
  assert.ok(syncs < runs, `fewer data syncs (${syncs}) than runs (${runs})`)
  const ex = await fs.data.extents(ino)
  assert.equal(ex.length, 1, `one extent: ${JSON.stringify(ex.slice(0, 4))}`)
  assert.equal(fs.cache.writebackFolios, 0)
  await fs.close()
  await sameAfterRemount(img, ino, data)
})

test('a failed data area sync: runs written before it are written again, though a later sync of theirs succeeds', async () => {
  // Linux reports a failed writeback to one fdatasync and marks the pages
  // clean: the next fdatasync succeeds with the data lost. The host is
  // emulated: the first sync waits (the next runs are written meanwhile),
  // then everything written since the last good sync is lost and it fails
  const { img, fs } = fresh()
  const ino = fs.create('/f', 0o644, root)
  const data = pattern(11, 32 * MiB)
  await fs.write(ino, data, 0)
  const area = fs.data.area
  let since: Array<[number, number]> = []
  const write = area.write.bind(area)
  area.write = async (bufs: Buffer[], pblk: number) => {
    since.push([pblk, bufs.reduce((n, b) => n + b.length, 0)])
    await write(bufs, pblk)
  }
  const sync = area.datasync.bind(area)
  let failures = 0
  area.datasync = async () => {
    if (failures++ === 0) {
      await new Promise(resolve => setTimeout(resolve, 300))
      for (const [pblk, len] of since) nodefs.writeSync(area.descriptor, Buffer.alloc(len), 0, len, pblk * 4096)
      since = []
      area.syncFailures++
      throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' })
    }
    await sync()
    since = []
  }
  await fs.fsync(ino).catch(() => {}) // EIO: the first batch failed
  await fs.fsync(ino)
  assert.ok(fs.writeback.stats.errors > 1, `more than the first batch was written again: ${fs.writeback.stats.errors} failed runs`)
  await fs.close()
  await sameAfterRemount(img, ino, data)
})

test('a punch whose edge fails after its whole blocks are unmapped still shows its new times (memory and row agree)', async () => {
  const { fs } = fresh()
  const ino = fs.create('/f', 0o644, root)
  await fs.write(ino, pattern(13, 64 * 1024), 0)
  await fs.fsync(ino)
  await fs.write(ino, pattern(14, 4096), 0) // dirty: its times are in memory
  const before = fs.stat(ino).mtime
  await new Promise(resolve => setTimeout(resolve, 20))
  fs.io.write = async () => { throw Object.assign(new Error('EIO: emulated'), { code: 'EIO' }) }
  await assert.rejects(fs.fallocate(ino, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 1000, 40000), /EIO/)
  const row = fs.db.prepare('SELECT mtime_s, mtime_ns FROM inodes WHERE ino = ?').get(ino) as { mtime_s: number, mtime_ns: number }
  const shown = fs.stat(ino).mtime
  assert.notDeepEqual(shown, before, 'the punch freed blocks: mtime moves')
  assert.deepEqual(shown, { sec: row.mtime_s, nsec: row.mtime_ns }, 'stat shows the mtime the punch stored')
  await fs.close().catch(() => {})
})

test('two WAL syncs at once: the one answered 0 after the other failed does not call the commits durable', async () => {
  // Linux reports a failed writeback to one fdatasync of a file
  // description and marks the pages clean: emulated, the first sync fails
  // late, a second one at the same time succeeds at once
  const { fs } = fresh()
  const ino = fs.create('/f', 0o644, root)
  await fs.write(ino, pattern(12, MiB), 0)
  await fs.fsync(ino)
  let calls = 0
  fs.data.walDatasync = async () => {
    if (calls++ === 0) {
      await new Promise(resolve => setTimeout(resolve, 100))
      throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' })
    }
  }
  fs.create('/g', 0o644, root) // a commit to sync
  const first = fs.data.syncCommits()
  const second = fs.data.syncCommits()
  await assert.rejects(first, /EIO/)
  await assert.rejects(second, /EIO/, 'the second sync answered 0 though the first failed')
  assert.ok(fs.data.walFailure !== null)
  await fs.close().catch(() => {})
})

test('readahead keeps up with a sequential reader whose requests arrive a little out of order: streaming chunks, and folios when streaming is off', async () => {
  const { img, fs: first } = fresh()
  const ino = first.create('/f', 0o644, root)
  const data = pattern(10, 64 * MiB)
  await first.write(ino, data, 0)
  await first.close()
  // 1 MiB requests as the kernel sends them: now and then two swapped
  const order: number[] = []
  for (let k = 0; k < 64; k++) order.push(k)
  for (let k = 8; k + 1 < 64; k += 10) [order[k], order[k + 1]] = [order[k + 1], order[k]]
  for (const streamBytes of [undefined, 0]) {
    const fs = new FolioFs(openImage(img), { streamBytes }) // a cold cache
    const back = Buffer.alloc(MiB)
    for (const k of order) {
      assert.equal(await fs.read(ino, back, MiB, k * MiB), MiB)
      assert.ok(back.equals(data.subarray(k * MiB, (k + 1) * MiB)), `MiB ${k}`)
    }
    const { misses, readaheadFolios } = fs.cache.stats
    assert.ok(misses < 64 * MiB / 4096 / 8, `most folios come from readahead: ${misses} read on demand, ${readaheadFolios} ahead`)
    const streams = fs.io.streams.stats
    if (streamBytes === undefined) {
      assert.ok(streams.streamedBytes >= 62 * MiB, `streamed: ${streams.streamedBytes}`)
      assert.ok(streams.chunkFills <= 64 && streams.chunksWasted === 0, `each chunk read once: ${JSON.stringify(streams)}`)
    } else {
      assert.equal(streams.streamedBytes, 0, 'streaming off')
      assert.ok(readaheadFolios > 60 * MiB / 4096, `folio readahead: ${readaheadFolios}`)
    }
    await fs.close()
  }
})

test('two files written in parallel do not interleave block by block', async () => {
  const { fs } = fresh()
  const a = fs.create('/a', 0o644, root)
  const b = fs.create('/b', 0o644, root)
  const chunk = pattern(6, 128 * 1024)
  for (let off = 0; off < 16 * MiB; off += chunk.length) {
    await Promise.all([fs.write(a, chunk, off), fs.write(b, chunk, off)])
  }
  await fs.sync()
  const ea = await fs.data.extents(a)
  const eb = await fs.data.extents(b)
  assert.ok(ea.length <= 2 && eb.length <= 2, `extents: a ${ea.length}, b ${eb.length}`)
  await fs.close()
})

test('ENOSPC at write time, not lost at writeback; an overwrite of a full device needs room for its copy', async () => {
  const { fs } = fresh({}, 256 * 4096)
  const ino = fs.create('/f', 0o644, root)
  await fs.write(ino, Buffer.alloc(200 * 4096, 1), 0)
  const n = await fs.write(ino, Buffer.alloc(100 * 4096, 2), 200 * 4096) // what fits: a short write
  assert.ok(n > 0 && n < 100 * 4096, `short: ${n}`)
  await assert.rejects(fs.write(ino, Buffer.alloc(4096, 2), 200 * 4096 + n), (e: unknown) => (e as { code?: string }).code === 'ENOSPC')
  await fs.fsync(ino) // every byte answered is written back
  assert.equal(fs.used, 200 + n / 4096)
  await fs.truncate(ino, 200 * 4096)
  await fs.fsync(ino)
  assert.equal(fs.used, 200)
  // 55 blocks free: an overwrite of 50 goes copy-on-write, then the old ones are freed
  await fs.write(ino, Buffer.alloc(50 * 4096, 3), 0)
  await fs.fsync(ino)
  assert.equal(fs.used, 200)
  const b = Buffer.alloc(4096)
  await fs.read(ino, b, 4096, 49 * 4096)
  assert.equal(b[0], 3)
  await fs.close()
})

test('truncate drops folios past EOF and zeroes the tail; growing again reads zeros, also after a crash', async () => {
  const { img, fs } = fresh()
  const ino = fs.create('/f', 0o644, root)
  await fs.write(ino, Buffer.alloc(3 * 4096, 0xaa), 0)
  await fs.fsync(ino)
  await fs.truncate(ino, 4096 + 100)
  await fs.truncate(ino, 3 * 4096)
  const b = Buffer.alloc(3 * 4096)
  await fs.read(ino, b, b.length, 0)
  assert.ok(b.subarray(0, 4196).every(x => x === 0xaa))
  assert.ok(b.subarray(4196).every(x => x === 0), 'zeros past the old EOF')
  await fs.fsync(ino)
  fs.db.close()
  fs.data.area.close()
  const again = new FolioFs(openImage(img))
  const c = Buffer.alloc(3 * 4096)
  await again.read(ino, c, c.length, 0)
  assert.ok(c.equals(b))
  await again.close()
  assert.deepEqual(fsck(img).errors, [])
})

test('memory pressure: a background tick writes back everything dirty and gives back clean folios', async () => {
  let low = false
  const { img, fs } = fresh({ dirtyExpireMs: 3600_000, memoryLow: () => low })
  const a = fs.create('/clean', 0o644, root)
  await fs.write(a, pattern(2, 8 * MiB), 0)
  await fs.fsync(a)
  const back = Buffer.alloc(8 * MiB)
  await fs.read(a, back, back.length, 0) // 8 MiB of clean, cached folios
  const b = fs.create('/dirty', 0o644, root)
  const data = pattern(3, 4 * MiB)
  await fs.write(b, data, 0) // young dirty data: not due for writeback
  fs.writeback.tick()
  assert.equal(fs.writeback.stats.memoryPressure, 0)
  assert.equal(fs.cache.dirtyBytes, 4 * MiB, 'no pressure: young dirty data stays dirty')
  const cached = fs.cache.bytes
  low = true
  fs.writeback.tick()
  assert.equal(fs.writeback.stats.memoryPressure, 1)
  assert.ok(fs.cache.bytes <= cached / 2, `clean folios given back (${fs.cache.bytes} of ${cached} bytes left)`)
  await fs.writeback.all() // the pass the tick started
  assert.equal(fs.cache.dirtyBytes, 0, 'everything dirty written back')
  const again = Buffer.alloc(4 * MiB)
  await fs.read(b, again, again.length, 0)
  assert.ok(again.equals(data))
  await fs.close()
  assert.deepEqual(fsck(img).errors, [])
})

test('a file whose data never reached writeback is truncated and unlinked without an extent-tree commit, and its space and row are gone', async () => {
  const { img, fs } = fresh()
  const commits = (): number => fs.data.stats.commits
  const a = fs.create('/a', 0o644, root)
  await fs.write(a, pattern(11, 40000), 0)
  const b = fs.create('/b', 0o644, root)
  await fs.write(b, pattern(12, 3 * MiB), 0)
  const before = commits()
  await fs.truncate(a, 5000)
  assert.equal(fs.stat(a).size, 5000)
  await fs.unlink('/b')
  await fs.reaper.settled()
  assert.equal(commits(), before, 'no extent-tree commit for either')
  assert.equal(fs.cache.dirtyBytes, 2 * 4096, 'only the two blocks of /a are dirty')
  // with data written back, the extent tree does the work
  await fs.writeback.inode(a) // (an fsync of two blocks would journal them)
  const mapped = commits()
  await fs.truncate(a, 100)
  assert.ok(commits() > mapped, 'a written-back file is truncated in the tree')
  await fs.close()
  const again = new FolioFs(openImage(img))
  assert.throws(() => again.resolve('/b'), /ENOENT/)
  const back = Buffer.alloc(200)
  assert.equal(await again.read(again.resolve('/a'), back, 200, 0), 100)
  assert.ok(back.subarray(0, 100).equals(pattern(11, 100)))
  assert.equal(again.db.prepare('SELECT COUNT(*) FROM inodes').pluck().get(), 2, 'root and /a: the row of /b is gone')
  await again.close()
  assert.deepEqual(fsck(img).errors, [])
})

test('writeback of many small files: their runs, placed one after another, go out as a few gathered writes and commit a group per extent-tree commit, each file intact', async () => {
  const { img, fs } = fresh()
  const n = 300
  const inos = await smallFiles(fs, 's', n, 100, i => 4096 + 4 * i) // two blocks each: one run, one extent
  const area = fs.data.area
  const write = area.write.bind(area)
  let calls = 0
  area.write = async (bufs, pblk) => { calls++; return await write(bufs, pblk) }
  const commits0 = fs.data.stats.commits
  const syncs0 = area.stats.syncs
  await fs.writeback.all()
  const commits = fs.data.stats.commits - commits0
  const syncs = area.stats.syncs - syncs0 // one per commit batch (the runs written while the one before synced)
  assert.equal(fs.writeback.stats.runs, n)
  assert.ok(commits <= syncs + Math.ceil(n / COMMIT_GROUP) && commits < n / 4, `${commits} extent-tree commits for ${n} runs in ${syncs} batches`)
  assert.ok(calls <= n / 8, `${calls} data-area writes for ${n} runs`)
  for (const ino of inos) assert.equal((await fs.data.extents(ino)).length, 1)
  await fs.close()
  const again = new FolioFs(openImage(img))
  for (let i = 0; i < n; i += 37) {
    const back = Buffer.alloc(4096 + 4 * i)
    assert.equal(await again.read(inos[i], back, back.length, 0), back.length)
    assert.ok(back.equals(pattern(100 + i, 4096 + 4 * i)), `file ${i} identical after remount`)
  }
  await again.close()
  assert.deepEqual(fsck(img).errors, [])
})

test('a run whose commit fails does not fail the others of its group: they commit, it stays dirty and is written back later', async () => {
  const { img, fs } = fresh()
  const inos = await smallFiles(fs, 'g', 20, 200, () => 5000)
  const bad = inos[7]
  const wb = fs.writeback as unknown as { committed: (ino: number, ...rest: number[]) => void }
  const committed = wb.committed
  wb.committed = (ino, ...rest) => {
    if (ino === bad) throw new Error('injected: commit of this run fails')
    committed(ino, ...rest)
  }
  await assert.rejects(fs.writeback.all(), /injected/)
  for (const ino of inos) {
    assert.equal((await fs.data.extents(ino)).length, ino === bad ? 0 : 1, `inode ${ino}${ino === bad ? ' (the failing one)' : ''}`)
  }
  assert.equal(fs.cache.dirtyBytes, 2 * 4096, 'the failing run is dirty again')
  wb.committed = committed
  await fs.writeback.all()
  assert.equal(fs.cache.dirtyBytes, 0)
  await fs.close()
  await sameAfterRemount(img, bad, pattern(207, 5000))
})

test('a file\'s runs commit in order even when their writes end out of order (its on-disk size never passes an unmapped run)', async () => {
  const { img, fs } = fresh()
  const ino = fs.create('/o', 0o644, root)
  const data = pattern(300, 3 * MAX_RUN * 4096)
  await fs.write(ino, data, 0)
  const area = fs.data.area
  const write = area.write.bind(area)
  let calls = 0
  area.write = async (bufs, pblk) => {
    if (calls++ === 0) await new Promise(resolve => setTimeout(resolve, 200)) // the first run's write ends last
    return await write(bufs, pblk)
  }
  const wb = fs.writeback as unknown as { committed: (ino: number, start: number, ...rest: number[]) => void }
  const committed = wb.committed
  const order: number[] = []
  wb.committed = (i, start, ...rest) => { order.push(start); committed(i, start, ...rest) }
  await fs.fsync(ino)
  assert.deepEqual(order, [0, MAX_RUN, 2 * MAX_RUN])
  await fs.close()
  await sameAfterRemount(img, ino, data)
})

test('st_blocks counts data not written back where no block maps it: after a truncate, in a hole below the on-disk size, and the same after writeback', async () => {
  const { img, fs } = fresh()
  const blocks = (ino: number): number => fs.stat(ino).blocks / 8 // 512-byte units
  const a = fs.create('/a', 0o644, root)
  await fs.write(a, pattern(400, 40000), 0) // 10 blocks
  assert.equal(blocks(a), 10)
  await fs.truncate(a, 20000)
  assert.equal(blocks(a), 5, 'truncated before writeback')
  await fs.fsync(a)
  assert.equal(blocks(a), 5, 'after writeback')
  const b = fs.create('/b', 0o644, root)
  await fs.write(b, pattern(401, 4096), 0)
  await fs.write(b, pattern(402, 4096), 60 * 1024)
  await fs.fsync(b)
  assert.equal(blocks(b), 2)
  await fs.write(b, pattern(403, 4096), 20 * 1024) // a hole under the on-disk size
  await fs.write(b, pattern(404, 100), 0) // a mapped block rewritten: copy-on-write frees the old one
  assert.equal(blocks(b), 3, 'one new block for the hole, none for the rewrite')
  await fs.fsync(b)
  assert.equal(blocks(b), 3, 'after writeback')
  await fs.close()
  assert.deepEqual(fsck(img).errors, [])
})

test('a gathered write that fails fails every run it carried: all dirty again, written back by the next pass', async () => {
  const { img, fs } = fresh()
  const inos = await smallFiles(fs, 'w', 30, 500, () => 4096)
  const area = fs.data.area
  const write = area.write.bind(area)
  area.write = async () => { throw new Error('injected: EIO') }
  await assert.rejects(fs.writeback.all(), /injected/)
  assert.equal(fs.cache.dirtyBytes, 30 * 4096, 'every run dirty again')
  assert.equal(fs.cache.writebackFolios, 0)
  area.write = write
  await fs.writeback.all()
  assert.equal(fs.cache.dirtyBytes, 0)
  await fs.close()
  await sameAfterRemount(img, inos[17], pattern(517, 4096))
})

test('an fsync does not wait for a background pass to write everything old: the pass yields, then goes on', async () => {
  const { img, fs } = fresh({ dirtyExpireMs: 0 })
  fs.writeback.stop() // no timer: the test kicks the pass itself
  const a = fs.create('/a', 0o644, root)
  const data = pattern(40, 4 * MiB)
  await fs.write(a, data, 0)
  await fs.fsync(a)
  const blocks = data.length / 4096
  for (let i = 0; i < blocks; i += 2) { // every other block: one-block runs
    const b = pattern(41 + i, 4096)
    b.copy(data, i * 4096)
    await fs.write(a, b, i * 4096)
  }
  const b = fs.create('/b', 0o644, root)
  const small = pattern(42, 4096)
  await fs.write(b, small, 0)
  fs.writeback.kick(true)
  await fs.fsync(b) // one block: the journal's step
  const left = fs.cache.dirtyOf(a, 0, Infinity).length
  assert.ok(left > blocks / 4, `the fsync ran before most of the background pass (${left} of ${blocks / 2} runs still dirty)`)
  assert.ok(fs.writeback.stats.yielded >= 1, 'the pass yielded')
  const c = fs.create('/c', 0o644, root)
  const big = pattern(43, 64 * 4096)
  await fs.write(c, big, 0)
  const yielded = fs.writeback.stats.yielded
  fs.writeback.kick(true)
  await fs.fsync(c) // 64 blocks: its own writeback pass
  assert.ok(fs.cache.dirtyOf(a, 0, Infinity).length > blocks / 8, 'an fsync by writeback does not wait for the whole background pass either')
  assert.ok(fs.writeback.stats.yielded > yielded, 'the pass yielded to it')
  for (let i = 0; i < 200 && fs.cache.dirtyOf(a, 0, Infinity).length > 0; i++) await new Promise(resolve => setTimeout(resolve, 10))
  assert.equal(fs.cache.dirtyOf(a, 0, Infinity).length, 0, 'and went on by itself after it')
  await fs.close()
  await sameAfterRemount(img, a, data)
  const again = new FolioFs(openImage(img))
  const got = Buffer.alloc(4096)
  await again.read(b, got, 4096, 0)
  assert.ok(got.equals(small))
  const gotc = Buffer.alloc(big.length)
  await again.read(c, gotc, big.length, 0)
  assert.ok(gotc.equals(big))
  await again.close()
})

test('on an aged image (free space in one-block holes) the scattered overwrites of a pass go out together at its write point, not one write per hole', async () => {
  const { img, fs } = fresh()
  const a = fs.create('/a', 0o644, root)
  const data = pattern(51, 8 * MiB)
  await fs.write(a, data, 0)
  await fs.fsync(a)
  const holes = fs.create('/holes', 0o644, root)
  await fs.write(holes, pattern(50, 8 * MiB), 0)
  await fs.fsync(holes)
  for (let i = 0; i < 2048; i += 2) await fs.fallocate(holes, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, i * 4096, 4096) // 1024 one-block holes right after a's blocks
  await fs.sync()
  const runs = 512
  for (let i = 0; i < runs; i++) { // every fourth block of a: one-block runs, each an overwrite
    const b = pattern(52 + i, 4096)
    b.copy(data, i * 4 * 4096)
    await fs.write(a, b, i * 4 * 4096)
  }
  const writes0 = fs.data.area.stats.writes
  await fs.fsync(a)
  const writes = fs.data.area.stats.writes - writes0
  assert.ok(writes <= runs / 16, `${writes} data area writes for ${runs} runs`)
  const ex = (await fs.data.extents(a)).filter(e => e.off % 4 === 0 && e.len === 1 && e.off < runs * 4)
  assert.equal(ex.length, runs, 'each overwritten block is an extent of its own')
  assert.ok(ex.every((e, k) => k === 0 || e.pblk === ex[k - 1].pblk + 1), 'placed one after another')
  await fs.close()
  await sameAfterRemount(img, a, data)
})

test('a writeback that keeps failing is logged, once a minute for each errno, and its data stays dirty until a later writeback succeeds', async () => {
  const { img, fs } = fresh()
  const ino = fs.create('/f', 0o644, root)
  const data = pattern(12, MiB)
  await fs.write(ino, data, 0)
  const area = fs.data.area
  const write = area.write.bind(area)
  area.write = async () => { throw Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' }) }
  const lines: string[] = []
  const stderrWrite = process.stderr.write.bind(process.stderr)
  process.stderr.write = ((chunk: string | Uint8Array) => { lines.push(String(chunk)); return true }) as typeof process.stderr.write
  try {
    for (let i = 0; i < 3; i++) await fs.fsync(ino).catch(() => {})
  } finally {
    process.stderr.write = stderrWrite
  }
  const logged = lines.filter(l => /writeback of inode \d+ failed \(EIO/.test(l))
  assert.ok(fs.writeback.stats.errors >= 3, `${fs.writeback.stats.errors} failed runs`)
  assert.equal(logged.length, 1, `one line for ${fs.writeback.stats.errors} failures: ${lines.join('')}`)
  area.write = write
  await fs.fsync(ino)
  await fs.close()
  await sameAfterRemount(img, ino, data)
})
