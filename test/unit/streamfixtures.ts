// Fixtures of the streaming and read plan tests: an image holding one
// file of known bytes, a sequential reader of it, a hold on data area
// reads, a damaged block.
import * as fs from 'fs'
import * as path from 'path'
import { mkfs, openImage } from '../../src/image'
import { FolioFs } from '../../src/fs'
import type { PlanSink } from '../../src/readplan'
import { rng, tmpdir } from './helpers'

export const root = { uid: 0, gid: 0 }
export const MiB = 1024 * 1024

export const pattern = (seed: number, len: number): Buffer => {
  const r = rng(seed)
  const b = Buffer.alloc(len)
  for (let i = 0; i < len; i += 4) b.writeUInt32LE(Math.floor(r() * 2 ** 32), i)
  return b
}

/** an image holding /f (mib MiB of pattern(1)), written back; its path and contents */
export async function imageWithFile (mib: number): Promise<{ img: string, data: Buffer }> {
  const img = path.join(tmpdir(), 's.img')
  mkfs(img, { capacityBytes: 256 * MiB })
  const f = new FolioFs(openImage(img))
  const ino = f.create('/f', 0o644, root)
  const data = pattern(1, mib * MiB)
  await f.write(ino, data, 0)
  await f.close()
  return { img, data }
}

/** requests smaller than a chunk: served from chunks read ahead */
export const QUARTER = MiB / 4

/** read MiB k of ino in requests of `request` bytes (a sequential reader's; MiB: read directly) */
export async function readMiB (f: FolioFs, ino: number, k: number, request = QUARTER, sink?: () => PlanSink): Promise<Buffer> {
  const out: Buffer[] = []
  for (let at = 0; at < MiB; at += request) {
    const b = Buffer.alloc(request)
    const n = await f.read(ino, b, request, k * MiB + at, sink?.())
    out.push(b.subarray(0, n))
    if (n < request) break
  }
  return Buffer.concat(out)
}

/**
 * Holds every data area read of f until off() (a direct read in flight
 * across whatever the test does meanwhile); held(): reads held so far.
 */
export function holdReads (f: FolioFs): { off: () => void, held: () => number } {
  const area = f.data.area
  const orig = area.read.bind(area)
  let open = (): void => {}
  const gate = new Promise<void>(resolve => { open = resolve })
  let held = 0
  area.read = async (...a: Parameters<typeof area.read>) => { held++; await gate; return await orig(...a) }
  return { off: () => { area.read = orig; open() }, held: () => held }
}

/** an image with /f of 8 MiB whose block 4 * 256 + 17 (in MiB 4) is damaged in the data area */
export async function imageWithDamagedBlock (): Promise<{ img: string, data: Buffer }> {
  const { img, data } = await imageWithFile(8)
  const g0 = new FolioFs(openImage(img, { readonly: true }))
  const pblk = (await g0.data.extents(g0.resolve('/f')))[0].pblk
  await g0.close()
  const fd = fs.openSync(`${img}-data`, 'r+')
  fs.writeSync(fd, Buffer.from([0x5a]), 0, 1, (pblk + 4 * 256 + 17) * 4096 + 9)
  fs.closeSync(fd)
  return { img, data }
}

