// Group commit (src/sqltx.ts): metadata operations share one SQLite
// transaction, each one all-or-nothing, committed before anything that
// needs a top-level commit.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as path from 'path'
import { mkfs, openImage } from '../../src/image'
import { FolioFs } from '../../src/fs'
import { FsError } from '../../src/errno'
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

test('a group commits by itself within a few milliseconds, without an fsync', async () => {
  const img = path.join(tmpdir(), 'h.img')
  mkfs(img, { capacityBytes: 16 << 20 })
  const fs = new FolioFs(openImage(img))
  const before = fs.groupCommitStats().batches
  fs.create('/x', 0o644, root)
  assert.equal(fs.db.inTransaction, true, 'not committed yet')
  await new Promise(resolve => setTimeout(resolve, 50))
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
