// Streaming reads (src/pagecache/stream.ts) through FolioFs, no FUSE: a
// cold sequential read bypasses the folio cache, and neither a chunk read
// ahead nor a direct read in flight is used after a change of the file
// (write, writeback commit, truncate, punch), nor when a block of it fails
// its checksum. Requests of 1 MiB (the kernel's readahead) are read
// directly into their buffers; smaller ones go through chunks.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as fs from 'fs'
import * as path from 'path'
import { mkfs, openImage } from '../../src/image'
import { FolioFs } from '../../src/fs'
import { rng, tmpdir } from './helpers'
import { holdReads, imageWithDamagedBlock, imageWithFile, MiB, pattern, QUARTER, readMiB, root } from './streamfixtures'
const FALLOC_FL_KEEP_SIZE = 1
const FALLOC_FL_PUNCH_HOLE = 2

/** let the chunk fills in flight settle (they are data area reads on the thread pool) */
const settle = async (): Promise<void> => { await new Promise(resolve => setTimeout(resolve, 200)) }

/** a mounted copy of the image with /f read sequentially up to MiB upTo, its chunks ahead filled */
async function streaming (img: string, upTo: number): Promise<{ f: FolioFs, ino: number }> {
  const f = new FolioFs(openImage(img))
  const ino = f.resolve('/f')
  for (let k = 0; k <= upTo; k++) await readMiB(f, ino, k)
  await settle()
  return { f, ino }
}

test('a cold sequential read is served from streaming chunks: right bytes, folio cache left alone', async () => {
  const { img, data } = await imageWithFile(24)
  const f = new FolioFs(openImage(img))
  const ino = f.resolve('/f')
  for (let k = 0; k < 24; k++) assert.ok((await readMiB(f, ino, k)).equals(data.subarray(k * MiB, (k + 1) * MiB)), `MiB ${k}`)
  const s = f.io.streams.stats
  assert.ok(s.streamedBytes >= 22 * MiB, `streamed ${s.streamedBytes} bytes`)
  assert.ok(f.cache.folios <= 256, `only the first (not yet sequential) request went through folios: ${f.cache.folios}`)
  // reading the file again from the start: still the same bytes (the first
  // MiB from its folios), and the chunks ahead of the reader are read ahead again
  for (let k = 0; k < 24; k++) {
    assert.ok((await readMiB(f, ino, k)).equals(data.subarray(k * MiB, (k + 1) * MiB)), `again, MiB ${k}`)
    if (k >= 2 && k < 20) assert.ok(f.io.streams.chunksOf(ino).includes(k + 1), `chunk ${k + 1} read ahead: ${f.io.streams.chunksOf(ino).join(' ')}`)
  }
  assert.equal(s.chunksWasted, 2, 'every chunk was read to its end, then freed; but chunk 0 in each pass (its first request came from folios)')
  assert.equal(s.directBytes, 0, 'requests smaller than a chunk are not read directly')
  await f.close()
})

test('a cold sequential read in 1 MiB requests is read straight into their buffers: right bytes, no chunk, folio cache left alone', async () => {
  const { img, data } = await imageWithFile(24)
  const f = new FolioFs(openImage(img))
  const ino = f.resolve('/f')
  for (let k = 0; k < 24; k++) assert.ok((await readMiB(f, ino, k, MiB)).equals(data.subarray(k * MiB, (k + 1) * MiB)), `MiB ${k}`)
  const s = f.io.streams.stats
  assert.equal(s.directBytes, 24 * MiB, 'every request, the first one too')
  assert.equal(s.chunkFills, 0)
  assert.equal(f.cache.folios, 0, 'no request went through folios')
  // the last request of a file that ends inside a block: whole blocks read into the buffer, the size answered
  await f.truncate(ino, 24 * MiB - 1000)
  assert.ok((await readMiB(f, ino, 23, MiB)).equals(data.subarray(23 * MiB, 24 * MiB - 1000)), 'the last MiB, short')
  await f.close()
})

test('1 MiB requests arriving out of order (a readahead window of several) are all read directly: right bytes, no folio', async () => {
  const { img, data } = await imageWithFile(32)
  const f = new FolioFs(openImage(img))
  const ino = f.resolve('/f')
  // as the kernel sends a 4 MiB window's requests: a few ahead, some late
  const order = [0, 2, 1, 3, 6, 4, 5, 7, 11, 8, 10, 9, 12, 16, 13, 15, 14, 17, 18, 23, 19, 20, 22, 21, 24, 25, 31, 26, 27, 28, 30, 29]
  const got = await Promise.all(order.map(async k => ({ k, b: await readMiB(f, ino, k, MiB) })))
  for (const { k, b } of got) assert.ok(b.equals(data.subarray(k * MiB, (k + 1) * MiB)), `MiB ${k}`)
  assert.equal(f.io.streams.stats.directBytes, 32 * MiB, 'every request read directly')
  assert.equal(f.cache.folios, 0, 'none through folios')
  await f.close()
})

test('a direct read in flight when the file changes is not answered from the old mapping', async () => {
  const { img, data } = await imageWithFile(16)
  for (const ext of ['', '-data']) fs.copyFileSync(img + ext, `${img}.orig${ext}`) // each change starts from this
  const fresh = pattern(7, MiB)
  const mib4 = data.subarray(4 * MiB, 5 * MiB)
  // what changes, and what MiB 3 and MiB 4 hold after it
  const changes: Array<[string, (f: FolioFs, ino: number) => Promise<void>, Buffer, Buffer]> = [
    ['an overwrite written back and evicted', async (f, ino) => { await f.write(ino, fresh, 3 * MiB); await f.fsync(ino); f.cache.evict(0) }, fresh, mib4],
    ['a punched hole', async (f, ino) => { await f.fallocate(ino, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 3 * MiB, MiB) }, Buffer.alloc(MiB), mib4],
    ['a truncate and an extension', async (f, ino) => { await f.truncate(ino, 3 * MiB); await f.truncate(ino, 16 * MiB) }, Buffer.alloc(MiB), Buffer.alloc(MiB)]
  ]
  for (const [what, change, want, after] of changes) {
    const f = new FolioFs(openImage(img))
    const ino = f.resolve('/f')
    for (let k = 0; k < 3; k++) await readMiB(f, ino, k, MiB) // the reader is sequential now
    const gate = holdReads(f)
    const pending = readMiB(f, ino, 3, MiB) // its mapping looked up, its data area read held
    while (gate.held() === 0) await new Promise(resolve => setImmediate(resolve))
    await change(f, ino)
    gate.off()
    assert.ok((await pending).equals(want), `${what} while MiB 3 was read: the read answers what the file holds now`)
    assert.equal(f.io.streams.stats.directRetried, 1, what)
    assert.ok((await readMiB(f, ino, 4, MiB)).equals(after), what)
    await f.close()
    for (const ext of ['', '-data']) fs.copyFileSync(`${img}.orig${ext}`, img + ext)
  }
})

test('a read of several extents settles only when all its data area reads have ended, also when one fails', async () => {
  const img = path.join(tmpdir(), 's.img')
  mkfs(img, { capacityBytes: 256 * MiB })
  const f = new FolioFs(openImage(img))
  const ino = f.create('/f', 0o644, root)
  const other = f.create('/g', 0o644, root)
  // /f's two halves land apart: /g's blocks are allocated between them
  await f.write(ino, pattern(8, MiB / 2), 0)
  await f.fsync(ino)
  await f.write(other, pattern(9, MiB), 0)
  await f.fsync(other)
  await f.write(ino, pattern(10, MiB / 2), MiB / 2)
  await f.fsync(ino)
  assert.ok((await f.data.extents(ino)).length >= 2, 'two extents')
  const area = f.data.area
  const orig = area.read.bind(area)
  let calls = 0
  let slowEnded = false
  area.read = async (bufs, pblk) => {
    if (calls++ === 0) throw Object.assign(new Error('injected'), { code: 'EIO' })
    await new Promise(resolve => setTimeout(resolve, 100))
    await orig(bufs, pblk)
    slowEnded = true
  }
  await assert.rejects(f.data.readBlocks(ino, 0, Buffer.alloc(MiB)), /injected/)
  assert.ok(slowEnded, 'the other extent\'s read had ended (it writes into the buffer)')
  area.read = orig
  await f.close()
})

/** imageWithFile(8) whose block 4 * 256 + 17 (in MiB 4) has one byte changed in the data area */
test('a damaged block in a direct read reads as EIO for its own request only', async () => {
  const { img, data } = await imageWithDamagedBlock()
  const f = new FolioFs(openImage(img))
  const ino = f.resolve('/f')
  for (let k = 0; k < 4; k++) assert.ok((await readMiB(f, ino, k, MiB)).equals(data.subarray(k * MiB, (k + 1) * MiB)), `MiB ${k}`)
  await assert.rejects(readMiB(f, ino, 4, MiB), (e: unknown) => (e as { code?: string }).code === 'EIO')
  assert.ok((await readMiB(f, ino, 5, MiB)).equals(data.subarray(5 * MiB, 6 * MiB)), 'the next MiB reads')
  assert.ok(f.io.streams.stats.directRetried >= 1)
  await f.close()
})

test('a chunk read ahead before a write is not used after it, nor one read before the writeback commit', async () => {
  const { img, data } = await imageWithFile(16)
  const { f, ino } = await streaming(img, 2) // chunks 3.. are read ahead
  assert.ok(f.io.streams.stats.chunkFills >= 3)
  const fresh = pattern(2, 4096)
  await f.write(ino, fresh, 3 * MiB + 8192)
  await f.fsync(ino)
  f.cache.evict(0) // the written folio is clean now: gone, as under memory pressure
  const got = await readMiB(f, ino, 3)
  assert.ok(got.subarray(8192, 12288).equals(fresh), 'the write is read back')
  assert.ok(got.subarray(0, 8192).equals(data.subarray(3 * MiB, 3 * MiB + 8192)))
  await f.close()

  // the data is written, then a reader's readahead fills chunk 6 from the
  // old mapping while the folio is dirty; the commit must retire that chunk
  const g = new FolioFs(openImage(img))
  const ino2 = g.resolve('/f')
  const fresh2 = pattern(3, 4096)
  await g.write(ino2, fresh2, 6 * MiB)
  for (let k = 0; k <= 5; k++) await readMiB(g, ino2, k)
  await settle()
  await g.fsync(ino2) // the commit
  g.cache.evict(0)
  assert.ok((await readMiB(g, ino2, 6)).subarray(0, 4096).equals(fresh2), 'the committed write is read back')
  await g.close()
})

test('a chunk read ahead is not used after a punched hole or a truncate', async () => {
  const { img, data } = await imageWithFile(16)
  const { f, ino } = await streaming(img, 7) // chunks 8.. are read ahead
  await f.fallocate(ino, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 9 * MiB, MiB)
  assert.ok((await readMiB(f, ino, 8)).equals(data.subarray(8 * MiB, 9 * MiB)))
  assert.ok((await readMiB(f, ino, 9)).equals(Buffer.alloc(MiB)), 'the hole reads as zeros')
  assert.ok((await readMiB(f, ino, 10)).equals(data.subarray(10 * MiB, 11 * MiB)))
  await f.close()

  const { f: g, ino: ino2 } = await streaming(img, 2) // chunks 3.. are read ahead
  await g.truncate(ino2, 3 * MiB + 100)
  await g.truncate(ino2, 16 * MiB)
  const got = await readMiB(g, ino2, 3)
  assert.ok(got.subarray(0, 100).equals(data.subarray(3 * MiB, 3 * MiB + 100)))
  assert.ok(got.subarray(100).equals(Buffer.alloc(MiB - 100)), 'past the old truncation: zeros')
  assert.ok((await readMiB(g, ino2, 4)).equals(Buffer.alloc(MiB)))
  await g.close()
})

test('a damaged block in a streamed chunk reads as EIO for its own requests only', async () => {
  const { img, data } = await imageWithDamagedBlock()
  const { f, ino } = await streaming(img, 2)
  assert.ok((await readMiB(f, ino, 3)).equals(data.subarray(3 * MiB, 4 * MiB)))
  await assert.rejects(readMiB(f, ino, 4), (e: unknown) => (e as { code?: string }).code === 'EIO')
  assert.ok((await readMiB(f, ino, 5)).equals(data.subarray(5 * MiB, 6 * MiB)), 'the next MiB reads')
  const before = Buffer.alloc(17 * 4096)
  assert.equal(await f.read(ino, before, before.length, 4 * MiB), before.length)
  assert.ok(before.equals(data.subarray(4 * MiB, 4 * MiB + 17 * 4096)), 'the good blocks of that MiB read')
  assert.ok(f.io.streams.stats.chunksWasted >= 1, 'the damaged chunk was retired')
  await f.close()
})

test('a reader that stopped gives its chunks read ahead to the next reader when the budget is spent', async () => {
  const img = path.join(tmpdir(), 's.img')
  mkfs(img, { capacityBytes: 256 * MiB })
  const w = new FolioFs(openImage(img))
  const data = pattern(4, 16 * MiB)
  for (const name of ['/a', '/b']) await w.write(w.create(name, 0o644, root), data, 0)
  await w.close()
  const f = new FolioFs(openImage(img), { streamBytes: 4 * MiB })
  const a = f.resolve('/a')
  const b = f.resolve('/b')
  for (let k = 0; k < 4; k++) await readMiB(f, a, k)
  await new Promise(resolve => setTimeout(resolve, 1100)) // idle: its chunks may go to another's readahead
  assert.equal(f.io.streams.chunksOf(a).length, 3, `a's reader left chunks ahead: ${f.io.streams.chunksOf(a).join(' ')}`)
  const before = f.io.streams.stats.streamedBytes
  let ahead = 0
  for (let k = 0; k < 16; k++) {
    assert.ok((await readMiB(f, b, k)).equals(data.subarray(k * MiB, (k + 1) * MiB)), `b, MiB ${k}`)
    if (f.io.streams.chunksOf(b).some(c => c > k)) ahead++
  }
  assert.ok(f.io.streams.stats.streamedBytes - before >= 14 * MiB, `b streamed: ${f.io.streams.stats.streamedBytes - before}`)
  assert.ok(ahead >= 10, `b's reader had chunks read ahead after ${ahead} of 16 reads`)
  assert.ok(f.cache.folios <= 2 * 256, `b's reads did not go through folios: ${f.cache.folios}`)
  assert.ok(f.io.streams.bytes <= 4 * MiB)
  await f.close()
})

test('random writes, fsyncs, evictions, truncates and punches between the requests of sequential readers never show stale bytes (seeded model)', async () => {
  const img = path.join(tmpdir(), 's.img')
  mkfs(img, { capacityBytes: 256 * MiB })
  const w = new FolioFs(openImage(img))
  const size = 24 * MiB
  const model = Buffer.alloc(size + MiB) // room for writes past the end
  pattern(5, size).copy(model)
  const ino = w.create('/f', 0o644, root)
  await w.write(ino, model.subarray(0, size), 0)
  await w.close()
  const f = new FolioFs(openImage(img), { streamBytes: 8 * MiB })
  const r = rng(6)
  const pick = (n: number): number => Math.floor(r() * n)
  let len = size
  let at = 0 // the sequential reader's next MiB
  for (let step = 0; step < 400; step++) {
    const what = pick(10)
    if (what < 5) { // the reader goes on (or starts over at the end)
      if (at * MiB >= len) at = 0
      const got = await readMiB(f, ino, at, pick(2) === 0 ? MiB : QUARTER) // read directly, or through chunks
      const want = Buffer.alloc(Math.max(0, Math.min(MiB, len - at * MiB)))
      model.copy(want, 0, at * MiB, at * MiB + want.length)
      assert.ok(got.equals(want), `step ${step}: MiB ${at} of a ${len}-byte file`)
      at++
    } else if (what === 5) { // a write somewhere, maybe ahead of the reader
      const pos = pick(len)
      const data = pattern(1000 + step, 4 * (1 + pick(4096)))
      await f.write(ino, data, pos)
      if (pos + data.length > len) { model.fill(0, len, pos); len = pos + data.length }
      data.copy(model, pos)
    } else if (what === 6) {
      await f.fsync(ino)
    } else if (what === 7) {
      f.cache.evict(0) // clean folios go: the next reads come from the data area
    } else if (what === 8) { // truncate, shorter or longer
      const to = pick(size)
      await f.truncate(ino, to)
      if (to < len) model.fill(0, to, len)
      len = to
    } else { // punch a hole
      const pos = pick(len)
      const n = Math.min(len - pos, 4096 * (1 + pick(512)))
      await f.fallocate(ino, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, pos, n)
      model.fill(0, pos, pos + n)
    }
    if (pick(8) === 0) await new Promise(resolve => setTimeout(resolve, 50)) // let chunk fills finish now and then
  }
  const st = f.io.streams.stats
  assert.ok(st.directBytes > 0 && st.streamedBytes > st.directBytes && st.chunkFills > 0, `the reader was streamed both ways: ${JSON.stringify(st)}`)
  await f.close()
})

test('a read does not answer bytes past the size it read at: a write that extended the file meanwhile is not in the buffer', async () => {
  const img = path.join(tmpdir(), 'x.img')
  mkfs(img, { capacityBytes: 64 * MiB })
  const f = new FolioFs(openImage(img))
  const ino = f.create('/f', 0o644, root)
  await f.write(ino, Buffer.alloc(4096, 0x78), 0)
  await f.sync() // written back (an fsync would put it in the data journal, and the folio would stay)
  f.cache.evict(0)
  const gate = holdReads(f)
  const buf = Buffer.alloc(8192, 0xaa)
  const pending = f.read(ino, buf, 8192, 0) // block 0 only: the file is 4096 bytes
  for (let i = 0; gate.held() === 0 && i < 1000; i++) await new Promise(resolve => setImmediate(resolve))
  assert.equal(gate.held(), 1, 'the read is at the data area')
  await f.write(ino, Buffer.alloc(4096, 0x79), 4096) // block 1, not locked by the read
  gate.off()
  const n = await pending
  assert.ok(buf.subarray(0, n).every((b, i) => b === (i < 4096 ? 0x78 : 0x79)), `the ${n} bytes answered are the file's (not the buffer's old 0xaa)`)
  await f.close()
})
