// src/crc.ts: the crc32 foliofs stores (B-tree pages, data checksums) is
// zlib's, whichever implementation computes it. The addon's folding path
// runs from 64 bytes on; the lengths below cross every boundary of it
// (its 64-byte steps, its 16-byte tail steps, the byte tail).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'fs'
import { crc32 as zlibCrc32 } from 'zlib'
import { ADDON_PATH, crc32, crcImpl, crcPieces } from '../../src/crc'
import { rng } from './helpers'

function bytes (n: number, seed: number): Buffer {
  const r = rng(seed)
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) b[i] = Math.floor(r() * 256)
  return b
}

test('the addon is built and used where the CPU can fold (x86-64 with PCLMULQDQ)', () => {
  assert.ok(existsSync(ADDON_PATH), `${ADDON_PATH} is built by npm run setup`)
  const x86clmul = process.arch === 'x64' && /\bpclmulqdq\b/.test(require('fs').readFileSync('/proc/cpuinfo', 'utf8'))
  if (x86clmul) assert.equal(crcImpl, 'clmul')
})

test('crc32 equals zlib crc32 for every length 0..1100, at odd offsets, and for blocks and pages', () => {
  const big = bytes(70000, 5)
  for (let n = 0; n <= 1100; n++) {
    const at = n % 13
    const b = big.subarray(at, at + n)
    assert.equal(crc32(b), zlibCrc32(b), `length ${n} at offset ${at}`)
  }
  for (const n of [4084, 4096, 8192 - 12, 65536]) assert.equal(crc32(big.subarray(3, 3 + n)), zlibCrc32(big.subarray(3, 3 + n)), `length ${n}`)
  assert.equal(crc32(Buffer.alloc(4096)), zlibCrc32(Buffer.alloc(4096)), 'zeros')
  assert.equal(crc32(Buffer.alloc(4096, 0xff)), zlibCrc32(Buffer.alloc(4096, 0xff)), 'ones')
})

test('crcPieces gives each piece its own crc32 (a span of blocks, as reads and writeback check them)', () => {
  const span = bytes(64 * 4096, 9)
  const got = crcPieces(span, 4096)
  assert.equal(got.length, 64)
  for (let i = 0; i < 64; i++) assert.equal(got[i], zlibCrc32(span.subarray(i * 4096, (i + 1) * 4096)), `block ${i}`)
  assert.deepEqual([...crcPieces(span.subarray(0, 300), 100)], [0, 1, 2].map(i => zlibCrc32(span.subarray(i * 100, (i + 1) * 100))))
})
