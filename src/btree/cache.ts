// The node cache: every BtreeNode in memory is in here, at most one object
// per node id. Identity matters: locks, sequence numbers and a
// transaction's read set live on the object, so a node that was evicted and
// read back is a *different* node to everyone who held the old object.
//
// Eviction rules (what went wrong before: a commit's own nodes were
// evicted under it, re-read as stale copies, and both copies written):
//  - get() never evicts. Eviction happens only in trim(), which callers run
//    at safe points: after a commit and when a transaction step ends.
//  - a node is evictable only if it is clean, unlocked and unpinned. A
//    transaction pins every node in its read set from first lock until its
//    step ends, so relock after dropLocksDo finds the same objects.
// The bound is therefore soft: a single step may hold more nodes than
// cacheNodes (a large commit, a long scan); trim() brings the cache back to
// 7/8 of the bound, least recently used first (a clock stamp set on get;
// re-inserting into the Map on every get instead made V8 rehash it
// constantly: 0.5 us a get at 5k nodes, growing with the cache).
import type Database from 'better-sqlite3'
import { BtreeError } from './errors'
import { type BtreeNode, deserializeNode, serializeNode } from './node'

export class NodeCache {
  private readonly nodes = new Map<number, BtreeNode>()
  private readonly get1: Database.Statement
  private readonly put1: Database.Statement
  private readonly del1: Database.Statement
  private readonly count1: Database.Statement
  private tick = 0
  reads = 0
  writes = 0

  constructor (db: Database.Database, readonly pageSize: number, readonly maxNodes: number) {
    this.get1 = db.prepare('SELECT page FROM btree_nodes WHERE id = ?').pluck()
    this.put1 = db.prepare('INSERT OR REPLACE INTO btree_nodes (id, page) VALUES (?, ?)')
    this.del1 = db.prepare('DELETE FROM btree_nodes WHERE id = ?')
    this.count1 = db.prepare('SELECT count(*) FROM btree_nodes').pluck()
  }

  /** the cached node object, if any, without touching the LRU order (relock compares identity) */
  peek (id: number): BtreeNode | undefined { return this.nodes.get(id) }

  /** the node, read from its page if not cached; never evicts */
  get (id: number): BtreeNode {
    let n = this.nodes.get(id)
    if (n) {
      n.lastUse = ++this.tick
      return n
    }
    const page = this.get1.get(id) as Buffer | undefined
    if (!page) throw new BtreeError('node_corrupt', `node ${id} is referenced but missing`)
    n = deserializeNode(id, page, this.pageSize)
    n.lastUse = ++this.tick
    this.reads++
    this.nodes.set(id, n)
    return n
  }

  /** a node created in memory (dirty until its commit writes it) */
  add (n: BtreeNode): void {
    n.lastUse = ++this.tick
    this.nodes.set(n.id, n)
  }

  /** forget a node (freed by a commit, or created by one that rolled back) */
  drop (id: number): void {
    this.nodes.delete(id)
  }

  /** safe point: evict least recently used evictable nodes down to 7/8 of the bound */
  trim (): void {
    if (this.nodes.size <= this.maxNodes) return
    const target = Math.floor(this.maxNodes * 7 / 8)
    const victims = [...this.nodes.values()].filter(n => !n.dirty && n.pins === 0 && !n.lock.held()).sort((a, b) => a.lastUse - b.lastUse)
    for (const n of victims) {
      if (this.nodes.size <= target) break
      this.nodes.delete(n.id)
    }
  }

  /** write a node's page (inside the commit's SQLite transaction) */
  write (n: BtreeNode): void {
    this.put1.run(n.id, serializeNode(n, this.pageSize))
    n.dirty = false
    this.writes++
  }

  /** delete a freed node's row (inside the commit's SQLite transaction) */
  erase (id: number): void {
    this.del1.run(id)
  }

  /** nodes stored in the image */
  stored (): number {
    return this.count1.get() as number
  }

  get size (): number { return this.nodes.size }
}
