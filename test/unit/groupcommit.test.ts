// Group commit (src/sqltx.ts): metadata operations share one SQLite
// transaction, each one all-or-nothing, committed before anything that
// needs a top-level commit.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as path from 'path'
import { mkfs, openImage } from '../../src/image'
import { FolioFs } from '../../src/fs'
import { FsError } from '../../src/errno'
import Database from 'better-sqlite3'
import { BATCH_MS, flushBatch, inBatch, inBatchMarked, inTransaction, onBatchFailure, onRollback } from '../../src/sqltx'
import { tmpdir } from './helpers'

const root = { uid: 0, gid: 0 }

/** the names a reopened image has (what was committed) */
async function namesAfterReopen (img: string): Promise<string[]> {
  const fs = new FolioFs(openImage(img))
  try {
    return fs.readdirFrom(1, fs.openListing(1), 2, 100).names
  } finally { await fs.close() }
}

test('operations of one burst share a commit; a failing one rolls back alone; fsync commits first', async () => {
  const img = path.join(tmpdir(), 'g.img')
  mkfs(img, { capacityBytes: 16 << 20 })
  const fs = new FolioFs(openImage(img))
  const before = fs.groupCommitStats()
  fs.create('/a', 0o644, root)
  fs.create('/b', 0o644, root)
  assert.throws(() => fs.create('/a', 0o644, root), (e: unknown) => e instanceof FsError && e.code === 'EEXIST')
  fs.mkdir('/d', 0o755, root)
  // visible to this connection at once, not committed yet
  assert.ok(fs.resolve('/b') > 0)
  assert.equal(fs.db.inTransaction, true)
  await fs.fsync()
  assert.equal(fs.db.inTransaction, false, 'fsync commits the open group first')
  const after = fs.groupCommitStats()
  assert.equal(after.batches - before.batches, 1, 'one commit for the burst')
  assert.equal(after.batchedOps - before.batchedOps, 3, 'three operations in it (the failed one rolled back alone)')
  await fs.close()
  assert.deepEqual(await namesAfterReopen(img), ['a', 'b', 'd'])
})

test('a group commits by itself within BATCH_MS, without an fsync', async () => {
  const img = path.join(tmpdir(), 'h.img')
  mkfs(img, { capacityBytes: 16 << 20 })
  const fs = new FolioFs(openImage(img))
  const before = fs.groupCommitStats().batches
  fs.create('/x', 0o644, root)
  assert.equal(fs.db.inTransaction, true, 'not committed yet')
  await new Promise(resolve => setTimeout(resolve, 2 * BATCH_MS))
  assert.equal(fs.db.inTransaction, false, 'committed by its timer')
  assert.equal(fs.groupCommitStats().batches, before + 1)
  await fs.close()
  assert.deepEqual(await namesAfterReopen(img), ['x'])
})

test('a B-tree commit commits the open group first (it must be top-level)', async () => {
  const img = path.join(tmpdir(), 'i.img')
  mkfs(img, { capacityBytes: 16 << 20 })
  const fs = new FolioFs(openImage(img))
  const ino = fs.create('/f', 0o644, root)
  await fs.write(ino, Buffer.alloc(8192, 7), 0)
  fs.create('/g', 0o644, root)
  assert.equal(fs.db.inTransaction, true)
  await fs.fsync(ino) // writeback: a B-tree commit while the group with /g is open
  assert.equal(fs.db.inTransaction, false)
  await fs.close()
  assert.deepEqual(await namesAfterReopen(img), ['f', 'g'])
})

/** a database with table t(k) and the group commit's hooks counted */
function counted (): { db: Database.Database, rows: () => number[], failures: unknown[], rollbacks: () => number } {
  const db = new Database(path.join(tmpdir(), 'm.db'))
  db.exec('CREATE TABLE t (k INTEGER PRIMARY KEY)')
  const failures: unknown[] = []
  let rollbacks = 0
  onBatchFailure(db, err => { failures.push(err) })
  onRollback(db, () => { rollbacks++ })
  return { db, rows: () => db.prepare('SELECT k FROM t ORDER BY k').pluck().all() as number[], failures, rollbacks: () => rollbacks }
}

test('an operation marked before its writes: no savepoint when answered, its own when guarded, nothing to undo before the mark', () => {
  const { db, rows, failures, rollbacks } = counted()
  const ins = db.prepare('INSERT INTO t (k) VALUES (?)')
  const fail = new Error('check failed')
  inBatch(db, () => ins.run(1))
  // a check fails before the mark: the batch goes on, nothing rolled back
  assert.throws(() => inBatchMarked(db, () => { throw fail }), fail)
  assert.equal(rollbacks(), 0)
  // guarded: the operation's own writes roll back alone
  assert.throws(() => inBatchMarked(db, mark => { mark('guarded'); ins.run(2); throw fail }), fail)
  assert.equal(rollbacks(), 1)
  inBatchMarked(db, mark => { mark('answered'); ins.run(3) })
  inBatchMarked(db, mark => { mark('guarded'); ins.run(4) })
  assert.deepEqual(rows(), [1, 3, 4], 'this connection sees the batch')
  assert.equal(db.inTransaction, true)
  assert.deepEqual(failures, [])
  flushBatch(db)
  assert.deepEqual(rows(), [1, 3, 4])
  // answered, then a write fails: the operation cannot be undone alone, so the whole batch goes; fatal
  inBatch(db, () => ins.run(5))
  assert.throws(() => inBatchMarked(db, mark => { mark('answered'); ins.run(6); ins.run(6) }), /UNIQUE/)
  assert.equal(db.inTransaction, false, 'the batch was rolled back')
  assert.deepEqual(rows(), [1, 3, 4], 'with the operations answered in it')
  assert.equal(failures.length, 1, 'the batch-failure handler ran')
  assert.equal(rollbacks(), 2)
  // inside a strict transaction it is a savepoint of that one (mark does nothing)
  inTransaction(db, () => {
    assert.throws(() => inBatchMarked(db, mark => { ins.run(7); mark('answered'); throw fail }), fail)
    inBatchMarked(db, mark => { mark('answered'); ins.run(8) })
  })
  assert.deepEqual(rows(), [1, 3, 4, 8])
  assert.throws(() => inBatchMarked(db, mark => { mark('guarded'); mark('answered') }), /twice/)
  db.close()
})
