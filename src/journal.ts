// The data journal (format 5): an fsync of a few dirty blocks makes them
// durable in SQLite's WAL instead of the data area.
//
// Why: the ordered writeback an fsync otherwise runs costs two syncs in a
// row, the data area's (after a copy-on-write write into blocks the host
// has never allocated: its own journal commit) and then the WAL's (the
// mapping). A database-like workload (4 KiB pwrite + fsync) spends most of
// its time there. Journaled, the blocks' bytes ride in the same SQLite
// transaction as the inode's size and times, and one WAL sync covers both.
// The folios stay dirty: writeback writes them to the data area later,
// with everything else, and its commit drops their journal rows.
//
// On disk:
//   data_journal(ino INTEGER, blk INTEGER, data BLOB, PRIMARY KEY (ino, blk))
//   a row holds the whole 4 KiB block blk of inode ino as it was fsynced.
//   A rowid table: its key lives in a separate index of small records. The
//   first images had it WITHOUT ROWID, where every key comparison of a
//   search reads the whole 4 KiB record out of its overflow page (~7 reads
//   per row put with a few thousand rows); a read-write open converts such
//   a table (same rows, same SQL, so either shape reads right).
// Invariants:
// * A row is newer than whatever the extent tree maps at (ino, blk): at
//   mount (replay) it becomes a dirty folio again, and reads, FIEMAP
//   (delalloc) and writeback see it as one.
// * Every change that makes a row stale drops it in the SQLite transaction
//   that makes the change durable: the writeback commit that maps the
//   block, the truncate step that cuts it off (its first step), the punch
//   step that unmaps it, the deletion of the inode. So no crash can bring
//   back bytes that a durable change replaced or removed.
// * blk < ceil(size / 4096) of its inode, which is a regular file (fsck
//   checks it; replay ignores, and a read-write mount deletes, rows that
//   break it). Bytes of the last block past the size are zeroed at replay.
// * The inode's on-disk size covers the journaled blocks: the fsync that
//   writes them sets it in the same transaction (never past its in-memory
//   size, nor past the last block that is mapped or journaled).
// Misuse: forget() outside the transaction that makes the change durable
// (before it: a crash in between loses fsynced data; after it: a crash in
// between brings back stale bytes); record() of a folio that can change
// before the transaction ends (the caller holds its lock).
import type Database from 'better-sqlite3'
import { onRollback } from './sqltx'

export const JOURNAL_SCHEMA = 'CREATE TABLE IF NOT EXISTS data_journal (ino INTEGER NOT NULL, blk INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (ino, blk));'

/** a data_journal of the first shape (WITHOUT ROWID) becomes a rowid table with the same rows, in one transaction */
function convertJournal (db: Database.Database): void {
  const sql = db.prepare("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'data_journal'").pluck().get() as string | undefined
  if (sql === undefined || !/WITHOUT\s+ROWID/i.test(sql)) return
  db.transaction(() => {
    db.exec('CREATE TEMP TABLE data_journal_old AS SELECT ino, blk, data FROM data_journal; DROP TABLE data_journal')
    db.exec(JOURNAL_SCHEMA)
    db.exec('INSERT INTO data_journal (ino, blk, data) SELECT ino, blk, data FROM data_journal_old; DROP TABLE data_journal_old')
  })()
}

/**
 * an fsync journals the blocks it has to make durable when there are at
 * most this many (64 KiB); more go through writeback (the data area
 * writes them faster than SQLite, and the WAL would grow)
 */
export const JOURNAL_MAX_BLOCKS = 16

const END = Number.MAX_SAFE_INTEGER

export interface JournalStats {
  /** fsyncs answered by the journal */
  commits: number
  /** blocks those journaled */
  blocks: number
  /** blocks brought back as dirty folios at mount */
  replayed: number
  /** journaled fsyncs whose WAL sync the binding made, in the thread that answered (FolioFs.fsyncHandOff) */
  handedOff: number
}

export interface JournalEntry { ino: number, blk: number, data: Buffer }

export class DataJournal {
  readonly stats: JournalStats = { commits: 0, blocks: 0, replayed: 0, handedOff: 0 }
  /** ino -> its journaled blocks, kept with the table (null: read it again, after a rollback) */
  private byIno: Map<number, Set<number>> | null = null
  private readonly q: {
    put: Database.Statement
    del: Database.Statement
    keys: Database.Statement
    all: Database.Statement
  } | null

  /**
   * format5: the image is of format 5 (an older one opened read-only has
   * no table: nothing is journaled). A format-5 image without the table
   * (damaged) gets an empty one on a read-write open.
   */
  constructor (db: Database.Database, format5: boolean) {
    if (format5 && !db.readonly) { db.exec(JOURNAL_SCHEMA); convertJournal(db) }
    this.q = format5 && hasJournal(db)
      ? {
          put: db.prepare('INSERT OR REPLACE INTO data_journal (ino, blk, data) VALUES (?, ?, ?)'),
          del: db.prepare('DELETE FROM data_journal WHERE ino = ? AND blk >= ? AND blk < ?'),
          keys: db.prepare('SELECT ino, blk FROM data_journal'),
          all: db.prepare('SELECT ino, blk, data FROM data_journal ORDER BY ino, blk')
        }
      : null
    onRollback(db, () => { this.byIno = null })
  }

  /** the journal can take blocks (read-write image of format 5) */
  get usable (): boolean { return this.q !== null }

  private index (): Map<number, Set<number>> {
    if (this.byIno) return this.byIno
    const m = new Map<number, Set<number>>()
    if (this.q) {
      for (const r of this.q.keys.iterate() as Iterable<{ ino: number, blk: number }>) {
        let s = m.get(r.ino)
        if (!s) { s = new Set(); m.set(r.ino, s) }
        s.add(r.blk)
      }
    }
    this.byIno = m
    return m
  }

  /** inside the fsync's transaction: these blocks of ino, as they are now (the caller holds their folios locked) */
  record (ino: number, blocks: Array<{ index: number, data: Buffer }>): void {
    if (!this.q) throw new Error('data journal: not on this image')
    const m = this.index()
    let s = m.get(ino)
    if (!s) { s = new Set(); m.set(ino, s) }
    for (const b of blocks) {
      this.q.put.run(ino, b.index, b.data)
      s.add(b.index)
    }
  }

  /**
   * inside the transaction of a durable change to blocks [from, to) of ino
   * (their writeback commit, a truncate or punch step, the inode's
   * deletion): their rows go. Costs nothing when ino has none.
   */
  forget (ino: number, from = 0, to = END): void {
    const s = this.index().get(ino)
    if (!s || !this.q) return
    const hits: number[] = []
    if (to - from <= s.size) { // a run's few blocks: look them up
      for (let b = from; b < to; b++) if (s.has(b)) hits.push(b)
    } else {
      for (const b of s) if (b >= from && b < to) hits.push(b)
    }
    if (hits.length === 0) return
    this.q.del.run(ino, from, Math.min(to, END))
    for (const b of hits) s.delete(b)
    if (s.size === 0) this.index().delete(ino)
  }

  /** every row, for replay at mount */
  entries (): JournalEntry[] {
    return this.q ? this.q.all.all() as JournalEntry[] : []
  }

  /** rows now */
  get rows (): number {
    let n = 0
    for (const s of this.index().values()) n += s.size
    return n
  }
}

/** the image has the table */
function hasJournal (db: Database.Database): boolean {
  return db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'data_journal'").pluck().get() !== undefined
}

/** the journal's rows without their data (fsck): key and bytes; none on an image without the table */
export function journalRows (db: Database.Database): Array<{ ino: number, blk: number, len: number }> {
  return hasJournal(db) ? db.prepare('SELECT ino, blk, length(data) AS len FROM data_journal ORDER BY ino, blk').all() as Array<{ ino: number, blk: number, len: number }> : []
}

/** drop one row (fsck --repair: a row that breaks the invariants above) */
export function dropJournalRow (db: Database.Database, ino: number, blk: number): void {
  db.prepare('DELETE FROM data_journal WHERE ino = ? AND blk = ?').run(ino, blk)
}
