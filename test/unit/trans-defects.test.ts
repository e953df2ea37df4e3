// Regression tests for the transaction-layer defects of issue 6. Each test
// reproduces one defect that the layer had; the comment names it.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as path from 'path'
import Database from 'better-sqlite3'
import { BtreeError, ExtentTree, TransRestart, commitDo, dropLocksDo, lockrestartDo, lockrestartDoSync, nonblockingOrDrop, transGet, type Extent, type TreeOptions } from '../../src/btree'
import { mkfs, openImage } from '../../src/image'
import { FolioFs } from '../../src/fs'
import { TRUNCATE_BATCH_MAX } from '../../src/filedata'
import { tmpdir } from './helpers'

function openTree (file: string, opts: TreeOptions = {}): { db: Database.Database, tree: ExtentTree } {
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  return { db, tree: ExtentTree.open(db, { pageSize: 256, totalBlocks: 1 << 20, debugChecks: true, commitsDurable: true, ...opts }) }
}

const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))
const END = Number.MAX_SAFE_INTEGER

function dump (tree: ExtentTree, ino: number): Extent[] {
  return lockrestartDoSync(transGet(tree), t => t.extentsIn(ino, 0, END))
}

/** n one-block extents of ino at even logical offsets (never merge), physically sequential */
function fragmented (tree: ExtentTree, ino: number, n: number, perCommit = 1000): void {
  for (let done = 0; done < n;) {
    const k = Math.min(perCommit, n - done)
    lockrestartDoSync(transGet(tree), t => {
      for (let i = 0; i < k; i++) {
        const a = t.alloc(1, 0)
        assert.ok(a)
        t.insertExtent({ ino, off: 2 * (done + i), len: 1, pblk: a.pblk, flags: 0 })
      }
      t.commit()
    })
    done += k
  }
}

test('defect 1: a huge single commit against a tiny node cache leaves a valid tree after reopen', () => {
  const file = path.join(tmpdir(), 't.db')
  let { db, tree } = openTree(file, { pageSize: 4096, cacheNodes: 256, debugChecks: false })
  fragmented(tree, 1, 100_000, 5000)
  assert.deepEqual(tree.verify(), [])
  lockrestartDoSync(transGet(tree), t => { t.deleteRange(1, 0, END); t.commit() })
  db.close()
  ;({ db, tree } = openTree(file, { pageSize: 4096, cacheNodes: 256, debugChecks: false }))
  assert.deepEqual(tree.verify().slice(0, 5), [])
  assert.equal(dump(tree, 1).length, 0)
  assert.equal(tree.alloc.free, 1 << 20)
  db.close()
})

test('defect 2: relock validates every node the transaction read, not only where its paths sit now', async () => {
  const { tree } = openTree(path.join(tmpdir(), 't.db'))
  fragmented(tree, 1, 30) // 30 extents in 7-extent leaves: several leaves
  let runs = 0
  let seen = -1
  await commitDo(transGet(tree), async t => {
    runs++
    const ex = t.extentsIn(1, 0, END) // walks across every leaf
    if (runs === 1) {
      await dropLocksDo(t, async () => {
        // another transaction unmaps a block in the FIRST leaf while we wait
        // (no split or merge: only that leaf changes)
        await commitDo(transGet(tree), u => { u.deleteRange(1, 2, 3) })
      })
    }
    seen = ex.length
  })
  assert.equal(runs, 2, 'the reader restarted: what it read changed while it waited')
  assert.equal(seen, 29)
  assert.ok(tree.snapshotStats().restarts.relock >= 1)
})

test('defect 3: a contended nonblocking step falls back to the blocking one once and keeps its result', async () => {
  const { tree } = openTree(path.join(tmpdir(), 't.db'))
  fragmented(tree, 1, 10)
  let blocking = 0
  const trans = transGet(tree)
  const got = await lockrestartDo(trans, async t => {
    t.lookup(1, 0)
    // the resource stays busy for the nonblocking attempt every time
    return await nonblockingOrDrop(t, () => undefined, async () => { blocking++; await sleep(1); return 42 })
  })
  assert.equal(got, 42)
  assert.equal(blocking, 1)
  assert.equal(tree.snapshotStats().restarts.relock, 0)
  assert.equal(trans.restarts, 0)
})

test('defect 4: restart counters are per step: a long walk with a restart at every step finishes unserialized', async () => {
  const { tree } = openTree(path.join(tmpdir(), 't.db'))
  fragmented(tree, 1, 10)
  const trans = transGet(tree)
  let steps = 0
  for (let step = 0; step < 1500; step++) {
    let first = true
    await lockrestartDo(trans, t => {
      t.lookup(1, step % 20)
      if (first) { first = false; throw new TransRestart('injected', 'test') }
      steps++
    })
  }
  assert.equal(steps, 1500)
  assert.equal(tree.snapshotStats().serializedTransactions, 0)
})

test('defect 5: an FS write started while an async transaction relocks does not spin into EIO', async () => {
  const img = path.join(tmpdir(), 'a.img')
  mkfs(img, { capacityBytes: 64 << 20 })
  const fs = new FolioFs(openImage(img))
  const ino = fs.create('/f', 0o644, { uid: 0, gid: 0 })
  await fs.write(ino, Buffer.alloc(8192, 1), 0)
  await fs.fsync(ino)
  const tree = fs.data.tree
  const gate = sleep(5)
  let b: Promise<number> | null = null
  const a = lockrestartDo(transGet(tree), async t => {
    t.lookup(ino, 0)
    await dropLocksDo(t, () => {
      // b runs on the same promise, right after dropLocksDo's relock and
      // before this body resumes; it writes into a hole, so it must map a
      // block in the leaf this transaction holds read-locked
      queueMicrotask(() => {
        b = gate.then(async () => {
          await fs.write(ino, Buffer.alloc(4096, 2), 8192)
          await fs.fsync(ino) // writeback commits a mapping in that leaf
          return 0
        })
      })
      return gate
    })
    t.lookup(ino, 1)
  })
  await a
  await b
  const buf = Buffer.alloc(12288)
  await fs.read(ino, buf, 12288, 0)
  assert.equal(buf[0], 1)
  assert.equal(buf[8192], 2)
  await fs.close()
})

test('defect 5: lockrestartDoSync refuses to run while another transaction holds locks, also in the relock window', async () => {
  const { tree } = openTree(path.join(tmpdir(), 't.db'))
  fragmented(tree, 1, 30)
  const misuse = (e: unknown): boolean => e instanceof BtreeError && e.code === 'trans_misuse'
  await lockrestartDo(transGet(tree), t => {
    t.lookup(1, 0)
    assert.throws(() => lockrestartDoSync(transGet(tree), u => u.lookup(1, 0)), misuse)
  })
  let inWindow: unknown = null
  let ran = false
  await lockrestartDo(transGet(tree), async t => {
    t.extentsIn(1, 0, END)
    const relocked = dropLocksDo(t, () => sleep(1))
    // runs right after relock, before this body resumes: t holds its locks again
    void relocked.then(() => {
      try { lockrestartDoSync(transGet(tree), u => { ran = true; return u.lookup(1, 0) }) } catch (e) { inWindow = e }
    })
    await relocked
    assert.ok(t.locked)
  })
  assert.ok(misuse(inWindow), `refused in the relock window (got ${String(inWindow)})`)
  assert.equal(ran, false, 'its body never ran')
  // with nobody holding locks it runs
  assert.equal(lockrestartDoSync(transGet(tree), u => u.lookup(1, 2))?.off, 2)
})

for (const op of ['truncate', 'fsync'] as const) {
  test(`defect 5: a ${op} through FolioFs started in another transaction's relock window completes (no EIO, no restart_limit)`, async () => {
    const img = path.join(tmpdir(), 'a.img')
    mkfs(img, { capacityBytes: 64 << 20 })
    const fs = new FolioFs(openImage(img))
    const ino = fs.create('/f', 0o644, { uid: 0, gid: 0 })
    for (let k = 0; k < 40; k++) await fs.write(ino, Buffer.alloc(4096, 1), k * 8192)
    await fs.fsync(ino)
    const tree = fs.data.tree
    const restarts0 = Object.values(tree.snapshotStats().restarts).reduce((a, b) => a + b, 0)
    let started: Promise<void> | null = null
    if (op === 'fsync') await fs.write(ino, Buffer.alloc(4096, 2), 8192) // dirty: fsync writes it back into the leaf we hold
    await lockrestartDo(transGet(tree), async t => {
      t.extentsIn(ino, 0, END) // read locks on the file's leaves
      const relocked = dropLocksDo(t, () => sleep(1))
      void relocked.then(() => {
        started = op === 'truncate' ? fs.truncate(ino, 4096) : fs.fsync(ino)
      })
      await relocked
      // hold the relocked read set over many microtask turns, as a body
      // that awaits already-resolved promises does: the FS step runs into it
      for (let i = 0; i < 200; i++) await null
    })
    assert.ok(started, 'the FS operation started inside the window')
    await started
    const restarts = Object.values(tree.snapshotStats().restarts).reduce((a, b) => a + b, 0) - restarts0
    // truncate's step collides with the held read set and restarts; fsync's
    // first step only reads (compatible) and its commit comes after the
    // data I/O, by when the window has closed: it shows it starts cleanly
    if (op === 'truncate') assert.ok(restarts >= 1, 'the truncate step ran into the relocked transaction')
    const buf = Buffer.alloc(3 * 8192)
    const n = await fs.read(ino, buf, buf.length, 0)
    if (op === 'truncate') {
      assert.equal(n, 4096)
      assert.equal(fs.data.used, 1)
    } else {
      assert.equal(buf[8192], 2)
      assert.equal(await fs.data.extents(ino).then(ex => ex.length), 40)
    }
    await fs.close()
  })
}

test('defect 6: another transaction\'s uncommitted reservation is never persisted by a commit', async () => {
  const file = path.join(tmpdir(), 't.db')
  const { tree } = openTree(file)
  fragmented(tree, 1, 4)
  let release!: () => void
  const gate = new Promise<void>(resolve => { release = resolve })
  let reserved = -1
  const a = commitDo(transGet(tree), async t => {
    const r = t.alloc(5, 5000)
    assert.ok(r)
    reserved = r.pblk
    await dropLocksDo(t, () => gate)
    t.insertExtent({ ino: 2, off: 0, len: 5, pblk: r.pblk, flags: 0 })
  })
  await sleep(1)
  await commitDo(transGet(tree), t => { // B commits while A holds its reservation
    const r = t.alloc(1, 0)
    assert.ok(r)
    t.insertExtent({ ino: 3, off: 0, len: 1, pblk: r.pblk, flags: 0 })
  })
  // a crash now: what does the image say?
  const ro = new Database(file, { readonly: true })
  const crashed = ExtentTree.open(ro, { pageSize: 256, totalBlocks: 1 << 20 })
  for (let b = reserved; b < reserved + 5; b++) assert.ok(crashed.alloc.isFree(b), `block ${b} of A's reservation is free in the image`)
  assert.deepEqual(crashed.verify(), [])
  ro.close()
  release()
  await a
  assert.equal(dump(tree, 2)[0].pblk, reserved)
})

test('defect 7: one transaction can queue 1000 updates across many leaves (no too_many_paths)', async () => {
  const { tree } = openTree(path.join(tmpdir(), 't.db'))
  fragmented(tree, 1, 3000)
  const trans = transGet(tree)
  await commitDo(trans, t => {
    for (let k = 0; k < 1000; k++) {
      const a = t.alloc(1, 0)
      assert.ok(a)
      t.insertExtent({ ino: 1, off: 6 * k + 1, len: 1, pblk: a.pblk, flags: 0 })
    }
  })
  assert.equal(dump(tree, 1).length, 4000)
  assert.equal(Object.values(tree.snapshotStats().restarts).reduce((s, n) => s + n, 0), 0)
})

test('defect 8: truncating a big fragmented file runs in bounded steps and lets other work run meanwhile', async () => {
  const img = path.join(tmpdir(), 'a.img')
  mkfs(img, { capacityBytes: 1 << 30 })
  const fs = new FolioFs(openImage(img))
  const ino = fs.create('/f', 0o644, { uid: 0, gid: 0 })
  const other = fs.create('/g', 0o644, { uid: 0, gid: 0 })
  const n = 10_000 // one-block extents with holes between them: none merge
  const block = Buffer.alloc(4096, 7)
  for (let k = 0; k < n; k++) await fs.write(ino, block, k * 8192)
  for (let k = 0; k < 100; k++) await fs.write(other, block, k * 8192)
  await fs.sync()
  const commits0 = fs.data.tree.snapshotStats().commits
  let ranMeanwhile = false
  setImmediate(() => { ranMeanwhile = true })
  await fs.truncate(ino, 0)
  assert.ok(ranMeanwhile, 'the event loop turned during the truncate')
  assert.ok(fs.data.tree.snapshotStats().commits - commits0 >= 4, 'several bounded transactions')
  const st = fs.data.stats
  assert.equal(st.truncateExtents, n, 'the truncate steps unmapped every extent')
  assert.ok(st.truncateSteps >= Math.ceil(n / TRUNCATE_BATCH_MAX), 'no step took more than TRUNCATE_BATCH_MAX extents')
  assert.equal(fs.stat(ino).size, 0)
  assert.equal(fs.stat(ino).blocks, 0)
  assert.equal(fs.stat(other).blocks, 100 * 8)
  assert.equal(fs.used, 100)
  await fs.close()
})

test('defect 9: a body that swallows a restart is caught (verify_not_restarted)', async () => {
  const { tree } = openTree(path.join(tmpdir(), 't.db'), { injectRestarts: 1, injectMaxPerTrans: 1 })
  await assert.rejects(lockrestartDo(transGet(tree), t => {
    try { t.lookup(1, 0) } catch { /* swallowed */ }
    return 5
  }), (e: unknown) => e instanceof BtreeError && e.code === 'trans_misuse')
})
