// Read-only consistency check of an image: SQLite's own integrity check,
// then the filesystem invariants (links, parents, reachability, block
// counts), the extent tree, and the data area (present, of this image, and
// holding every mapped block).
import * as fs from 'fs'
import { BLOCK_SIZE, openImage, ROOT_INO } from './image'
import { dataAreaPath } from './dataarea'
import { ExtentTree, EXT_UNWRITTEN, lockrestartDoSync, transGet } from './btree'

export interface FsckReport { errors: string[], inodes: number, dirents: number, blocks: number }

export function fsck (image: string, progress?: (phase: string, done?: number, total?: number) => void): FsckReport {
  const img = openImage(image, { readonly: true, check: false })
  const db = img.db
  const errors: string[] = []
  try {
    progress?.('sqlite integrity check')
    const integrity = db.pragma('integrity_check', { simple: false }) as Array<{ integrity_check: string }>
    for (const r of integrity) if (r.integrity_check !== 'ok') errors.push(`sqlite: ${r.integrity_check}`)

    progress?.('inodes and entries')
    const inodes = new Map<number, { mode: number, nlink: number, size: number, blocks: number, parent: number }>()
    for (const r of db.prepare('SELECT ino, mode, nlink, size, blocks, parent FROM inodes').iterate() as Iterable<{ ino: number, mode: number, nlink: number, size: number, blocks: number, parent: number }>) {
      inodes.set(r.ino, r)
    }
    const orphans = new Set(db.prepare('SELECT ino FROM orphans').pluck().all() as number[])
    const links = new Map<number, number>()
    const subdirs = new Map<number, number>()
    const children = new Map<number, number[]>()
    let dirents = 0
    for (const d of db.prepare('SELECT parent, name, ino FROM dirents').iterate() as Iterable<{ parent: number, name: string, ino: number }>) {
      dirents++
      const p = inodes.get(d.parent)
      const c = inodes.get(d.ino)
      if (!p) { errors.push(`entry '${d.name}' in missing directory ${d.parent}`); continue }
      if ((p.mode & 0o170000) !== 0o040000) errors.push(`entry '${d.name}' in non-directory ${d.parent}`)
      if (!c) { errors.push(`entry '${d.name}' in ${d.parent} points to missing inode ${d.ino}`); continue }
      if (d.name === '' || d.name.includes('/') || Buffer.byteLength(d.name) > 255) errors.push(`bad name in ${d.parent}: ${JSON.stringify(d.name)}`)
      links.set(d.ino, (links.get(d.ino) ?? 0) + 1)
      if ((c.mode & 0o170000) === 0o040000) {
        subdirs.set(d.parent, (subdirs.get(d.parent) ?? 0) + 1)
        if (c.parent !== d.parent) errors.push(`directory ${d.ino} has parent ${c.parent} but is linked from ${d.parent}`)
      }
      const list = children.get(d.parent) ?? []
      list.push(d.ino)
      children.set(d.parent, list)
    }
    // the extent tree: structure, then what it maps against inodes and block rows
    let tree: ExtentTree | null = null
    try {
      tree = ExtentTree.open(db, { totalBlocks: img.sb.capacityBlocks })
      for (const e of tree.verify()) errors.push(`extent tree: ${e}`)
    } catch (e) {
      errors.push(`extent tree: ${(e as Error).message}`)
    }
    // end: past the last written block (unwritten extents, from fallocate,
    // may lie past the size with KEEP_SIZE)
    const mapped = new Map<number, { blocks: number, end: number }>()
    // openImage checked the data area's header; every written block must lie
    // inside it (unwritten ones are never read, so the area need not cover them)
    const areaBlocks = Math.floor(fs.statSync(dataAreaPath(image)).size / BLOCK_SIZE)
    let blocks = 0
    if (tree) {
      const t = tree
      let total = 0
      let checked = 0
      for (const ino of inodes.keys()) {
        progress?.('extents of inodes', checked++, inodes.size)
        const m = { blocks: 0, end: 0 }
        for (const e of lockrestartDoSync(transGet(t), tr => tr.extentsIn(ino, 0, Number.MAX_SAFE_INTEGER))) {
          m.blocks += e.len
          if (e.pblk < 1) errors.push(`inode ${ino}: extent at ${e.off} maps the data area's header`)
          if (e.flags & EXT_UNWRITTEN) continue
          m.end = Math.max(m.end, e.off + e.len)
          if (e.pblk + e.len > areaBlocks) errors.push(`inode ${ino}: extent at ${e.off} maps blocks past the end of the data area (${e.pblk + e.len} > ${areaBlocks})`)
        }
        if (m.blocks) mapped.set(ino, m)
        total += m.blocks
      }
      blocks = total
      const inUse = t.usedBlocks()
      if (total !== inUse) errors.push(`space accounting: ${total} blocks mapped by inodes, ${inUse} in use`)
    }
    progress?.('links, reachability')
    // reachability from the root
    const seen = new Set<number>([ROOT_INO])
    const stack = [ROOT_INO]
    while (stack.length) {
      for (const c of children.get(stack.pop() as number) ?? []) {
        if (seen.has(c)) continue
        seen.add(c)
        stack.push(c)
      }
    }
    for (const [ino, i] of inodes) {
      const isDir = (i.mode & 0o170000) === 0o040000
      const expect = isDir ? 2 + (subdirs.get(ino) ?? 0) : (links.get(ino) ?? 0)
      if (i.nlink !== expect && !(orphans.has(ino) && i.nlink === 0)) errors.push(`inode ${ino}: nlink ${i.nlink}, expected ${expect}`)
      if (isDir && ino !== ROOT_INO && (links.get(ino) ?? 0) !== 1 && !orphans.has(ino)) errors.push(`directory ${ino} has ${links.get(ino) ?? 0} names`)
      if (!seen.has(ino) && !orphans.has(ino)) errors.push(`inode ${ino} is not reachable from the root`)
      const m = mapped.get(ino)
      if (tree && (m?.blocks ?? 0) !== i.blocks) errors.push(`inode ${ino}: block count ${i.blocks}, extents map ${m?.blocks ?? 0}`)
      if (m && m.end > Math.ceil(i.size / BLOCK_SIZE) && !orphans.has(ino)) errors.push(`inode ${ino}: extent beyond size ${i.size}`)
    }
    return { errors, inodes: inodes.size, dirents, blocks }
  } finally {
    db.close()
  }
}
