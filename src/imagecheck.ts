// Checks of the SQLite file under an image that SQLite itself does not
// make, or makes in a form users cannot read: a file cut short, and
// damaged tables named one by one (integrity_check of the whole database
// stops at a damaged root page with "database disk image is malformed",
// and otherwise prints a line per bad cell: about 100 for one bad page).
//
// Misuse: truncation() on an image with a non-empty -wal says nothing (the
// WAL may legitimately hold pages past the end of the file and a header
// newer than it), so it must run before anything replays or checkpoints.
import * as fs from 'fs'
import type Database from 'better-sqlite3'

/** the SQLite header fields truncation() reads */
const HEADER_BYTES = 100

/**
 * Why the file at path is shorter than the database it holds, or null:
 * its size is not a whole number of pages, or is below the page count the
 * header records (when that count is valid: SQLite's "version-valid-for"
 * equals the change counter).
 */
export function truncation (path: string): string | null {
  let walBytes = 0
  try { walBytes = fs.statSync(`${path}-wal`).size } catch { /* no WAL */ }
  if (walBytes > 0) return null
  const size = fs.statSync(path).size
  const h = Buffer.alloc(HEADER_BYTES)
  const fd = fs.openSync(path, 'r')
  try { if (fs.readSync(fd, h, 0, HEADER_BYTES, 0) < HEADER_BYTES) return `file is ${size} bytes, shorter than an SQLite header` } finally { fs.closeSync(fd) }
  const raw = h.readUInt16BE(16)
  const pageSize = raw === 1 ? 65536 : raw
  if (pageSize < 512 || (pageSize & (pageSize - 1)) !== 0) return null // not ours to judge: SQLite refuses it
  const pages = h.readUInt32BE(28)
  const valid = h.readUInt32BE(92) === h.readUInt32BE(24)
  if (size % pageSize !== 0) return `file is ${size} bytes, not a whole number of ${pageSize}-byte pages${valid ? ` (the header says ${pages} pages, ${pages * pageSize} bytes)` : ''}`
  if (valid && size < pages * pageSize) return `file is ${size} bytes, the header says ${pages} pages (${pages * pageSize} bytes)`
  return null
}

export interface TableProblem {
  table: string
  /** how many problems SQLite listed (1 when the table could not be read at all) */
  count: number
  /** SQLite's first message */
  first: string
  /** every problem is an index out of step with its table (REINDEX rebuilds it from the table; fsck --repair does) */
  indexOnly: boolean
}

/** SQLite's messages for an index that does not match its table (the table itself read fine) */
const INDEX_ONLY = /^(row \d+ missing from index \S+|wrong # of entries in index \S+|non-unique entry in index \S+)$/

/**
 * SQLite's check, one table at a time (with its indexes): what is wrong
 * with each damaged table. quick (what mount runs) uses quick_check, which
 * skips the index/table cross-checks, except on tables that have an index:
 * a damaged index (dirents_by_ino) otherwise went unnoticed, and names
 * resolved to the wrong files on a read-write mount. Those few tables get
 * the full check (dirents of 100k files: ~20 ms more here, warm). fsck
 * runs the full integrity_check everywhere.
 */
export function tableProblems (db: Database.Database, quick: boolean, onlyIndexed = false): TableProblem[] {
  const out: TableProblem[] = []
  let tables: string[]
  try {
    tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rootpage").pluck().all() as string[]
  } catch (e) {
    return [{ table: 'sqlite_master', count: 1, first: (e as Error).message, indexOnly: false }]
  }
  let indexed = new Set<string>()
  try {
    indexed = new Set(db.prepare("SELECT DISTINCT tbl_name FROM sqlite_master WHERE type = 'index'").pluck().all() as string[])
  } catch { /* sqlite_master was readable above; checked per table below anyway */ }
  for (const t of tables) {
    if (onlyIndexed && !indexed.has(t)) continue
    const pragma = quick && !indexed.has(t) ? 'quick_check' : 'integrity_check'
    try {
      const rows = db.prepare(`PRAGMA ${pragma}("${t.replace(/"/g, '""')}")`).pluck().all() as string[]
      // a row may carry several lines, the first naming the database
      const bad = rows.flatMap(r => r.split('\n')).filter(r => r !== 'ok' && !/^\*\*\* in database/.test(r))
      if (bad.length) out.push({ table: t, count: bad.length, first: bad[0], indexOnly: bad.every(r => INDEX_ONLY.test(r)) })
    } catch (e) {
      out.push({ table: t, count: 1, first: (e as Error).message, indexOnly: false })
    }
  }
  return out
}

/**
 * What SQLite's whole-database check finds wrong with the pages no table
 * holds: the freelist, pages nothing uses, the auto-vacuum pointer map.
 * tableProblems checks table by table, which skips them all. Reads every
 * page (fsck only); null when they are sound, or when the check cannot
 * run (a damage tableProblems reports).
 */
export function freePageProblems (db: Database.Database): FreePageProblem | null {
  const bad = wholeQuickCheck(db)
  return bad === null ? null : freeLines(bad)
}

export interface FreePageProblem { first: string, count: number }

/** the lines of SQLite's whole-database quick_check that are problems ([] when sound), or null when it cannot run */
function wholeQuickCheck (db: Database.Database): string[] | null {
  try {
    const rows = db.prepare('PRAGMA quick_check').pluck().all() as string[]
    return rows.flatMap(r => r.split('\n')).filter(r => r !== 'ok')
  } catch {
    return null
  }
}

function freeLines (bad: string[]): FreePageProblem | null {
  const free = bad.filter(r => /freelist|never used|pointer map|ptrmap/i.test(r))
  return free.length ? { first: free[0], count: free.length } : null
}

/**
 * What mount checks: the whole database's quick_check (every page once,
 * the free page list too), then the full check of the tables that have an
 * index (see tableProblems). Only when the quick check finds something
 * does it go table by table, to name the damaged ones. A damaged free page
 * list harms only a writer: SQLite fails the first commit that takes a
 * page from it, and every one after (the caller refuses read-write).
 */
export function mountProblems (db: Database.Database): { tables: TableProblem[], free: FreePageProblem | null } {
  const bad = wholeQuickCheck(db)
  if (bad !== null && bad.length === 0) return { tables: tableProblems(db, true, true), free: null }
  return { tables: tableProblems(db, true), free: bad === null ? null : freeLines(bad) }
}

/** one line for a list of damaged tables */
export function describeProblems (ps: TableProblem[]): string {
  return ps.map(p => `table '${p.table}': ${p.first}${p.count > 1 ? ` (and ${p.count - 1} more)` : ''}`).join('; ')
}
