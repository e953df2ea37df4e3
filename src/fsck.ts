// Consistency check of an unmounted image, read-only: the SQLite file
// (cut short? damaged tables, one by one), then the filesystem invariants
// (links, parents, reachability, block counts, sizes), the extent tree,
// the data area (present, of this image, holding every mapped block) and,
// with verifyData, every written data block against its checksum.
//
// It reports like e2fsck: each finding names the inode and its path where
// it has them, and what is wrong. A damaged table never stops the check
// with an exception: the phases that need it are skipped with a finding,
// the others run. Only an image that cannot be opened at all (not an
// image, cut short, superblock unreadable) is an ImageError (exit 4/5).
//
// Findings that repair (fsck-repair.ts) may fix carry a `fix`; the check
// itself never writes.
import * as fs from 'fs'
import { BLOCK_SIZE, EXIT, ImageError, openImage, ROOT_INO } from './image'
import { dataAreaPath } from './dataarea'
import { DataCsums, hasCsumTable } from './datacsum'
import { crcsHere } from './crcthread'
import { freePageProblems, tableProblems } from './imagecheck'
import { journalRows } from './journal'
import { nameFromDb } from './names'
import { NAME_MAX } from './errno'
import { BtreeError, ExtentTree, EXT_UNWRITTEN, lockrestartDoSync, transGet, type Extent } from './btree'

/** what repair may do about a finding (fsck-repair.ts) */
export type Fix =
  | { kind: 'dangling', parent: number, name: string | Buffer }
  | { kind: 'nlink', ino: number, nlink: number }
  | { kind: 'blocks', ino: number, blocks: number }
  | { kind: 'size', ino: number, size: number }
  /** linked into lost+found; cut: first removed from the names it has (a directory of a cycle no entry from outside reaches) */
  | { kind: 'unreachable', ino: number, dir: boolean, cut?: boolean }
  | { kind: 'freespace' }
  | { kind: 'journal', ino: number, blk: number }
  | { kind: 'reindex', table: string }
  | { kind: 'mode', ino: number, mode: number }
  /** a name no entry may have: renamed to a free '#INO' in its directory; drop: an extra name of a directory, removed */
  | { kind: 'badname', parent: number, name: string | Buffer, ino: number, drop: boolean }
  | { kind: 'xattrs', ino: number }
  | { kind: 'orphan', ino: number }
  /** the database rebuilt (VACUUM): a damaged freelist */
  | { kind: 'vacuum' }

export interface Finding {
  ino?: number
  what: string
  fix?: Fix
}

export interface FsckReport {
  /** one line per finding, "inode N (PATH): what" (the CLI prints them) */
  errors: string[]
  findings: Finding[]
  inodes: number
  dirents: number
  blocks: number
  /** blocks in the data journal (journal.ts: replayed as dirty data at the next mount) */
  journaled: number
  /** verifyData: blocks checked against their crc, and blocks without one (written by a format-3 build) */
  verified?: number
  unverified?: number
  /** verifyData: damaged files by path */
  damaged?: string[]
}

export interface FsckOptions {
  /** read every written data block and check its crc (a scrub) */
  verifyData?: boolean
  progress?: (phase: string, done?: number, total?: number) => void
}

/** tlen: the symlink target's length in bytes, null without one */
type InodeRow = { ino: number, mode: number, nlink: number, size: number, blocks: number, parent: number, tlen: number | null }
/** fields of an inode row that can hold a value no inode may have */
type Field = 'mode' | 'nlink' | 'size' | 'blocks'
const S_IFMT = 0o170000
const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const S_IFLNK = 0o120000
/** the file types of stat(2), by their S_IFMT bits, as findings and repairs name them */
export const TYPE_NAMES: Record<number, string> = {
  0o010000: 'fifo', 0o020000: 'character device', [S_IFDIR]: 'directory', 0o060000: 'block device', [S_IFREG]: 'regular file', [S_IFLNK]: 'symlink', 0o140000: 'socket'
}
const FILE_TYPES = new Set(Object.keys(TYPE_NAMES).map(Number))
const isDir = (mode: number): boolean => (mode & S_IFMT) === S_IFDIR
const validMode = (m: unknown): boolean => Number.isInteger(m) && (m as number) >= 0 && (m as number) <= 0o177777 && FILE_TYPES.has((m as number) & S_IFMT)
const validCount = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0
const octal = (m: unknown): string => Number.isInteger(m) && (m as number) > 0 ? '0' + (m as number).toString(8) : String(m)
const msg = (e: unknown): string => (e as Error)?.message ?? String(e)

/** why no directory entry may have this name (a byte string), or null: the kernel never creates such a name, and cannot look it up */
function badName (name: string): string | null {
  if (name === '') return 'empty'
  if (name === '.' || name === '..') return 'reserved'
  if (name.includes('/')) return "contains '/'"
  if (name.includes('\0')) return 'contains NUL'
  if (name.length > NAME_MAX) return `longer than ${NAME_MAX} bytes`
  return null
}

/** paths of inodes from the entries that name them (the first name found; null when unreachable) */
class Paths {
  private readonly up = new Map<number, { parent: number, name: string }>()
  add (parent: number, name: string, ino: number): void {
    if (!this.up.has(ino)) this.up.set(ino, { parent, name })
  }

  of (ino: number): string | null {
    if (ino === ROOT_INO) return '/'
    const parts: string[] = []
    const seen = new Set<number>()
    for (let at = ino; at !== ROOT_INO;) {
      const u = this.up.get(at)
      if (!u || seen.has(at)) return null
      seen.add(at)
      parts.push(u.name)
      at = u.parent
    }
    return '/' + parts.reverse().join('/')
  }
}


/**
 * Blocks two extents map (e2fsck's multiply-claimed blocks): each file
 * reads the other's bytes, and freeing one frees the other's blocks. One
 * finding for each extent that overlaps an earlier one (by physical block).
 */
function crossLinked (claims: Array<{ pblk: number, len: number, ino: number, off: number }>, add: (what: string, ino?: number) => void): void {
  claims.sort((a, b) => a.pblk - b.pblk)
  let reach: { end: number, ino: number, off: number } | null = null // the extent reaching furthest so far
  for (const c of claims) {
    if (reach && c.pblk < reach.end) {
      add(`extent at ${c.off} maps blocks ${c.pblk}..${Math.min(c.pblk + c.len, reach.end) - 1}, which inode ${reach.ino} maps too (its extent at ${reach.off})`, c.ino)
    }
    if (!reach || c.pblk + c.len > reach.end) reach = { end: c.pblk + c.len, ino: c.ino, off: c.off }
  }
}

/**
 * Unreachable inodes that repair must cut loose before it links them into
 * lost+found. Repair links only the tops of what the root does not reach,
 * inodes no entry names (what is below them comes back with them); a cycle
 * of directories (d1 -> d2 -> d1) cut off from the root has no top. One
 * directory of each such cycle is chosen, so that linking it, and what is
 * below it, reaches every unreachable inode.
 */
function cycleCuts (inodes: Map<number, { mode: number }>, seen: Set<number>, orphans: Set<number>,
  links: Map<number, number>, children: Map<number, number[]>): Set<number> {
  const covered = new Set<number>()
  const cover = (top: number): void => {
    const stack = [top]
    covered.add(top)
    while (stack.length) {
      for (const c of children.get(stack.pop() as number) ?? []) {
        if (seen.has(c) || covered.has(c)) continue
        covered.add(c)
        stack.push(c)
      }
    }
  }
  const lost = [...inodes.keys()].filter(ino => !seen.has(ino) && !orphans.has(ino))
  for (const ino of lost) if ((links.get(ino) ?? 0) === 0) cover(ino) // tops: repair links these as they are
  const cuts = new Set<number>()
  for (const ino of lost) {
    if (covered.has(ino) || !isDir(inodes.get(ino)?.mode ?? 0)) continue
    cuts.add(ino)
    cover(ino)
  }
  return cuts
}

export function fsck (image: string, opts: FsckOptions | FsckOptions['progress'] = {}): FsckReport {
  const o: FsckOptions = typeof opts === 'function' ? { progress: opts } : opts
  const progress = o.progress
  const img = openImage(image, { readonly: true, check: false })
  const db = img.db
  const findings: Finding[] = []
  const paths = new Paths()
  const add = (what: string, ino?: number, fix?: Fix): void => { findings.push({ ino, what, fix }) }
  const report: FsckReport = { errors: [], findings, inodes: 0, dirents: 0, blocks: 0, journaled: 0 }
  try {
    progress?.('sqlite integrity check')
    const damaged = new Set<string>()
    for (const p of tableProblems(db, false)) {
      damaged.add(p.table)
      const what = `table '${p.table}' is damaged: ${p.first}${p.count > 1 ? ` (and ${p.count - 1} more problems)` : ''}`
      // only its index is out of step: rebuilt from the table, which read fine
      if (p.indexOnly) add(`${what}: its index only`, undefined, { kind: 'reindex', table: p.table })
      else add(what)
    }
    // format 4 on keeps a crc of every written block (datacsum.ts); a
    // read-write mount makes the table again, empty: blocks read unverified
    if (img.sb.version >= 4 && !hasCsumTable(db)) add("table 'data_csums' is missing: data blocks are not verified (a read-write mount makes it again, empty)")
    // the database's free pages: only the whole-database check walks them
    // (the per-table one above does not), and a damaged freelist passes
    // every read, then fails the first commit that reuses a page
    progress?.('sqlite free pages')
    const free = freePageProblems(db)
    if (free) add(`database free pages are damaged: ${free.first}${free.count > 1 ? ` (and ${free.count - 1} more problems)` : ''}`, undefined, { kind: 'vacuum' })
    /** run a phase that reads tables; a damaged one ends the phase with a finding, not an exception */
    const phase = (what: string, fn: () => void): boolean => {
      try { fn(); return true } catch (e) { add(`${what} not checked: ${msg(e)}`); return false }
    }

    progress?.('inodes and entries')
    const inodes = new Map<number, InodeRow>()
    // A row with a field no inode may have is kept all the same (ino is the
    // rowid, always an integer): its entries, extents and attributes are its
    // own, and it must not count as missing. Each such field is reported by
    // the check that knows its right value, with that value as the fix
    // (mode: below; nlink: from the entries; blocks and size: from the
    // extents); what no check could settle is reported at the end.
    const malformed = new Map<number, Set<Field>>()
    const settled = (ino: number, f: Field): boolean => malformed.get(ino)?.delete(f) ?? false
    const inodesOk = phase('inodes', () => {
      for (const r of db.prepare('SELECT ino, mode, nlink, size, blocks, parent, length(CAST(target AS BLOB)) AS tlen FROM inodes').iterate() as Iterable<InodeRow>) {
        const bad = new Set<Field>()
        if (!validMode(r.mode)) bad.add('mode')
        if (!validCount(r.nlink)) bad.add('nlink')
        if (!validCount(r.size)) bad.add('size')
        if (!validCount(r.blocks)) bad.add('blocks')
        if (bad.size) malformed.set(r.ino, bad)
        inodes.set(r.ino, r)
      }
    })
    report.inodes = inodes.size
    const orphans = new Set<number>()
    phase('orphan list', () => { for (const i of db.prepare('SELECT ino FROM orphans').pluck().all() as number[]) orphans.add(i) })
    const links = new Map<number, number>()
    const subdirs = new Map<number, number>()
    const children = new Map<number, number[]>()
    const direntsOk = inodesOk && phase('directory entries', () => {
      const rows = db.prepare('SELECT parent, name, ino FROM dirents').all() as Array<{ parent: number, name: string | Buffer, ino: number }>
      // A mode without a valid file type: the inode is what the rest of the
      // image says it is, and checked as that from here on. A directory when
      // entries name it as theirs (or it is the root), a symlink when it has
      // a target, else a regular file (which keeps any data it has); the
      // permissions of such a mode are no better than its type: owner-only.
      const hasEntries = new Set(rows.map(d => d.parent))
      for (const [ino, bad] of malformed) {
        const i = inodes.get(ino)
        if (!i || !bad.has('mode')) continue
        const mode = ino === ROOT_INO || hasEntries.has(ino) ? S_IFDIR | 0o700 : i.tlen !== null ? S_IFLNK | 0o777 : S_IFREG | 0o600
        add(`mode ${octal(i.mode)} is no file type`, ino, { kind: 'mode', ino, mode })
        settled(ino, 'mode')
        i.mode = mode
      }
      /** entries with a good name in an existing directory, by inode */
      const goodNames = new Map<number, number>()
      for (const d of rows) {
        const name = nameFromDb(d.name)
        if (!inodes.has(d.ino) || badName(name) !== null) continue
        paths.add(d.parent, name, d.ino)
        if (inodes.has(d.parent)) goodNames.set(d.ino, (goodNames.get(d.ino) ?? 0) + 1)
      }
      /** directories whose only name, a bad one, repair renames */
      const renamedDirs = new Set<number>()
      for (const d of rows) {
        report.dirents++
        const name = nameFromDb(d.name)
        const bad = badName(name)
        const where = `entry ${bad === null ? `'${name}'` : JSON.stringify(name)} in ${paths.of(d.parent) ?? `directory ${d.parent}`}`
        const p = inodes.get(d.parent)
        const c = inodes.get(d.ino)
        if (!p) { add(`${where}: its directory ${d.parent} is missing`, d.ino, { kind: 'dangling', parent: d.parent, name: d.name }); continue }
        if (!isDir(p.mode)) add(`${where}: ${d.parent} is not a directory`, d.ino)
        if (!c) { add(`${where} points to missing inode ${d.ino}`, undefined, { kind: 'dangling', parent: d.parent, name: d.name }); continue }
        if (bad !== null) {
          // renamed, so the file stays reachable; but a directory has one
          // name: a bad one besides its good one (a '..' naming the parent,
          // say), one naming the root, or one inside the directory itself
          // (a '.': renamed, it would be a loop; lost+found takes the
          // directory if nothing else names it) is removed, not counted here
          const drop = isDir(c.mode) && (d.ino === ROOT_INO || d.ino === d.parent || (goodNames.get(d.ino) ?? 0) > 0 || renamedDirs.has(d.ino))
          add(`${where}: bad name (${bad})`, d.ino, { kind: 'badname', parent: d.parent, name: d.name, ino: d.ino, drop })
          if (drop) continue
          if (isDir(c.mode)) renamedDirs.add(d.ino)
        }
        links.set(d.ino, (links.get(d.ino) ?? 0) + 1)
        if (isDir(c.mode)) {
          subdirs.set(d.parent, (subdirs.get(d.parent) ?? 0) + 1)
          if (c.parent !== d.parent) add(`directory has parent ${c.parent} but is linked from ${d.parent}`, d.ino)
        }
        const list = children.get(d.parent) ?? []
        list.push(d.ino)
        children.set(d.parent, list)
      }
    })

    // the extent tree: structure, then what it maps against inodes
    let tree: ExtentTree | null = null
    let treeOk = false
    phase('extent tree', () => {
      let t: ExtentTree
      try {
        t = ExtentTree.open(db, { totalBlocks: img.sb.capacityBlocks, tolerateFreeSpace: true })
      } catch (e) {
        if (!(e instanceof BtreeError)) throw e
        add(`extent tree: ${e.message}`) // its meta: damage the salvage rebuilds, like a damaged node
        return
      }
      const errs = t.verify()
      tree = t // a tree whose tables cannot even be walked is not looked into inode by inode
      const space = (e: string): boolean => /space accounting|free space/.test(e)
      treeOk = !errs.some(e => !space(e))
      // with nodes unreadable the accounting cannot add up: not a finding of its own
      for (const e of errs) if (treeOk || !space(e)) add(`extent tree: ${e}`, undefined, space(e) ? { kind: 'freespace' } : undefined)
    })
    // end: past the last written block (unwritten extents, from fallocate,
    // may lie past the size with KEEP_SIZE)
    const mapped = new Map<number, { blocks: number, end: number }>()
    const written = new Map<number, Extent[]>()
    // openImage checked the data area's header; every written block must lie
    // inside it (unwritten ones are never read, so the area need not cover them)
    const areaBlocks = Math.floor(fs.statSync(dataAreaPath(image)).size / BLOCK_SIZE)
    const unreadable = new Set<number>()
    /** every extent, for blocks mapped twice */
    const claims: Array<{ pblk: number, len: number, ino: number, off: number }> = []
    if (tree) {
      const t: ExtentTree = tree
      let total = 0
      let checked = 0
      for (const ino of inodes.keys()) {
        progress?.('extents of inodes', checked++, inodes.size)
        const m = { blocks: 0, end: 0 }
        let ex: Extent[]
        try {
          ex = lockrestartDoSync(transGet(t), tr => tr.extentsIn(ino, 0, Number.MAX_SAFE_INTEGER))
        } catch (e) {
          unreadable.add(ino)
          add(`extents unreadable: ${msg(e)}`, ino)
          continue
        }
        const w: Extent[] = []
        for (const e of ex) {
          m.blocks += e.len
          claims.push({ pblk: e.pblk, len: e.len, ino, off: e.off })
          if (e.flags & ~EXT_UNWRITTEN) add(`extent at ${e.off} has unknown flags 0x${e.flags.toString(16)}`, ino)
          if (e.pblk < 1) add(`extent at ${e.off} maps the data area's header`, ino)
          if (e.flags & EXT_UNWRITTEN) continue
          w.push(e)
          m.end = Math.max(m.end, e.off + e.len)
          if (e.pblk + e.len > areaBlocks) add(`extent at ${e.off} maps blocks past the end of the data area (${e.pblk + e.len} > ${areaBlocks})`, ino)
        }
        if (w.length) written.set(ino, w)
        if (m.blocks) mapped.set(ino, m)
        total += m.blocks
      }
      report.blocks = total
      crossLinked(claims, add)
      if (treeOk && inodesOk && unreadable.size === 0) {
        const inUse = t.usedBlocks()
        if (total !== inUse) add(`space accounting: ${total} blocks mapped by inodes, ${inUse} in use`, undefined, { kind: 'freespace' })
      }
    }

    if (inodesOk && direntsOk) {
      progress?.('links, reachability')
      const seen = new Set<number>([ROOT_INO])
      const stack = [ROOT_INO]
      while (stack.length) {
        for (const c of children.get(stack.pop() as number) ?? []) {
          if (seen.has(c)) continue
          seen.add(c)
          stack.push(c)
        }
      }
      const cuts = cycleCuts(inodes, seen, orphans, links, children)
      for (const [ino, i] of inodes) {
        const dir = isDir(i.mode)
        const expect = dir ? 2 + (subdirs.get(ino) ?? 0) : (links.get(ino) ?? 0)
        const reachable = seen.has(ino) || orphans.has(ino)
        if (!reachable) add(`${dir ? 'directory' : 'inode'} is not reachable from the root${cuts.has(ino) ? ' (in a cycle of directories)' : ''}`, ino, { kind: 'unreachable', ino, dir, cut: cuts.has(ino) })
        // an orphan (deleted while open, or mid-truncate) has nlink 0 and no
        // name; one that an entry still names would be freed under it
        else if (i.nlink !== expect && !(orphans.has(ino) && i.nlink === 0 && !links.has(ino))) {
          add(`nlink ${String(i.nlink)}, expected ${expect}`, ino, { kind: 'nlink', ino, nlink: expect })
          settled(ino, 'nlink')
        }
        if (dir && ino !== ROOT_INO && reachable && (links.get(ino) ?? 0) !== 1 && !orphans.has(ino)) add(`directory has ${links.get(ino) ?? 0} names`, ino)
      }
    }
    if (tree && inodesOk) {
      for (const [ino, i] of inodes) {
        if (unreadable.has(ino)) continue
        const m = mapped.get(ino)
        if ((m?.blocks ?? 0) !== i.blocks) {
          add(`block count ${String(i.blocks)}, extents map ${m?.blocks ?? 0}`, ino, { kind: 'blocks', ino, blocks: m?.blocks ?? 0 })
          settled(ino, 'blocks')
        }
        const type = i.mode & S_IFMT
        if (!malformed.get(ino)?.has('mode') && type === S_IFLNK && i.tlen === null) add('symlink has no target', ino)
        if (m && type !== S_IFREG && validMode(i.mode)) add(`${TYPE_NAMES[type]} maps ${m.blocks} data block${m.blocks > 1 ? 's' : ''}`, ino)
        if (malformed.get(ino)?.has('size')) continue // below, with the journal
        if (m && m.end > Math.ceil(i.size / BLOCK_SIZE) && !orphans.has(ino)) add(`extent beyond size ${i.size}`, ino, { kind: 'size', ino, size: m.end * BLOCK_SIZE })
      }
    }

    /** per inode, past the last block the data journal holds for it */
    const journalEnd = new Map<number, number>()
    let journalOk = false
    if (inodesOk) {
      journalOk = phase('data journal', () => {
        for (const r of journalRows(db)) {
          report.journaled++
          const i = inodes.get(r.ino)
          const badSize = malformed.get(r.ino)?.has('size') ?? false // set to cover the journal's blocks (below)
          const bad = !i ? `of missing inode ${r.ino}`
            : (i.mode & S_IFMT) !== S_IFREG ? 'of an inode that is not a regular file'
              : !badSize && r.blk * BLOCK_SIZE >= i.size ? `past the size ${i.size}`
                : r.len !== BLOCK_SIZE ? `of ${r.len} bytes` : null
          if (bad) add(`data journal: block ${r.blk} ${bad}`, i ? r.ino : undefined, { kind: 'journal', ino: r.ino, blk: r.blk })
          else journalEnd.set(r.ino, Math.max(journalEnd.get(r.ino) ?? 0, r.blk + 1))
        }
      })
      // a size that is no size: what the inode holds. A regular file's
      // written extents and journaled blocks (whole blocks: its last bytes
      // are kept, as with a size too small above), a symlink's target; 0
      // for the others
      for (const [ino, bad] of malformed) {
        const i = inodes.get(ino)
        if (!i || !bad.has('size') || !tree || unreadable.has(ino) || !journalOk) continue
        const type = i.mode & S_IFMT
        const size = type === S_IFREG ? Math.max(mapped.get(ino)?.end ?? 0, journalEnd.get(ino) ?? 0) * BLOCK_SIZE
          : type === S_IFLNK ? i.tlen ?? 0 : 0
        add(`size ${String(i.size)} is no size`, ino, { kind: 'size', ino, size })
        settled(ino, 'size')
      }
      phase('extended attributes', () => {
        for (const r of db.prepare('SELECT ino, count(*) AS n FROM xattrs GROUP BY ino').iterate() as Iterable<{ ino: number, n: number }>) {
          if (!inodes.has(r.ino)) add(`${r.n} extended attribute${r.n > 1 ? 's' : ''} of missing inode ${r.ino}`, undefined, { kind: 'xattrs', ino: r.ino })
        }
      })
      // an orphan row outlives its inode only when the image was edited
      // (the reaper drops both in one commit); mount ignores such a row
      for (const ino of orphans) if (!inodes.has(ino)) add(`orphan list names missing inode ${ino}`, undefined, { kind: 'orphan', ino })
    }
    // fields no check above could give a right value (its phase did not run)
    for (const [ino, bad] of malformed) {
      const i = inodes.get(ino)
      for (const f of bad) add(`malformed inode row: ${f} ${f === 'mode' ? octal(i?.mode) : String(i?.[f])}`, ino)
    }

    if (o.verifyData) phase('data checksums', () => verifyData(image, db, written, areaBlocks, report, add, progress))

    report.errors = findings.map(f => describe(f, paths))
    return report
  } finally {
    db.close()
  }

  function describe (f: Finding, p: Paths): string {
    if (f.ino === undefined) return f.what
    const path = p.of(f.ino)
    return `inode ${f.ino}${path ? ` (${path})` : ''}: ${f.what}`
  }

  /** the scrub: read every written block, compare with its crc; damaged files listed by path */
  function verifyData (image: string, db: ReturnType<typeof openImage>['db'], written: Map<number, Extent[]>, areaBlocks: number,
    report: FsckReport, add: (what: string, ino?: number) => void, progress?: FsckOptions['progress']): void {
    const csums = new DataCsums(db)
    const fd = fs.openSync(dataAreaPath(image), 'r')
    const CHUNK = 256
    const bufs = Array.from({ length: CHUNK }, () => Buffer.alloc(BLOCK_SIZE))
    const total = [...written.values()].reduce((n, ex) => n + ex.reduce((k, e) => k + e.len, 0), 0)
    let done = 0
    report.damaged = []
    try {
      for (const [ino, ex] of written) {
        const bad: number[] = []
        for (const e of ex) {
          for (let k = 0; k < e.len; k += CHUNK) {
            progress?.('data blocks', done, total)
            const n = Math.min(CHUNK, e.len - k)
            const pblk = e.pblk + k
            if (pblk + n > areaBlocks) { done += n; continue } // reported above
            const part = bufs.slice(0, n)
            const got = fs.readvSync(fd, part, pblk * BLOCK_SIZE)
            if (got < n * BLOCK_SIZE) { for (let b = Math.floor(got / BLOCK_SIZE); b < n; b++) bad.push(e.off + k + b); done += n; continue }
            for (const i of csums.verify(pblk, crcsHere(part)).bad) bad.push(e.off + k + i)
            done += n
          }
        }
        if (bad.length) {
          add(`data checksum mismatch in ${bad.length} block${bad.length > 1 ? 's' : ''} (first: block ${bad[0]}, byte ${bad[0] * BLOCK_SIZE}); reads of ${bad.length > 1 ? 'them' : 'it'} fail with EIO`, ino)
          report.damaged.push(paths.of(ino) ?? `inode ${ino} (no path)`)
        }
      }
    } finally {
      fs.closeSync(fd)
    }
    report.verified = csums.stats.verifiedBlocks
    report.unverified = csums.stats.unverifiedBlocks
  }
}

/** fsck for the CLI: anything unexpected is a one-line corrupt-image error, never a stack trace */
export function fsckOrCorrupt (image: string, opts: FsckOptions): FsckReport {
  try {
    return fsck(image, opts)
  } catch (e) {
    if (e instanceof ImageError) throw e
    throw new ImageError(`${image}: corrupt image (${msg(e)})`, EXIT.CORRUPT)
  }
}
