// The extent B-tree: its on-disk tables, meta, node cache, allocator,
// statistics, fairness gate and structural verify().
//
// On disk (one SQLite database, the image):
//   btree_nodes(id INTEGER PRIMARY KEY, page BLOB)  one node per row, page
//                                                   format in node.ts
//   btree_meta(key TEXT PRIMARY KEY, value INTEGER) root, height, next_id,
//                                                   page_size, total_blocks
//   free_buckets(bucket INTEGER PRIMARY KEY,        free block ranges,
//                ranges BLOB)                       disjoint, non-touching,
//                                                   grouped by start (alloc.ts)
// Invariants: every node row is reachable from the root exactly once; all
// leaves are at level 0 and the root at height-1; blocks mapped by extents
// plus free range lengths add up to total_blocks; a mapped block is never
// in a free range. All three tables change only inside a commit's SQLite
// transaction (trans.ts), so the image always holds one committed state.
//
// Transactions live in trans.ts (which imports this file, never the other
// way round).
import type Database from 'better-sqlite3'
import { Allocator, bucketsOf, decodeFreeMap, type Range } from './alloc'
import { NodeCache } from './cache'
import { BtreeError, RESTART_REASONS, type RestartReason } from './errors'
import type { LockOwner } from './locks'
import { BtreeNode, cmpPos, EXT_UNWRITTEN, interiorCapacity, leafCapacity, pageProblem, type Extent, type Pos } from './node'

export const BTREE_SCHEMA = `
CREATE TABLE IF NOT EXISTS btree_nodes (id INTEGER PRIMARY KEY, page BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS btree_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS free_buckets (bucket INTEGER PRIMARY KEY, ranges BLOB NOT NULL);
`

export interface TreeOptions {
  /** bytes per node page (default 4096; tests use small pages to force splits) */
  pageSize?: number
  /** physical blocks the allocator manages */
  totalBlocks?: number
  /** blocks below this are never allocated (a new tree only; stored in btree_meta) */
  firstBlock?: number
  /** upper bound of cached nodes (dirty and locked nodes are never evicted) */
  cacheNodes?: number
  /**
   * a damaged free-space map (free_buckets) reads as far as it decodes
   * instead of throwing: for the offline tools that check it or rebuild it
   * (fsck), and always on a read-only database (nothing is allocated)
   */
  tolerateFreeSpace?: boolean
  /** debug checks: catch awaits while holding node locks */
  debugChecks?: boolean
  /** probability of an injected restart at each injection point */
  injectRestarts?: number
  /** injected restarts per transaction at most (keeps injection bounded) */
  injectMaxPerTrans?: number
  /** PRNG for injection (tests pass a seeded one) */
  random?: () => number
  /**
   * Treat every commit as durable (reuse freed blocks at once). Default:
   * asked from SQLite (false in WAL mode unless synchronous=FULL, which
   * better-sqlite3's WAL default is not). Only for owners that never read
   * a crashed image back (tests of the tree alone, benchmarks).
   */
  commitsDurable?: boolean
  /** told every range freed by a durable commit, which becomes allocatable when it calls release (Allocator.onReusable: discard) */
  onReusable?: (starts: readonly number[], lens: readonly number[], release: () => void) => void
}

export interface TreeStats {
  transactions: number
  /** lockrestartDo steps run (a walk is many steps of one transaction) */
  steps: number
  commits: number
  /** restarts by reason, all transactions, ever */
  restarts: Record<RestartReason, number>
  /** most restarts one step needed */
  maxRestartsOneTrans: number
  dropLocks: number
  /** nonblockingOrDrop fell back to its blocking step */
  slowpath: number
  /** longest synchronous stretch of one step, ms (body up to its first await, commit) */
  maxStepMs: number
  lockHeldAcrossAwait: number
  serializedTransactions: number
  nodeReads: number
  nodeWrites: number
  cachedNodes: number
}

interface Meta { rootId: number, height: number, nextId: number, firstBlock: number }

/** the btree_meta rows as key -> value (salvage.ts reads them too, without opening a tree) */
export function metaRows (db: Database.Database): Record<string, number> {
  return Object.fromEntries((db.prepare('SELECT key, value FROM btree_meta').all() as Array<{ key: string, value: number }>).map(r => [r.key, r.value]))
}

/** the rows fixed when a tree is made: its page size, device size and first allocatable block */
export interface FixedMeta { pageSize: number, totalBlocks: number, firstBlock: number }

/**
 * Write the btree_meta rows of m through put (INSERT OR REPLACE INTO
 * btree_meta (key, value)): root, height and next_id, and the fixed ones
 * when given (a tree writes them once; salvage.ts writes them all).
 */
export function storeMeta (put: Database.Statement, m: Omit<Meta, 'firstBlock'>, fixed?: FixedMeta): void {
  put.run('root', m.rootId)
  put.run('height', m.height)
  put.run('next_id', m.nextId)
  if (!fixed) return
  put.run('page_size', fixed.pageSize)
  put.run('total_blocks', fixed.totalBlocks)
  put.run('first_block', fixed.firstBlock)
}

export const PUT_META_SQL = 'INSERT OR REPLACE INTO btree_meta (key, value) VALUES (?, ?)'

export class ExtentTree {
  readonly db: Database.Database
  readonly pageSize: number
  readonly cache: NodeCache
  readonly alloc: Allocator
  readonly opts: Required<Omit<TreeOptions, 'random' | 'commitsDurable' | 'firstBlock' | 'onReusable' | 'tolerateFreeSpace'>> & { random: () => number }
  /** blocks below it are never allocated */
  readonly firstBlock: number
  meta: Meta
  private nextTransId = 1
  readonly stats: TreeStats
  /** transactions that hold node locks right now (a synchronous transaction may not start then) */
  lockHolders = 0
  /**
   * Is every commit durable when it returns? Not in WAL mode with
   * synchronous=NORMAL (the mounted filesystem): there the owner calls
   * markDurable() after a WAL sync, and blocks freed by commits wait for it.
   */
  readonly commitsDurable: boolean
  /** fairness: a transaction that restarted too often runs alone */
  serialHolder: LockOwner | null = null
  private serialWaiters: Array<() => void> = []

  private constructor (db: Database.Database, opts: TreeOptions) {
    this.db = db
    const envInject = Number(process.env.FOLIOFS_INJECT_RESTARTS ?? 0)
    this.opts = {
      pageSize: opts.pageSize ?? 4096,
      totalBlocks: opts.totalBlocks ?? 2 ** 32,
      cacheNodes: opts.cacheNodes ?? 4096,
      debugChecks: opts.debugChecks ?? process.env.FOLIOFS_DEBUG === '1',
      injectRestarts: opts.injectRestarts ?? (Number.isFinite(envInject) ? envInject : 0),
      injectMaxPerTrans: opts.injectMaxPerTrans ?? 4,
      random: opts.random ?? Math.random
    }
    this.pageSize = this.opts.pageSize
    const wal = String(db.pragma('journal_mode', { simple: true })).toLowerCase() === 'wal'
    this.commitsDurable = opts.commitsDurable ?? (!wal || Number(db.pragma('synchronous', { simple: true })) >= 2)
    this.cache = new NodeCache(db, this.pageSize, this.opts.cacheNodes)
    const restarts = Object.fromEntries(RESTART_REASONS.map(r => [r, 0])) as Record<RestartReason, number>
    this.stats = {
      transactions: 0, steps: 0, commits: 0, restarts, maxRestartsOneTrans: 0, dropLocks: 0, slowpath: 0, maxStepMs: 0, lockHeldAcrossAwait: 0,
      serializedTransactions: 0, nodeReads: 0, nodeWrites: 0, cachedNodes: 0
    }
    // a new tree (mkfs) has no meta and no node yet; one with nodes that
    // lost its meta: making a fresh root would overwrite node 1 and map nothing
    const unusable = ExtentTree.metaUnusable(db)
    if (unusable !== null) throw new BtreeError('node_corrupt', unusable)
    const m = this.readMeta()
    const initialized = m !== null
    this.firstBlock = m ? m.firstBlock : opts.firstBlock ?? 0
    this.alloc = Allocator.load(db, this.opts.totalBlocks, initialized, this.firstBlock, db.readonly || opts.tolerateFreeSpace === true)
    this.alloc.onReusable = opts.onReusable ?? null
    if (m) {
      this.meta = m
    } else {
      this.meta = { rootId: 1, height: 1, nextId: 2, firstBlock: this.firstBlock }
      const root = new BtreeNode(1, 0)
      root.dirty = true
      this.cache.add(root)
      db.transaction(() => {
        this.cache.write(root)
        this.writeMeta()
        this.alloc.persist(db)
      })()
    }
  }

  /** Open (creating tables and an empty root if needed) the tree stored in db. */
  static open (db: Database.Database, opts: TreeOptions = {}): ExtentTree {
    if (!db.readonly) db.exec(BTREE_SCHEMA)
    return new ExtentTree(db, opts)
  }

  private readMeta (): Meta | null {
    const m = metaRows(this.db)
    if (Object.keys(m).length === 0) return null // metaUnusable() checked the rest
    if (m.page_size !== undefined && m.page_size !== this.pageSize) {
      throw new BtreeError('node_corrupt', `tree was created with ${m.page_size}-byte pages, opened with ${this.pageSize}`)
    }
    return { rootId: m.root, height: m.height, nextId: m.next_id, firstBlock: m.first_block ?? 0 }
  }

  private written: Meta | null = null
  private putMeta: Database.Statement | null = null

  /** write the tree meta if it changed since last written */
  writeMeta (): void {
    const m = this.meta
    const w = this.written
    if (w && w.rootId === m.rootId && w.height === m.height && w.nextId === m.nextId) return
    this.putMeta ??= this.db.prepare(PUT_META_SQL)
    storeMeta(this.putMeta, m, w ? undefined : { pageSize: this.pageSize, totalBlocks: this.opts.totalBlocks, firstBlock: this.firstBlock })
    this.written = { ...m }
  }

  /** forget what writeMeta wrote (its SQLite transaction rolled back) */
  metaRolledBack (): void {
    this.written = null
  }

  /** id for a new transaction (trans.ts) */
  newTransId (): number {
    this.stats.transactions++
    return this.nextTransId++
  }

  newNode (level: number): BtreeNode {
    const n = new BtreeNode(this.meta.nextId++, level)
    n.dirty = true
    this.cache.add(n)
    return n
  }

  noteRestart (reason: RestartReason): void {
    this.stats.restarts[reason]++
  }

  async waitSerial (trans: LockOwner): Promise<void> {
    while (this.serialHolder !== null && this.serialHolder !== trans) {
      await new Promise<void>(resolve => this.serialWaiters.push(resolve))
    }
  }

  takeSerial (trans: LockOwner): void {
    if (this.serialHolder === null) {
      this.serialHolder = trans
      this.stats.serializedTransactions++
    }
  }

  releaseSerial (trans: LockOwner): void {
    if (this.serialHolder !== trans) return
    this.serialHolder = null
    const w = this.serialWaiters
    this.serialWaiters = []
    for (const wake of w) wake()
  }

  /**
   * Structural check (fsck): page checksums, key order, separators as lower
   * bounds, node fill, uniform leaf depth, extents that do not overlap and
   * are not free in the allocator, and no unreferenced node rows.
   */
  verify (): string[] {
    const errors: string[] = []
    const seen = new Set<number>()
    const leafCap = leafCapacity(this.pageSize)
    const intCap = interiorCapacity(this.pageSize)
    let prev: Extent | null = null
    let mapped = 0
    const walk = (id: number, level: number, lo: Pos | null, hi: Pos | null, isRoot: boolean): void => {
      if (seen.has(id)) { errors.push(`node ${id} reachable twice`); return }
      seen.add(id)
      let n: BtreeNode
      try { n = this.cache.get(id) } catch (e) { errors.push((e as Error).message); return }
      if (n.level !== level) errors.push(`node ${id}: level ${n.level}, expected ${level}`)
      const cap = n.isLeaf ? leafCap : intCap
      // splits at the right edge may leave a short rightmost node (balance_quick); only empty is wrong
      if (!isRoot && n.count === 0) errors.push(`node ${id}: empty`)
      if (n.count > cap) errors.push(`node ${id}: overfull (${n.count} > ${cap})`)
      if (n.isLeaf) {
        for (const e of n.extents) {
          if ((lo && cmpPos(e, lo) < 0) || (hi && cmpPos(e, hi) >= 0)) errors.push(`node ${id}: key ${e.ino}:${e.off} outside its separators`)
          if (prev && cmpPos(prev, e) >= 0) errors.push(`node ${id}: keys out of order at ${e.ino}:${e.off}`)
          if (prev && prev.ino === e.ino && prev.off + prev.len > e.off) errors.push(`extents overlap at ${e.ino}:${e.off}`)
          if (e.len <= 0) errors.push(`extent ${e.ino}:${e.off} has length ${e.len}`)
          const f = this.alloc.firstFreeIn(e.pblk, e.len)
          if (f >= 0) errors.push(`extent ${e.ino}:${e.off} maps free block ${f}`)
          mapped += e.len
          prev = e
        }
        return
      }
      if (n.keys.length !== n.children.length) errors.push(`node ${id}: ${n.keys.length} keys for ${n.children.length} children`)
      for (let i = 1; i < n.keys.length; i++) if (cmpPos(n.keys[i - 1], n.keys[i]) >= 0) errors.push(`node ${id}: separators out of order at ${i}`)
      // keys[0] bounds child 0 from below too (except in the root, where it is -infinity)
      if (!isRoot && lo && cmpPos(n.keys[0], lo) < 0) errors.push(`node ${id}: first separator below its parent's`)
      for (let i = 0; i < n.children.length; i++) {
        walk(n.children[i], level - 1, i === 0 ? (isRoot ? lo : n.keys[0]) : n.keys[i], i + 1 < n.keys.length ? n.keys[i + 1] : hi, false)
      }
    }
    walk(this.meta.rootId, this.meta.height - 1, null, null, true)
    const rows = this.db.prepare('SELECT id FROM btree_nodes').pluck().all() as number[]
    for (const id of rows) if (!seen.has(id)) errors.push(`node ${id} stored but unreachable`)
    const free = this.alloc.durableFree
    if (this.firstBlock + mapped + free !== this.alloc.total) errors.push(`space accounting: ${this.firstBlock} reserved + ${mapped} mapped + ${free} free != ${this.alloc.total}`)
    if (this.alloc.loadError !== null) errors.push(`free space: map damaged: ${this.alloc.loadError}`)
    for (const e of this.alloc.check()) errors.push(`free space: ${e}`)
    this.cache.trim()
    return errors
  }

  /**
   * Why no tree can be opened on db at all, even read-only (the
   * constructor throws): its btree_meta rows are gone while nodes remain,
   * or some are missing. null when they can be read (a root they name may
   * still be missing: such a tree opens, and what it mapped reads EIO).
   * Only `fsck --repair` (salvage.ts) gets the files back then.
   */
  static metaUnusable (db: Database.Database): string | null {
    const m = metaRows(db)
    if (Object.keys(m).length === 0) {
      const nodes = db.prepare('SELECT count(*) FROM btree_nodes').pluck().get() as number
      return nodes > 0 ? `btree_meta is missing, and the tree has ${nodes} nodes` : null
    }
    if (typeof m.root !== 'number' || typeof m.height !== 'number' || typeof m.next_id !== 'number') return 'btree_meta incomplete'
    return null
  }

  /**
   * Mount's check: every stored node page passes its page checks (type,
   * size, crc32, cell count), reading each row once, without building nodes
   * and without the structural walk of verify(); the meta names a root
   * that exists; every free_buckets row decodes. What is wrong, at most
   * `limit` lines. Cost: one row read and one crc per node, one decode per
   * free-space row.
   */
  static checkPages (db: Database.Database, pageSize = 4096, limit = 20, totalBlocks = Number.MAX_SAFE_INTEGER): string[] {
    const errors: string[] = []
    const ids = new Set<number>()
    for (const r of db.prepare('SELECT id, page FROM btree_nodes').iterate() as Iterable<{ id: number, page: Buffer }>) {
      ids.add(r.id)
      const problem = Buffer.isBuffer(r.page) ? pageProblem(r.page, pageSize) : 'page is not a blob'
      if (problem) errors.push(`node_corrupt: node ${r.id}: ${problem}`)
      if (errors.length >= limit) return errors
    }
    const m = metaRows(db)
    const unopenable = ExtentTree.metaUnusable(db)
    if (unopenable !== null) errors.push(`node_corrupt: ${unopenable}`)
    else if (Object.keys(m).length > 0 && !ids.has(m.root)) errors.push(`node_corrupt: root node ${m.root} is missing`)
    try {
      decodeFreeMap(db, totalBlocks, () => {})
    } catch (e) {
      if (!(e instanceof BtreeError)) throw e
      errors.push(e.message)
    }
    return errors
  }

  /** every extent of every leaf, in key order (offline tools: fsck --repair; throws on a damaged node) */
  * allExtents (): Generator<Extent> {
    const walk = function * (t: ExtentTree, id: number): Generator<Extent> {
      const n = t.cache.get(id)
      if (n.isLeaf) yield * n.extents
      else for (const c of n.children) yield * walk(t, c)
    }
    yield * walk(this, this.meta.rootId)
  }

  /**
   * Offline repair (fsck --repair, nothing else open on the image): rewrite
   * free_buckets as exactly the blocks no extent maps, in one SQLite
   * transaction; returns the free blocks before and after. The caller
   * reopens the tree afterwards (this one's allocator is stale). Misuse: on
   * a live tree it would free reservations in flight.
   */
  rebuildFreeSpace (): { before: number, after: number } {
    const used = [...this.allExtents()].map(e => ({ start: e.pblk, end: e.pblk + e.len })).sort((a, b) => a.start - b.start)
    const free: Array<{ start: number, len: number }> = []
    let at = this.firstBlock
    for (const u of used) {
      if (u.start > at) free.push({ start: at, len: u.start - at })
      at = Math.max(at, u.end)
    }
    if (at < this.alloc.total) free.push({ start: at, len: this.alloc.total - at })
    const before = this.alloc.durableFree
    this.db.transaction(() => {
      this.db.exec('DELETE FROM free_buckets')
      const put = this.db.prepare('INSERT INTO free_buckets (bucket, ranges) VALUES (?, ?)')
      for (const [b, blob] of bucketsOf(free)) put.run(b, blob)
    })()
    return { before, after: free.reduce((n, r) => n + r.len, 0) }
  }

  /** the owner synced the WAL: everything committed up to mark (commitMark before the sync; default all) is durable */
  markDurable (mark?: number): void {
    this.alloc.markDurable(mark)
  }

  /** take before syncing the WAL, hand to markDurable after */
  get commitMark (): number { return this.alloc.commitMark }

  /** blocks that can be allocated now */
  freeBlocks (): number {
    return this.alloc.free
  }

  /** blocks freed by commits not known durable yet (allocatable after the next markDurable) */
  pendingFreeBlocks (): number {
    return this.alloc.pending
  }

  /** commits with frees that no markDurable has covered yet */
  undurableFreeCommits (): number {
    return this.alloc.undurableCommits
  }

  /** give back reservations a step detached (BtreeTrans.detachReserved) that will never be committed */
  unreserve (pieces: readonly Range[]): void {
    for (const p of pieces) this.alloc.unreserve(p)
  }

  /** free ranges as of the last commit, ascending (offline tools only: a live mount reserves out of them) */
  freeRanges (): Generator<Range> {
    return this.alloc.durableRanges()
  }

  /**
   * Whether committed extents with data map blocks at or past `blocks`
   * (the data area's length in blocks): one past the last such block, or
   * null. Unwritten extents have no data (preallocation does not grow the
   * data area). Cheap when the free-space map says nothing at all is
   * mapped that far; only otherwise are the leaves walked. Throws on a
   * damaged node.
   */
  writtenPast (blocks: number): number | null {
    if (this.alloc.highWater <= blocks) return null
    let end = 0
    for (const e of this.allExtents()) if (!(e.flags & EXT_UNWRITTEN)) end = Math.max(end, e.pblk + e.len)
    return end > blocks ? end : null
  }

  /** blocks mapped by committed extents */
  usedBlocks (): number {
    return this.alloc.total - this.firstBlock - this.alloc.durableFree
  }

  /** shape of the tree and free space (stats) */
  summary (): { height: number, nodes: number, freeFragments: number, freeBlocks: number } {
    return { height: this.meta.height, nodes: this.cache.stored(), freeFragments: this.alloc.fragments, freeBlocks: this.alloc.free }
  }

  snapshotStats (): TreeStats {
    return {
      ...this.stats,
      restarts: { ...this.stats.restarts },
      nodeReads: this.cache.reads,
      nodeWrites: this.cache.writes,
      cachedNodes: this.cache.size
    }
  }
}
