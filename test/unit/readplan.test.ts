// Read plans (src/readplan.ts) through FolioFs, no FUSE: a sequential
// 1 MiB request given a sink leaves a plan instead of reading; run as the
// binding runs it (fuse-native.c: pread of each segment into the reply,
// crc32 of each checked block) it yields the file's bytes, holes and
// unwritten extents included; it names the data area places of the
// following MiBs (to EOF) for prefetching. A damaged block fails the plan (the READ
// comes again without one, and answers EIO). Blocks freed while a plan
// that maps them is in flight are neither reused nor discarded until it
// is done.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as fs from 'fs'
import * as zlib from 'zlib'
import * as path from 'path'
import { mkfs, openImage } from '../../src/image'
import { FolioFs } from '../../src/fs'
import { ReadPlans, type PlanSink } from '../../src/readplan'
import { tmpdir } from './helpers'
import { imageWithDamagedBlock, imageWithFile, MiB, pattern, readMiB, root } from './streamfixtures'

const FALLOC_FL_KEEP_SIZE = 1
const FALLOC_FL_PUNCH_HOLE = 2

const HEAD = 24

/** the data area pieces a plan names from byte o on: [pos, bytes] (and their reply offsets) */
function pieces (plan: Buffer, o: number, count: number): Array<{ at: number, bytes: number, pos: number }> {
  const out = []
  for (let k = 0; k < count; k++, o += 16) out.push({ at: plan.readUInt32LE(o), bytes: plan.readUInt32LE(o + 4), pos: Number(plan.readBigInt64LE(o + 8)) })
  return out
}

/** what a plan has the libfuse thread prefetch */
const prefetches = (plan: Buffer): Array<{ bytes: number, pos: number }> => pieces(plan, HEAD + 16 * plan.readUInt32LE(4), plan.readUInt32LE(16))

/** run plan into reply as fuse-native.c does; true if served (the state it stores: 1 served, 2 failed) */
function runPlan (plan: Buffer, reply: Buffer): boolean {
  const nseg = plan.readUInt32LE(4)
  const nblk = plan.readUInt32LE(8)
  const fd = plan.readInt32LE(12)
  const npf = plan.readUInt32LE(16)
  let ok = true
  for (const s of pieces(plan, HEAD, nseg)) {
    if (!ok) break
    ok = s.at + s.bytes <= reply.length && fs.readSync(fd, reply, s.at, s.bytes, s.pos) === s.bytes
  }
  const crcs = HEAD + 16 * (nseg + npf)
  for (let i = 0; i < nblk && ok; i++) {
    if (plan[crcs + 4 * nblk + i] === 1) ok = zlib.crc32(reply.subarray(i * 4096, (i + 1) * 4096)) === plan.readUInt32LE(crcs + 4 * i)
  }
  Atomics.store(new Int32Array(plan.buffer, plan.byteOffset, 1), 0, ok ? 1 : 2)
  return ok
}

/** a 1 MiB READ of MiB k as fuse-ops answers it: the reply, and the plan left, if any */
async function planMiB (f: FolioFs, ino: number, k: number): Promise<{ reply: Buffer, n: number, plan: Buffer | null }> {
  const sink: PlanSink = { ticket: null }
  const reply = Buffer.alloc(MiB, 0xaa)
  const n = await f.read(ino, reply, MiB, k * MiB, sink)
  return { reply, n, plan: sink.ticket?.plan ?? null }
}

test('a sequential 1 MiB request leaves a plan that yields the file: written blocks, a hole, an unwritten extent', async () => {
  const { img, data } = await imageWithFile(8)
  const f = new FolioFs(openImage(img))
  const ino = f.resolve('/f')
  const want = Buffer.from(data)
  await f.fallocate(ino, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 2 * MiB + 8192, 12288)
  want.fill(0, 2 * MiB + 8192, 2 * MiB + 20480)
  await f.truncate(ino, 5 * MiB + 4096) // and back: MiB 5 past its first block reads zeros
  await f.fallocate(ino, 0, 5 * MiB, 3 * MiB) // unwritten extents to 8 MiB
  want.fill(0, 5 * MiB + 4096)
  await f.fsync(ino)
  f.cache.evict(0)
  assert.ok((await readMiB(f, ino, 0, MiB)).equals(want.subarray(0, MiB)), 'the first request (not sequential yet) reads')
  for (let k = 1; k < 8; k++) {
    const { reply, n, plan } = await planMiB(f, ino, k)
    assert.equal(n, MiB)
    assert.ok(plan, `MiB ${k}: a plan`)
    assert.equal(f.data.plans.inFlight, 1, 'issued, not run')
    assert.ok(runPlan(plan, reply), `MiB ${k}: served`)
    assert.ok(reply.equals(want.subarray(k * MiB, (k + 1) * MiB)), `MiB ${k}: the file's bytes`)
  }
  assert.equal(f.data.plans.stats.plans, 7)
  assert.equal(f.data.plans.stats.plannedBytes, 7 * MiB)
  assert.equal(f.data.plans.inFlight, 0, 'every plan ran')
  assert.equal(f.io.streams.stats.chunkFills, 0)
  await f.close()
})

test('a damaged block fails its plan; the READ again without one answers EIO; the reader goes on', async () => {
  const { img, data } = await imageWithDamagedBlock()
  const f = new FolioFs(openImage(img))
  const ino = f.resolve('/f')
  await readMiB(f, ino, 3, MiB)
  const bad = await planMiB(f, ino, 4)
  assert.ok(bad.plan)
  const pblk = (await f.data.extents(ino))[0].pblk // the file is one extent
  assert.deepEqual(prefetches(bad.plan).map(p => ({ bytes: p.bytes, pos: p.pos })), [{ bytes: 3 * MiB, pos: (pblk + 5 * 256) * 4096 }], 'the plan names MiB 5 to the end (7) for prefetching')
  assert.equal(runPlan(bad.plan, bad.reply), false, 'the crc of block 17 of MiB 4 does not match')
  await assert.rejects(f.read(ino, Buffer.alloc(MiB), MiB, 4 * MiB), (e: unknown) => (e as { code?: string }).code === 'EIO')
  // the reader goes on (its first requests after the error read through folios, and ahead)
  for (const k of [5, 6]) assert.ok((await readMiB(f, ino, k, MiB)).equals(data.subarray(k * MiB, (k + 1) * MiB)), `MiB ${k} reads`)
  const next = await planMiB(f, ino, 7)
  assert.ok(next.plan && runPlan(next.plan, next.reply), 'MiB 7 plans, and its plan runs')
  assert.ok(next.reply.equals(data.subarray(7 * MiB, 8 * MiB)))
  await f.close()
})

test('blocks freed while a plan maps them are neither reused nor punched until it has run; a writer that needs them waits', async () => {
  const img = path.join(tmpdir(), 'p.img')
  mkfs(img, { capacityBytes: 8 * MiB }) // room for the file and not much more: freed blocks are what a writer gets next
  const f = new FolioFs(openImage(img))
  const ino = f.create('/f', 0o644, root)
  const data = pattern(5, 4 * MiB)
  await f.write(ino, data, 0)
  await f.fsync(ino)
  f.cache.evict(0)
  await readMiB(f, ino, 0, MiB)
  const { reply, plan } = await planMiB(f, ino, 1)
  assert.ok(plan)
  await f.truncate(ino, 0) // MiB 1's blocks are free, and durable at the next sync
  await f.sync()
  assert.ok(f.data.tree.pendingFreeBlocks() >= 4 * 256 - 256, `the freed blocks wait: ${f.data.tree.pendingFreeBlocks()} pending`)
  assert.equal(f.data.plans.stats.reuseWaits, 1)
  // a writer now cannot get MiB 1's blocks; the image has no room for 4 MiB more without them
  const g = f.create('/g', 0o644, root)
  await f.write(g, pattern(6, MiB), 0)
  await f.fsync(g)
  // a writeback that needs them finds the device full: it waits for the plan, not ENOSPC
  let written = false
  const more = (async () => { await f.write(g, pattern(7, 4 * MiB), MiB); await f.fsync(g); written = true })()
  await new Promise(resolve => setTimeout(resolve, 100))
  assert.equal(written, false, 'the writeback waits')
  assert.ok(runPlan(plan, reply), 'the plan runs after all that')
  assert.ok(reply.equals(data.subarray(MiB, 2 * MiB)), 'and reads the bytes MiB 1 had when it was planned')
  await more
  assert.ok(written, 'then the freed blocks are allocated')
  assert.equal(f.data.tree.pendingFreeBlocks(), 0)
  await f.close()
})

test('whenReadsDone waits for the tickets begun before it, not for later ones', async () => {
  const plans = new ReadPlans()
  let ran = 0
  plans.whenReadsDone(() => ran++)
  assert.equal(ran, 1, 'none in flight: at once')
  const a = plans.begin()
  plans.whenReadsDone(() => ran++)
  const b = plans.begin()
  assert.equal(ran, 1)
  plans.end(a)
  assert.equal(ran, 2, 'a ended: b began after the wait, and is not waited for')
  plans.whenReadsDone(() => ran++)
  const plan = plans.build(b, -1, [], new Uint32Array(0), new Uint8Array(0))
  assert.equal(ran, 2)
  Atomics.store(new Int32Array(plan.buffer, plan.byteOffset, 1), 0, 1) // the libfuse thread is done
  await new Promise(resolve => setTimeout(resolve, 20))
  assert.equal(ran, 3, 'found done by the poll')
  assert.equal(plans.inFlight, 0)
})

test('a wait whose plans are done runs before a later one that finds none in flight (frees in order; an ENOSPC retry finds them)', async () => {
  const plans = new ReadPlans()
  const order: number[] = []
  const t = plans.begin()
  const plan = plans.build(t, -1, [], new Uint32Array(0), new Uint8Array(0))
  plans.whenReadsDone(() => order.push(1))
  Atomics.store(new Int32Array(plan.buffer, plan.byteOffset, 1), 0, 1) // done, and no poll has seen it yet
  plans.whenReadsDone(() => order.push(2))
  assert.deepEqual(order, [1, 2], 'the older free first, both at once')
  assert.equal(plans.waits, 0)
  const u = plans.begin()
  const plan2 = plans.build(u, -1, [], new Uint32Array(0), new Uint8Array(0))
  plans.whenReadsDone(() => order.push(3))
  Atomics.store(new Int32Array(plan2.buffer, plan2.byteOffset, 1), 0, 2) // failed: done all the same
  await plans.idle() // what an allocation that found the device full waits for: the free runs first
  assert.deepEqual(order, [1, 2, 3])
})

