// npm run bench: the extent B-tree against the same work done through a
// plain SQLite table with an index, measured in the same run on the same
// machine. Prints numbers; asserts nothing (speed targets are not tests).
//   node dist/scripts/bench.js [--extents N] [--lookups N] [--commits N] [--truncate-extents N] [--truncate-only]
import Database from 'better-sqlite3'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import { ExtentTree, lockrestartDoSync, transGet } from '../src/btree'
import { mkfs, openImage } from '../src/image'
import { FolioFs } from '../src/fs'
import { rng } from '../src/rng'

function arg (name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : def
}

const EXTENTS = arg('extents', 1_000_000)
const LOOKUPS = arg('lookups', 200_000)
const COMMITS = arg('commits', 20_000)
const BATCH = 1000
const FILES = 1000
const TRUNCATES = [...new Set([100_000, arg('truncate-extents', 1_000_000)])] // one image per size: a size given twice runs once

function openDb (file: string): Database.Database {
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  db.pragma('synchronous = NORMAL')
  db.pragma('cache_size = -65536')
  return db
}

function time (fn: () => void): number {
  const t0 = process.hrtime.bigint()
  fn()
  return Number(process.hrtime.bigint() - t0) / 1e9
}

/** extent k: file floor(k / per-file), every other block (gaps: no merging); a batch fills one file's range */
const PER_FILE = Math.ceil(EXTENTS / FILES)
const extentOf = (k: number): { ino: number, off: number } => ({ ino: 1 + Math.floor(k / PER_FILE), off: 2 * (k % PER_FILE) })

interface Row { name: string, tree: number, sql: number, unit: string }

interface TruncateResult { extents: number, secs: number, steps: number, maxStepMs: number, maxLoopGapMs: number, rssMiB: number }

/**
 * Truncate a file of n one-block extents to 0 through the filesystem
 * (FolioFs.truncate: bounded B-tree transactions). Free space is as
 * fragmented as it gets: a second file owns every other physical block.
 * Measures the total time, the longest single step (synchronous stretch)
 * and the longest gap of a 1 ms timer (how long other work had to wait).
 */
async function truncateBench (dir: string, n: number): Promise<TruncateResult> {
  const img = path.join(dir, `truncate-${n}.img`)
  mkfs(img, { capacityBytes: 4 * n * 4096 })
  const folio = new FolioFs(openImage(img))
  const creds = { uid: 0, gid: 0 }
  const victim = folio.create('/victim', 0o644, creds)
  const other = folio.create('/other', 0o644, creds)
  const tree = folio.data.tree
  for (let b = 0; b < n; b += 10_000) {
    lockrestartDoSync(transGet(tree), t => {
      for (let k = b; k < Math.min(b + 10_000, n); k++) {
        for (const [ino, pblk] of [[victim, 2 * k + 1], [other, 2 * k + 2]]) { // block 0: the data area header
          const a = t.alloc(1, pblk)
          if (!a || a.pblk !== pblk) throw new Error('bench layout: allocation did not follow the hint')
          t.insertExtent({ ino, off: 2 * k, len: 1, pblk, flags: 0 })
        }
      }
      t.commit()
    })
  }
  await folio.truncate(victim, 2 * n * 4096) // size covering the extents
  const steps0 = tree.stats.steps
  tree.stats.maxStepMs = 0
  let last = performance.now()
  let maxGap = 0
  const probe = setInterval(() => {
    const now = performance.now()
    maxGap = Math.max(maxGap, now - last - 1)
    last = now
  }, 1)
  const t0 = performance.now()
  await folio.truncate(victim, 0)
  const secs = (performance.now() - t0) / 1000
  clearInterval(probe)
  const rssMiB = process.memoryUsage().rss / 2 ** 20
  const r = { extents: n, secs, steps: tree.stats.steps - steps0, maxStepMs: tree.stats.maxStepMs, maxLoopGapMs: Math.max(0, maxGap), rssMiB }
  const left = await folio.data.extents(victim)
  if (left.length !== 0 || (await folio.data.extents(other)).length !== n) throw new Error('truncate bench: wrong result')
  folio.close()
  return r
}

function printTruncate (r: TruncateResult): void {
  console.log(`  ${String(r.extents).padStart(8)} extents  ${r.secs.toFixed(2).padStart(6)} s  ${Math.round(r.extents / r.secs).toString().padStart(8)} extents/s  ${r.steps} steps  longest step ${r.maxStepMs.toFixed(1)} ms  longest timer delay ${r.maxLoopGapMs.toFixed(1)} ms  rss ${r.rssMiB.toFixed(0)} MiB`)
}

const TRUNCATE_TITLE = 'truncate to 0 of a file of one-block extents, free space fully fragmented (bounded steps, event loop probed by a 1 ms timer):'

/** --truncate-only: just the truncate rows (profiling the truncate path) */
async function truncateOnly (): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'foliofs-bench-'))
  try {
    console.log(TRUNCATE_TITLE)
    for (const n of TRUNCATES) printTruncate(await truncateBench(dir, n))
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

async function main (): Promise<void> {
  if (process.argv.includes('--truncate-only')) return await truncateOnly()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'foliofs-bench-'))
  const rows: Row[] = []
  try {
    // ---- the extent B-tree ----
    const tdb = openDb(path.join(dir, 'tree.db'))
    const tree = ExtentTree.open(tdb, { totalBlocks: 2 ** 40, cacheNodes: 16384 })
    const tInsert = time(() => {
      for (let b = 0; b < EXTENTS; b += BATCH) {
        lockrestartDoSync(transGet(tree), t => {
          for (let k = b; k < Math.min(b + BATCH, EXTENTS); k++) {
            const { ino, off } = extentOf(k)
            const a = t.alloc(1, 0)
            if (!a) throw new Error('no space')
            t.insertExtent({ ino, off, len: 1, pblk: a.pblk, flags: 0 })
          }
          t.commit()
        })
      }
    })
    const r1 = rng(1)
    let hits = 0
    const tLookup = time(() => {
      for (let i = 0; i < LOOKUPS; i++) {
        const { ino, off } = extentOf(Math.floor(r1() * EXTENTS))
        const e = lockrestartDoSync(transGet(tree), t => t.lookup(ino, off))
        if (e) hits++
      }
    })
    if (hits !== LOOKUPS) throw new Error(`tree lookups found ${hits}/${LOOKUPS}`)
    let n = 0
    const tScan = time(() => {
      for (let ino = 1; ino <= 100; ino++) n += lockrestartDoSync(transGet(tree), t => t.extentsIn(ino, 0, Number.MAX_SAFE_INTEGER)).length
    })
    const tCommit = time(() => {
      for (let i = 0; i < COMMITS; i++) {
        lockrestartDoSync(transGet(tree), t => {
          const a = t.alloc(1, 0)
          if (!a) throw new Error('no space')
          t.insertExtent({ ino: FILES + 1, off: 2 * i, len: 1, pblk: a.pblk, flags: 0 })
          t.commit()
        })
      }
    })
    const stats = tree.snapshotStats()
    const height = tree.meta.height
    tdb.close()

    // ---- the same through SQLite's own b-tree ----
    const sdb = openDb(path.join(dir, 'sql.db'))
    sdb.exec('CREATE TABLE extents (ino INTEGER NOT NULL, off INTEGER NOT NULL, len INTEGER NOT NULL, pblk INTEGER NOT NULL, flags INTEGER NOT NULL, PRIMARY KEY (ino, off)) WITHOUT ROWID')
    const ins = sdb.prepare('INSERT OR REPLACE INTO extents VALUES (?, ?, ?, ?, ?)')
    const get = sdb.prepare('SELECT * FROM extents WHERE ino = ? AND off <= ? ORDER BY off DESC LIMIT 1')
    const scan = sdb.prepare('SELECT * FROM extents WHERE ino = ? ORDER BY off')
    let pblk = 0
    const sInsert = time(() => {
      for (let b = 0; b < EXTENTS; b += BATCH) {
        sdb.transaction(() => {
          for (let k = b; k < Math.min(b + BATCH, EXTENTS); k++) {
            const { ino, off } = extentOf(k)
            ins.run(ino, off, 1, pblk++, 0)
          }
        })()
      }
    })
    const r2 = rng(1)
    let shits = 0
    const sLookup = time(() => {
      for (let i = 0; i < LOOKUPS; i++) {
        const { ino, off } = extentOf(Math.floor(r2() * EXTENTS))
        const e = get.get(ino, off) as { off: number, len: number } | undefined
        if (e && e.off + e.len > off) shits++
      }
    })
    if (shits !== LOOKUPS) throw new Error(`sql lookups found ${shits}/${LOOKUPS}`)
    let sn = 0
    const sScan = time(() => {
      for (let ino = 1; ino <= 100; ino++) sn += scan.all(ino).length
    })
    if (sn !== n) throw new Error(`scan mismatch ${sn} != ${n}`)
    const sCommit = time(() => {
      for (let i = 0; i < COMMITS; i++) sdb.transaction(() => { ins.run(FILES + 1, 2 * i, 1, pblk++, 0) })()
    })
    sdb.close()
    const size = (f: string): number => fs.statSync(path.join(dir, f)).size

    rows.push({ name: `insert ${EXTENTS} extents (${BATCH}/commit)`, tree: EXTENTS / tInsert, sql: EXTENTS / sInsert, unit: 'extents/s' })
    rows.push({ name: `random point lookups (${LOOKUPS}, one transaction each)`, tree: LOOKUPS / tLookup, sql: LOOKUPS / sLookup, unit: 'lookups/s' })
    rows.push({ name: `scan 100 files (${n} extents)`, tree: n / tScan, sql: sn / sScan, unit: 'extents/s' })
    rows.push({ name: `single-extent commits (${COMMITS})`, tree: COMMITS / tCommit, sql: COMMITS / sCommit, unit: 'commits/s' })
    console.log(`foliofs bench: extent B-tree (4 KiB pages, height ${height}) vs SQLite WITHOUT ROWID table with primary key (ino, off)`)
    console.log(`node ${process.version}, ${os.cpus().length} cpus, ${os.cpus()[0]?.model ?? '?'}`)
    const w = Math.max(...rows.map(r => r.name.length))
    for (const r of rows) {
      console.log(`${r.name.padEnd(w)}  btree ${Math.round(r.tree).toString().padStart(9)} ${r.unit}   sqlite ${Math.round(r.sql).toString().padStart(9)} ${r.unit}   ratio ${(r.tree / r.sql).toFixed(2)}`)
    }
    console.log(`database size after the run: btree ${(size('tree.db') / 2 ** 20).toFixed(1)} MiB, sqlite ${(size('sql.db') / 2 ** 20).toFixed(1)} MiB`)
    console.log(`btree stats: ${stats.commits} commits, node reads ${stats.nodeReads}, node writes ${stats.nodeWrites}, restarts ${JSON.stringify(stats.restarts)}`)
    console.log(TRUNCATE_TITLE)
    for (const n of TRUNCATES) printTruncate(await truncateBench(dir, n))
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(err => { console.error(err); process.exit(1) })
