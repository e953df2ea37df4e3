// Free-space map: RangeSet's batch merge against one merge() at a time,
// and the free_buckets rows (format 3) against the in-memory map.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as path from 'path'
import Database from 'better-sqlite3'
import { RangeSet, merge, carve, type Range } from '../../src/btree/rangeset'
import { FREE_BUCKET } from '../../src/btree/alloc'
import { BtreeError, ExtentTree, lockrestartDoSync, transGet } from '../../src/btree'
import { rng, tmpdir } from './helpers'

const all = (s: RangeSet): Range[] => [...s.ranges()]

/** a set with n random ranges in [0, span) (non-touching, as the allocator keeps them) */
function randomSet (r: () => number, n: number, span: number): RangeSet {
  const s = new RangeSet()
  for (let k = 0; k < n; k++) {
    const at = Math.floor(r() * span)
    merge(s, at, 1 + Math.floor(r() * 4)) // touching neighbours merge; overlaps are refused
  }
  return s
}

test('mergeMany gives exactly what one merge() per range gives, across chunks, and changes nothing on an overlap', () => {
  const r = rng(17)
  for (let round = 0; round < 300; round++) {
    const span = 200 + Math.floor(r() * 20000)
    const a = randomSet(r, Math.floor(r() * 3000), span)
    const b = new RangeSet()
    for (const x of all(a)) b.insert(x.pblk, x.len)
    // candidate ranges to free: not in the set (carve them out of a scratch copy), some touching each other
    const want: Range[] = []
    for (let k = 0, at = Math.floor(r() * 10); k < 2000 && at < span + 50; k++, at += 1 + Math.floor(r() * 30)) {
      const len = 1 + Math.floor(r() * 5)
      want.push({ pblk: at, len })
      at += len - 1
    }
    const fresh = want.filter(x => {
      for (let q = x.pblk; q < x.pblk + x.len; q++) if (a.containing(q)) return false
      return true
    })
    const overlapping = fresh.length < want.length
    const before = all(a)
    const dup = a.mergeMany(want.map(x => x.pblk), want.map(x => x.len))
    if (overlapping) {
      assert.ok(dup >= 0, `round ${round}: an overlap is refused`)
      assert.deepEqual(all(a), before, `round ${round}: a refused batch changes nothing`)
      assert.deepEqual(a.check(), [])
      continue
    }
    assert.equal(dup, -1)
    for (const x of want) assert.equal(merge(b, x.pblk, x.len), -1)
    assert.deepEqual(all(a), all(b), `round ${round}`)
    assert.deepEqual(a.check(), [], `round ${round}`)
    assert.equal(a.total, b.total)
    assert.equal(a.size, b.size)
  }
})

test('mergeMany into an empty set, and a range given twice is refused', () => {
  const s = new RangeSet()
  assert.equal(s.mergeMany([5, 6, 9], [1, 2, 1]), -1)
  assert.deepEqual(all(s), [{ pblk: 5, len: 3 }, { pblk: 9, len: 1 }])
  const e = new RangeSet()
  assert.ok(e.mergeMany([5, 5], [1, 1]) >= 0)
  assert.deepEqual(all(e), [])
  assert.deepEqual(e.check(), [])
  assert.equal(e.mergeMany([7], [1]), -1)
  assert.deepEqual(all(e), [{ pblk: 7, len: 1 }])
})

test('a tracking set records the buckets of every start it wrote or removed', () => {
  const s = new RangeSet(100)
  s.insert(10, 5)
  s.insert(250, 100)
  assert.deepEqual([...(s.changed as Set<number>)].sort(), [0, 2])
  s.changed?.clear()
  carve(s, 250, 60) // the range now starts at 310: bucket 2 lost it, bucket 3 got it
  assert.deepEqual([...(s.changed as Set<number>)].sort(), [2, 3])
})

function openTree (file: string): { db: Database.Database, tree: ExtentTree } {
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  return { db, tree: ExtentTree.open(db, { pageSize: 4096, totalBlocks: 5 * FREE_BUCKET + 17, commitsDurable: true, debugChecks: false }) }
}

test('free space survives reopen exactly: fragmented frees, whole buckets freed and emptied, a range longer than a bucket', () => {
  const file = path.join(tmpdir(), 't.db')
  let { db, tree } = openTree(file)
  const total = 5 * FREE_BUCKET + 17
  // fill most of the device with one-block extents of two files, then free one file's: fully fragmented
  lockrestartDoSync(transGet(tree), t => {
    for (let b = 1; b < 3 * FREE_BUCKET; b++) {
      const a = t.alloc(1, b)
      assert.ok(a && a.pblk === b)
      t.insertExtent({ ino: b % 2 === 0 ? 1 : 2, off: b, len: 1, pblk: b, flags: 0 })
    }
    t.commit()
  })
  lockrestartDoSync(transGet(tree), t => { t.deleteRange(1, 0, Number.MAX_SAFE_INTEGER); t.commit() })
  const free = (tr: ExtentTree): Array<[number, boolean]> => Array.from({ length: total }, (_, b) => [b, tr.alloc.isFree(b)])
  const expect = free(tree)
  assert.equal(db.prepare('SELECT count(*) FROM free_buckets').pluck().get(), 4, 'buckets 0-2 fragmented, 3 holds the long range')
  db.close()
  ;({ db, tree } = openTree(file))
  assert.deepEqual(free(tree), expect)
  assert.deepEqual(tree.verify(), [])
  // free the rest: everything merges into one range starting in bucket 0; the other rows go away
  lockrestartDoSync(transGet(tree), t => { t.deleteRange(2, 0, Number.MAX_SAFE_INTEGER); t.commit() })
  assert.deepEqual(db.prepare('SELECT bucket FROM free_buckets').pluck().all(), [0])
  db.close()
  ;({ db, tree } = openTree(file))
  assert.equal(tree.alloc.free, total)
  assert.equal(tree.alloc.fragments, 1)
  db.close()
})

test('a damaged free_buckets row is a corrupt image, not a wrong free map', () => {
  const file = path.join(tmpdir(), 't.db')
  const { db } = openTree(file)
  db.close()
  const d = new Database(file)
  const good = d.prepare('SELECT bucket, ranges FROM free_buckets').all()
  assert.equal(good.length, 1, 'a new tree: one range from block 0')
  const cases: Array<[number, number[], string]> = [
    [0, [0x80], 'truncated varint'],
    [0, [0, 0], 'empty range'],
    [0, [0x80, 0x40, 1], 'starts past its bucket'],
    [0, [0, 1, 0, 1], 'touches the previous range'],
    [1, [0, 1], 'overlaps the range from bucket 0'],
    [0, [0, 0x80, 0x80, 0x80, 0x80, 0x10], 'runs past the device']
  ]
  for (const [bucket, bytes, why] of cases) {
    d.prepare('INSERT OR REPLACE INTO free_buckets (bucket, ranges) VALUES (?, ?)').run(bucket, Buffer.from(bytes))
    assert.throws(() => ExtentTree.open(d, { pageSize: 4096, totalBlocks: 5 * FREE_BUCKET + 17 }), (e: unknown) => e instanceof BtreeError && e.code === 'node_corrupt', why)
    d.exec('DELETE FROM free_buckets')
    for (const row of good) d.prepare('INSERT INTO free_buckets (bucket, ranges) VALUES (@bucket, @ranges)').run(row)
  }
  assert.equal(ExtentTree.open(d, { pageSize: 4096, totalBlocks: 5 * FREE_BUCKET + 17 }).alloc.free, 5 * FREE_BUCKET + 17)
  d.close()
})

test('blocks a durable commit freed go to onReusable (discard) and are allocatable only once it releases them', () => {
  const db = new Database(path.join(tmpdir(), 'reuse.db'))
  const handed: Array<{ starts: number[], lens: number[], release: () => void }> = []
  const tree = ExtentTree.open(db, {
    pageSize: 4096, totalBlocks: 64, firstBlock: 1, commitsDurable: false, debugChecks: false,
    onReusable: (starts, lens, release) => { handed.push({ starts: [...starts], lens: [...lens], release }) }
  })
  // the whole device mapped by one file, then half of it freed
  lockrestartDoSync(transGet(tree), t => {
    const a = t.alloc(63, 1)
    assert.deepEqual(a, { pblk: 1, len: 63 })
    t.insertExtent({ ino: 5, off: 0, len: 63, pblk: 1, flags: 0 })
    t.commit()
  })
  lockrestartDoSync(transGet(tree), t => { t.deleteRange(5, 32, Number.MAX_SAFE_INTEGER); t.commit() })
  // a transaction that ends uncommitted hands its reservation back
  const tryAlloc = (): unknown => lockrestartDoSync(transGet(tree), t => t.alloc(4, 0))
  assert.equal(tryAlloc(), null, 'not durable yet')
  assert.equal(handed.length, 0)
  tree.markDurable()
  assert.deepEqual(handed.map(h => [h.starts, h.lens]), [[[33], [31]]], 'handed over once durable')
  assert.equal(tryAlloc(), null, 'not allocatable while the discard runs')
  assert.equal(tree.pendingFreeBlocks(), 31)
  handed[0].release()
  handed[0].release() // a second call changes nothing
  assert.deepEqual(tryAlloc(), { pblk: 33, len: 4 })
  assert.equal(tree.pendingFreeBlocks(), 0)
  assert.deepEqual(tree.verify(), [])
  db.close()
})
