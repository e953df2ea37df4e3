// Offline salvage of a damaged extent tree (fsck --repair): rebuild the
// tree from the leaves that pass their page checks, drop the ones that
// do not, and rewrite the free-space map to match.
//
// Why this is possible: every row of btree_nodes is a live node (verify()
// reports unreferenced rows), and a leaf holds whole extents with their
// keys (ino, off): the leaves alone say everything the tree maps, and
// interior nodes only say where to find them. So a damaged interior node
// loses nothing, and a damaged leaf loses exactly its own extents: the
// ranges of files it mapped become holes (read as zeros), and their
// blocks become free. Nothing else is changed.
//
// The new tree is bulk-loaded bottom-up (leaves filled to LOAD_FILL of
// their capacity, then each level of interior nodes over the one below,
// keys[i] = the lowest key under child i) with fresh node ids, and written
// with its meta and the rebuilt free space in one SQLite transaction: a
// crash leaves the old tree or the new one.
//
// Misuse: running it on a mounted image (the daemon's node cache and
// allocator would be stale), or on an image whose SQLite btree_nodes table
// itself is damaged (rows may be missing: their extents would be dropped
// as if the leaf were damaged; fsck --repair refuses those images first).
import type Database from 'better-sqlite3'
import { BtreeNode, cmpPos, deserializeNode, interiorCapacity, leafCapacity, pageProblem, serializeNode, type Extent, type Pos } from './node'
import { ExtentTree, metaRows, PUT_META_SQL, storeMeta, type TreeOptions } from './tree'

/** leaves and interior nodes are loaded this full (room for inserts after the repair) */
const LOAD_FILL = 0.75

export interface SalvageResult {
  /** nodes that failed their checks and were dropped, with why */
  dropped: Array<{ id: number, problem: string }>
  /** leaves kept, and the extents they held */
  leaves: number
  extents: number
  /** extents dropped because they overlapped one kept before them (a damaged image can hold both) */
  overlapping: number
  /** blocks free before and after */
  freeBefore: number
  freeAfter: number
}

/** the leaves' extents (key order) and the nodes that failed their checks */
function readLeaves (db: Database.Database, pageSize: number): { extents: Extent[], dropped: SalvageResult['dropped'], leaves: number } {
  const extents: Extent[] = []
  const dropped: SalvageResult['dropped'] = []
  let leaves = 0
  for (const r of db.prepare('SELECT id, page FROM btree_nodes ORDER BY id').iterate() as Iterable<{ id: number, page: unknown }>) {
    const page = r.page
    const problem = Buffer.isBuffer(page) ? pageProblem(page, pageSize) : 'page is not a blob'
    if (problem) { dropped.push({ id: r.id, problem }); continue }
    let n: BtreeNode
    try {
      n = deserializeNode(r.id, page as Buffer, pageSize)
    } catch (e) {
      dropped.push({ id: r.id, problem: (e as Error).message })
      continue
    }
    if (!n.isLeaf) continue
    leaves++
    extents.push(...n.extents)
  }
  extents.sort(cmpPos)
  return { extents, dropped, leaves }
}

/** extents without overlaps (a later one overlapping the one kept before it is dropped) */
function withoutOverlaps (sorted: Extent[]): { kept: Extent[], overlapping: number } {
  const kept: Extent[] = []
  let overlapping = 0
  for (const e of sorted) {
    const prev = kept[kept.length - 1]
    if (e.len <= 0 || (prev && prev.ino === e.ino && prev.off + prev.len > e.off)) { overlapping++; continue }
    kept.push(e)
  }
  return { kept, overlapping }
}

/** cut items into groups of at most per (the last one may be short, never empty unless items is) */
function groups<T> (items: T[], per: number): T[][] {
  const out: T[][] = []
  for (let i = 0; i < items.length; i += per) out.push(items.slice(i, i + per))
  return out.length ? out : [[]]
}

/**
 * Rebuild the extent tree of db (offline) from its intact leaves; see the
 * top of the file. opts: the tree's page size and total blocks.
 */
export function salvageExtentTree (db: Database.Database, opts: Required<Pick<TreeOptions, 'pageSize' | 'totalBlocks'>>): SalvageResult {
  const meta = metaRows(db)
  const pageSize = typeof meta.page_size === 'number' ? meta.page_size : opts.pageSize // what the tree was made with
  const totalBlocks = opts.totalBlocks
  const firstBlock = typeof meta.first_block === 'number' ? meta.first_block : 0
  const { extents, dropped, leaves } = readLeaves(db, pageSize)
  const { kept, overlapping } = withoutOverlaps(extents)
  let freeBefore = 0
  let freeAfter = 0
  db.transaction(() => {
    db.exec('DELETE FROM btree_nodes')
    const put = db.prepare('INSERT INTO btree_nodes (id, page) VALUES (?, ?)')
    let nextId = 1
    const built: BtreeNode[] = []
    const node = (lvl: number): BtreeNode => {
      const n = new BtreeNode(nextId++, lvl)
      built.push(n)
      return n
    }
    // leaves, then interior levels over them until one node is left: the root
    let level = groups(kept, Math.max(1, Math.floor(leafCapacity(pageSize) * LOAD_FILL))).map(part => {
      const n = node(0)
      n.extents = part
      return n
    })
    let height = 1
    while (level.length > 1) {
      level = groups(level, Math.max(2, Math.floor(interiorCapacity(pageSize) * LOAD_FILL))).map(part => {
        const n = node(height)
        n.children = part.map(c => c.id)
        n.keys = part.map(c => c.minKey() as Pos) // no child is empty: only a lone root leaf can be
        return n
      })
      height++
    }
    const root = level[0]
    for (const n of built) put.run(n.id, serializeNode(n, pageSize))
    storeMeta(db.prepare(PUT_META_SQL), { rootId: root.id, height, nextId }, { pageSize, totalBlocks, firstBlock })
    const tree = ExtentTree.open(db, { pageSize, totalBlocks, tolerateFreeSpace: true })
    const r = tree.rebuildFreeSpace()
    freeBefore = r.before
    freeAfter = r.after
  })()
  return { dropped, leaves, extents: kept.length, overlapping, freeBefore, freeAfter }
}
