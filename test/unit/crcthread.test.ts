// The crc thread (src/crcthread.ts): the same crcs as on the main thread,
// for shared and unshared buffers, and after the thread is gone.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { crc32 } from 'zlib'
import { CrcThread, crcsHere } from '../../src/crcthread'
import { rng } from './helpers'

function blocks (shared: boolean, n: number, seed: number): Buffer[] {
  const r = rng(seed)
  const mem = shared ? new SharedArrayBuffer(n * 4096) : new ArrayBuffer(n * 4096)
  const out: Buffer[] = []
  for (let i = 0; i < n; i++) {
    const b = Buffer.from(mem, i * 4096, 4096)
    for (let k = 0; k < 4096; k += 4) b.writeUInt32LE(Math.floor(r() * 2 ** 32), k)
    out.push(b)
  }
  return out
}

test('the crc thread gives zlib crc32 of each block: shared slabs offloaded, other buffers and small calls on the caller\'s thread, and everything after close', async () => {
  const M = 16
  const t = new CrcThread(M) // with the crc addon the default answers every call inline
  const shared = blocks(true, 2 * M + 10, 1)
  const want = Uint32Array.from(shared.map(b => crc32(b)))
  assert.deepEqual(await t.crcs(shared), want)
  assert.deepEqual(crcsHere(shared), want)
  assert.equal(t.stats.offloaded, 1)
  // several calls in flight at once each get their own answer
  const parts = [shared.slice(0, M), shared.slice(M, 2 * M), shared.slice(2 * M)]
  const got = await Promise.all(parts.map(async p => await t.crcs(p)))
  assert.deepEqual(got.flatMap(g => [...g]), [...want])
  // a span (one buffer of many blocks) gives the same crcs, in one message
  const span = Buffer.from(shared[0].buffer, 0, shared.length * 4096)
  assert.deepEqual(await t.crcs(span), want)
  assert.equal(t.stats.offloaded, 4, "the first call, two of the three parts, the span")
  const plain = blocks(false, 50, 2)
  assert.deepEqual(await t.crcs(plain), Uint32Array.from(plain.map(b => crc32(b))))
  const inline = t.stats.inline
  assert.ok(inline >= 2, 'unshared buffers and the 10-block call ran inline')
  t.close()
  assert.deepEqual(await t.crcs(shared), want, 'after close: answered inline')
  assert.equal(t.stats.inline, inline + 1)
})
