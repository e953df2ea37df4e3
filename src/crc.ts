// The one crc32 of foliofs: zlib's (IEEE polynomial), which the B-tree
// pages and the data checksums (datacsum.ts) carry on disk.
//
// Computed by native/foliofs_crc.node (carry-less multiplication,
// ~10 GB/s here) where it is built and the CPU has PCLMULQDQ, else by
// zlib (~2.4 GB/s): the same numbers either way (test/unit/crc.test.ts),
// so an image never depends on which one wrote it.
//
// Misuse: importing zlib's crc32 elsewhere for on-disk checksums (it is
// correct, just 4x slower).
import path from 'path'
import { crc32 as zlibCrc32 } from 'zlib'

interface Addon {
  accelerated: boolean
  crc32: (buf: Uint8Array) => number
  crcBlocks: (buf: Uint8Array, size: number, out: Uint32Array) => void
}

/** where the addon is built (`make -C native`, run by npm's postinstall) */
export const ADDON_PATH = path.resolve(__dirname, '..', '..', 'native', 'build', 'foliofs_crc.node')

function load (): Addon | null {
  if (process.env.FOLIOFS_CRC === 'zlib') return null // tests and A/B measurements
  try {
    const a = require(ADDON_PATH) as Addon
    return a.accelerated ? a : null
  } catch {
    return null
  }
}

const addon = load()

/** which implementation runs: 'clmul' (the addon) or 'zlib' */
export const crcImpl: 'clmul' | 'zlib' = addon ? 'clmul' : 'zlib'

/** crc32 of buf, as zlib.crc32(buf) */
export const crc32: (buf: Uint8Array) => number = addon ? addon.crc32 : zlibCrc32

/** crc32 of each `size`-byte piece of span (span.length a multiple of size) */
export function crcPieces (span: Uint8Array, size: number): Uint32Array {
  const out = new Uint32Array(span.length / size)
  if (addon) addon.crcBlocks(span, size, out)
  else for (let i = 0; i < out.length; i++) out[i] = zlibCrc32(span.subarray(i * size, (i + 1) * size))
  return out
}
