// `foliofs fsck --repair`: fix what fsck found that can be fixed safely,
// and leave everything else as it is (reported).
//
// Fixed (the findings carrying a `fix`, fsck.ts):
//   * an entry pointing to a missing inode (or in a missing directory):
//     the entry is removed;
//   * an inode no entry reaches (not in `orphans`): linked into
//     /lost+found as "#INO" (created when needed), like e2fsck; nothing is
//     freed, so nothing is lost;
//   * a wrong link count, block count or size (size too small for its
//     written extents): set to what the entries and extents say. A size
//     raised to the end of the written extents shows the bytes those
//     extents hold, the old last block's bytes past the old size included:
//     the likeliest cause is a write whose size update was lost, and those
//     bytes are that write's. They are kept, not zeroed (zeroing only the
//     old last block's tail would keep the rest of such a write and cut
//     its middle; nothing is lost either way, and fsck named the file);
//   * an inode row with a field no inode may have: a negative or
//     non-integer link count, block count or size is set as above (a size
//     to what the inode holds); a mode without a valid file type becomes a
//     directory when entries are in it, a symlink when it has a target,
//     else a regular file, owner-only (0700, 0777, 0600);
//   * an entry with a name the kernel can neither create nor look up ('.',
//     '..', empty, with '/' or NUL, over 255 bytes): renamed to "#INO" in
//     its directory ("#INO.1" ... when taken), so the file stays
//     reachable; only an extra name of a directory (one naming the root,
//     or a directory that has a good name) is removed instead;
//   * extended attributes of an inode that does not exist: removed;
//   * free-space accounting: extents of inodes that do not exist are
//     unmapped, and the free-space map is rebuilt as exactly the blocks no
//     extent maps.
//   * a damaged extent tree (nodes failing their checks): rebuilt from its
//     intact leaves first (btree/salvage.ts); what a damaged leaf mapped is
//     lost (those file ranges become holes, their blocks free) and the
//     rounds below then set those files' block counts. Without this a
//     file mapped by a damaged node could never be deleted: a damaged
//     image is only ever mounted read-only.
// Not fixed: damaged SQLite tables, data checksum mismatches, anything
// without a `fix`. When the SQLite file is damaged, nothing is repaired at
// all: writing to such an image could make it worse.
//
// Repairs run in one SQLite transaction per round on a read-write open
// (validated first, exclusive: a mounted image is refused), then fsck runs
// again; a round can make the next one's work visible (a directory linked
// into lost+found makes its children reachable), so up to MAX_ROUNDS.
import { EXIT, ImageError, nowTime, openImage, ROOT_INO, uncleanImage } from './image'
import { punchFree } from './compact'
import { fsck, TYPE_NAMES, type Finding, type FsckReport } from './fsck'
import { ExtentTree, lockrestartDoSync, salvageExtentTree, transGet } from './btree'
import { dropJournalRow } from './journal'

const MAX_ROUNDS = 3
const LOST_FOUND = 'lost+found'

export interface RepairResult { report: FsckReport, repaired: string[], refused: string | null }

/** the first finding matching re, or null */
const finding = (report: FsckReport, re: RegExp): string | null => report.findings.find(x => re.test(x.what))?.what ?? null
/** SQLite damage: nothing may be written, not even a salvaged tree */
const tableDamage = (report: FsckReport): string | null => finding(report, /^table '.*' is damaged|not checked/)
/** SQLite damage beyond indexes out of step (those REINDEX rebuilds; what read through them may be "not checked" until then) */
const rowDamage = (report: FsckReport): string | null => finding(report, /^table '.*' is damaged(?!.*: its index only$)/)
/** extent tree nodes failing their checks (salvaged first; nothing else is written over them) */
const treeDamage = (report: FsckReport): string | null => finding(report, /^extent tree: (?!space accounting|free space)|extents unreadable/)

export function repairImage (image: string, opts: { verifyData?: boolean } = {}): RepairResult {
  const unclean = uncleanImage(image)
  const result = repairRounds(image, opts)
  // a crash left the image unclean (a -wal with frames): the repair's
  // read-write opens close it cleanly, and the next mount would not redo
  // the punches the crash left undone, so they are done here
  if (unclean && result.repaired.length > 0 && result.refused === null) punchFree(image)
  return result
}

function repairRounds (image: string, opts: { verifyData?: boolean }): RepairResult {
  let report = fsck(image, opts)
  const repaired: string[] = []
  const reindex = report.findings.filter(f => f.fix?.kind === 'reindex')
  if (reindex.length > 0 && rowDamage(report) === null) { // indexes first: the other checks read through them
    repaired.push(...rebuildIndexes(image, reindex, report))
    report = fsck(image, opts)
  }
  const vacuum = report.findings.filter(f => f.fix?.kind === 'vacuum')
  if (vacuum.length > 0 && rowDamage(report) === null) { // before anything writes: a commit taking a page from a damaged free list fails
    repaired.push(...rebuildDatabase(image, vacuum, report))
    report = fsck(image, opts)
  }
  const refuse = (why: string): RepairResult => ({ report, repaired, refused: `the image has damage repair cannot fix (${why})` })
  if (treeDamage(report) !== null) {
    const why = tableDamage(report)
    if (why) return refuse(why)
    repaired.push(...salvageTree(image))
    report = fsck(image, opts)
  }
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const fixes = report.findings.filter(f => f.fix)
    if (fixes.length === 0) break
    const why = tableDamage(report) ?? treeDamage(report) // damage repair must not write over
    if (why) return refuse(why)
    repaired.push(...applyFixes(image, fixes, report))
    report = fsck(image, opts)
  }
  return { report, repaired, refused: null }
}

/** REINDEX the tables whose indexes alone are out of step (their rows read fine): report lines */
function rebuildIndexes (image: string, fixes: Finding[], report: FsckReport): string[] {
  const img = openImage(image, { check: false }) // its tables fail the check: that is what this repairs
  try {
    const done: string[] = []
    for (const f of fixes) {
      if (f.fix?.kind !== 'reindex') continue
      img.db.exec(`REINDEX "${f.fix.table.replace(/"/g, '""')}"`)
      done.push(`${report.errors[report.findings.indexOf(f)]}: indexes rebuilt from the table`)
    }
    img.db.pragma('journal_mode = DELETE')
    return done
  } finally {
    img.db.close()
  }
}

/** VACUUM: every table copied into fresh pages, with a free page list of its own (a damaged one: freePageProblems); report lines */
function rebuildDatabase (image: string, fixes: Finding[], report: FsckReport): string[] {
  const img = openImage(image, { check: false }) // the mount's check refuses what this repairs
  try {
    img.db.exec('VACUUM')
    img.db.pragma('journal_mode = DELETE')
    return fixes.map(f => `${report.errors[report.findings.indexOf(f)]}: database rebuilt (VACUUM)`)
  } finally {
    img.db.close()
  }
}

/** rebuild the extent tree from its intact leaves (btree/salvage.ts); what was done, as report lines */
function salvageTree (image: string): string[] {
  const img = openImage(image, { check: false }) // a damaged free page list is repaired after (VACUUM): the mount check would refuse it
  try {
    const r = salvageExtentTree(img.db, { pageSize: 4096, totalBlocks: img.sb.capacityBlocks })
    img.db.pragma('journal_mode = DELETE')
    const lines = r.dropped.map(d => `extent tree node ${d.id} (${d.problem}): dropped; the file ranges it mapped are now holes`)
    if (r.overlapping) lines.push(`${r.overlapping} overlapping extents dropped`)
    lines.push(`extent tree rebuilt from ${r.leaves} intact leaves (${r.extents} extents); free-space map rebuilt: ${r.freeBefore} free blocks recorded, ${r.freeAfter} really free`)
    return lines
  } catch (e) {
    if (e instanceof ImageError) throw e
    throw new ImageError(`${image}: repair failed, the extent tree was not changed: ${(e as Error).message}`, EXIT.CORRUPT)
  } finally {
    img.db.close()
  }
}

function applyFixes (image: string, fixes: Finding[], report: FsckReport): string[] {
  // fsck has just checked the whole file, and damaged tables stopped the
  // repair (tableDamage); a damaged free page list is one of the fixes
  // (VACUUM), which the mount's check would refuse
  const img = openImage(image, { check: false })
  const db = img.db
  const done: string[] = []
  const line = (f: Finding, what: string): void => { done.push(`${report.errors[report.findings.indexOf(f)]}: ${what}`) }
  try {
    const t = nowTime()
    db.transaction(() => {
      let lostFound: number | null = null
      const lf = (): number => {
        if (lostFound !== null) return lostFound
        const have = db.prepare('SELECT ino FROM dirents WHERE parent = ? AND name = ?').pluck().get(ROOT_INO, LOST_FOUND) as number | undefined
        if (have !== undefined) return (lostFound = have)
        const r = db.prepare(`INSERT INTO inodes (mode, uid, gid, nlink, parent, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns)
                              VALUES (?, 0, 0, 2, ?, ?, ?, ?, ?, ?, ?)`).run(0o040700, ROOT_INO, t.sec, t.nsec, t.sec, t.nsec, t.sec, t.nsec)
        lostFound = Number(r.lastInsertRowid)
        db.prepare('INSERT INTO dirents (parent, name, ino) VALUES (?, ?, ?)').run(ROOT_INO, LOST_FOUND, lostFound)
        db.prepare('UPDATE inodes SET nlink = nlink + 1 WHERE ino = ?').run(ROOT_INO)
        done.push(`created /${LOST_FOUND}`)
        return lostFound
      }
      const named = db.prepare('SELECT 1 FROM dirents WHERE ino = ? LIMIT 1').pluck()
      const taken = db.prepare('SELECT 1 FROM dirents WHERE parent = ? AND name = ?').pluck()
      /** a name for inode ino in directory dir that no entry there has: "#INO", else "#INO.1", ... */
      const freeName = (dir: number, ino: number): string => {
        for (let k = 0; ; k++) {
          const name = k === 0 ? `#${ino}` : `#${ino}.${k}`
          if (taken.get(dir, name) === undefined) return name
        }
      }
      for (const f of fixes) {
        const x = f.fix
        if (!x) continue
        switch (x.kind) {
          case 'dangling':
            db.prepare('DELETE FROM dirents WHERE parent = ? AND name = ?').run(x.parent, x.name)
            line(f, 'entry removed')
            break
          case 'nlink':
            db.prepare('UPDATE inodes SET nlink = ? WHERE ino = ?').run(x.nlink, x.ino)
            line(f, `nlink set to ${x.nlink}`)
            break
          case 'blocks':
            db.prepare('UPDATE inodes SET blocks = ? WHERE ino = ?').run(x.blocks, x.ino)
            line(f, `block count set to ${x.blocks}`)
            break
          case 'size':
            db.prepare('UPDATE inodes SET size = ? WHERE ino = ?').run(x.size, x.ino)
            line(f, `size set to ${x.size}`)
            break
          case 'unreachable': {
            if (x.cut) { // a directory of a cycle: out of it first (its old directory's nlink: the next round)
              db.prepare('DELETE FROM dirents WHERE ino = ?').run(x.ino)
            } else if (named.get(x.ino) !== undefined) break // inside an unreachable directory: reachable once its top is linked
            const dir = lf()
            const name = freeName(dir, x.ino)
            db.prepare('INSERT INTO dirents (parent, name, ino) VALUES (?, ?, ?)').run(dir, name, x.ino)
            if (x.dir) {
              db.prepare('UPDATE inodes SET parent = ? WHERE ino = ?').run(dir, x.ino)
              db.prepare('UPDATE inodes SET nlink = nlink + 1 WHERE ino = ?').run(dir)
            } else {
              db.prepare('UPDATE inodes SET nlink = 1 WHERE ino = ?').run(x.ino)
            }
            line(f, `linked as /${LOST_FOUND}/${name}`)
            break
          }
          case 'mode':
            db.prepare('UPDATE inodes SET mode = ? WHERE ino = ?').run(x.mode, x.ino)
            line(f, `mode set to 0${x.mode.toString(8)} (${TYPE_NAMES[x.mode & 0o170000] ?? 'file'})`)
            break
          case 'badname':
            if (x.drop) {
              db.prepare('DELETE FROM dirents WHERE parent = ? AND name = ?').run(x.parent, x.name)
              line(f, 'entry removed (an extra name of a directory)')
            } else {
              const name = freeName(x.parent, x.ino)
              db.prepare('UPDATE dirents SET name = ? WHERE parent = ? AND name = ?').run(name, x.parent, x.name)
              line(f, `renamed to '${name}'`)
            }
            break
          case 'xattrs':
            db.prepare('DELETE FROM xattrs WHERE ino = ?').run(x.ino)
            line(f, 'removed')
            break
          case 'orphan':
            db.prepare('DELETE FROM orphans WHERE ino = ?').run(x.ino)
            line(f, 'removed from the list')
            break
          case 'journal':
            dropJournalRow(db, x.ino, x.blk)
            line(f, 'journal block dropped')
            break
          case 'reindex': // done before the rounds (rebuildIndexes)
            break
          case 'freespace':
            break // below, with the tree
          case 'vacuum':
            break // last: VACUUM runs outside any transaction
        }
      }
    })()
    const space = fixes.filter(f => f.fix?.kind === 'freespace')
    if (space.length) {
      const tree = ExtentTree.open(db, { totalBlocks: img.sb.capacityBlocks, tolerateFreeSpace: true })
      const live = new Set(db.prepare('SELECT ino FROM inodes').pluck().all() as number[])
      const dead = new Set<number>()
      for (const e of tree.allExtents()) if (!live.has(e.ino)) dead.add(e.ino)
      for (const ino of dead) {
        lockrestartDoSync(transGet(tree), tr => { tr.deleteRange(ino, 0, Number.MAX_SAFE_INTEGER); tr.commit() })
        done.push(`extents of missing inode ${ino}: unmapped`)
      }
      const t2 = ExtentTree.open(db, { totalBlocks: img.sb.capacityBlocks, tolerateFreeSpace: true })
      const r = t2.rebuildFreeSpace()
      for (const f of space) line(f, 'free-space map rebuilt')
      done.push(`free-space map rebuilt: ${r.before} free blocks recorded, ${r.after} really free`)
    }
    db.pragma('journal_mode = DELETE')
    return done
  } catch (e) {
    if (e instanceof ImageError) throw e
    throw new ImageError(`${image}: repair failed, nothing of the failed round was written: ${(e as Error).message}`, EXIT.CORRUPT)
  } finally {
    db.close()
  }
}
