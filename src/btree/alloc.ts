// Free-space map and block allocator.
//
// Two range sets:
//   avail   - what alloc() may hand out: free blocks minus every live
//             transaction's reservations. In memory only.
//   durable - exactly the rows of the free_space table (start INTEGER
//             PRIMARY KEY, len): free as of the last committed transaction.
//
// A reservation (alloc) comes out of `avail` at once, so no two
// transactions get the same blocks, but `durable` changes only when the
// reserving transaction commits (commitUse). Persisting writes only the rows
// of `durable` that changed, so one transaction's commit can never write
// another's uncommitted reservation as used (a crash would leak it). A
// transaction that restarts or ends without committing hands its
// reservations back with unreserve().
//
// Blocks freed by a commit go to `durable` inside the commit, then wait in
// `pendingFree` until the commit is durable (markDurable(), after a WAL
// sync): until then a crash brings back the mapping that points at them,
// so their old contents must not be overwritten. Only then are they in
// `avail` again.
//
// Invariant (verify): mapped blocks + durable.total = total, when no
// commit is in flight; avail is durable minus outstanding reservations.
//
// Allocation prefers the block right after the file's previous extent
// (hint), then the first range after the hint that fits, so files stay
// contiguous; failing that, the longest range.
import type Database from 'better-sqlite3'
import { RangeSet, carve, merge, type Range } from './rangeset'

export type { Range }

export class Allocator {
  private readonly avail = new RangeSet()
  private readonly durable = new RangeSet(true)
  /** freed by commits that may not be durable yet */
  private pendingFree: Range[] = []
  private pendingBlocks = 0
  readonly total: number
  private stmts: Record<'del' | 'put' | 'delMany' | 'putMany', Database.Statement> | null = null

  private constructor (total: number) {
    this.total = total
  }

  static load (db: Database.Database, total: number, initialized: boolean, firstBlock = 0): Allocator {
    const a = new Allocator(total)
    if (!initialized) {
      a.durable.insert(firstBlock, total - firstBlock)
      a.avail.insert(firstBlock, total - firstBlock)
      return a
    }
    for (const r of db.prepare('SELECT start, len FROM free_space ORDER BY start').iterate() as Iterable<{ start: number, len: number }>) {
      a.durable.insert(r.start, r.len)
      a.avail.insert(r.start, r.len)
    }
    a.durable.changed?.clear()
    return a
  }

  /** blocks that can be allocated now */
  get free (): number { return this.avail.total }
  /** blocks freed by commits that are not known durable yet (free after the next markDurable) */
  get pending (): number { return this.pendingBlocks }
  /** blocks free as of the last commit (what the image says) */
  get durableFree (): number { return this.durable.total }
  /** free ranges (fragmentation) */
  get fragments (): number { return this.durable.size }

  /**
   * Reserve up to `want` contiguous blocks, preferring `hint`. Returns a
   * shorter range when no free range is long enough; null when full.
   */
  alloc (want: number, hint = 0): Range | null {
    const s = this.avail
    if (want <= 0 || s.size === 0) return null
    hint = Math.max(0, Math.min(hint, this.total - 1))
    const at = s.findLE(hint)
    const atHint = at && hint < s.end(at) ? s.end(at) - hint : 0
    let r: Range
    if (atHint >= want) r = { pblk: hint, len: want }
    else {
      const fit = s.firstFit(at ? s.next(at) : s.first(), want)
      if (fit) r = { pblk: s.start(fit), len: want }
      else if (atHint > 0) r = { pblk: hint, len: atHint } // continue the file where it is
      else {
        const big = s.longest() as NonNullable<ReturnType<RangeSet['longest']>>
        r = { pblk: s.start(big), len: s.len(big) }
      }
    }
    carve(s, r.pblk, r.len)
    return r
  }

  /** hand a reservation back (its transaction restarted or ended uncommitted) */
  unreserve (r: Range): void {
    this.mergeOrThrow(this.avail, r, 'unreserve')
  }

  /** inside a commit: reserved blocks are now mapped */
  commitUse (r: Range): void {
    if (!carve(this.durable, r.pblk, r.len)) throw new Error(`commit of [${r.pblk}, +${r.len}): not free in the free-space map`)
  }

  /** inside a commit: blocks no longer mapped */
  commitFree (r: Range): void {
    if (r.pblk < 0 || r.pblk + r.len > this.total) throw new Error(`free of [${r.pblk}, +${r.len}) outside the device`)
    this.mergeOrThrow(this.durable, r, 'free')
  }

  /** undo commitUse/commitFree after the commit's SQLite transaction failed */
  undoUse (r: Range): void { this.mergeOrThrow(this.durable, r, 'undo') }
  undoFree (r: Range): void { carve(this.durable, r.pblk, r.len) }

  /** the commit is in the image (not necessarily durable): its freed blocks wait for markDurable */
  committed (freed: Range[]): void {
    for (const r of freed) { this.pendingFree.push(r); this.pendingBlocks += r.len }
  }

  /** every commit so far is durable: blocks they freed may be handed out */
  markDurable (): void {
    for (const r of this.pendingFree) this.mergeOrThrow(this.avail, r, 'release')
    this.pendingFree = []
    this.pendingBlocks = 0
  }

  private mergeOrThrow (s: RangeSet, r: Range, what: string): void {
    if (r.len <= 0) return
    const dup = merge(s, r.pblk, r.len)
    if (dup >= 0) throw new Error(`${what} of [${r.pblk}, +${r.len}): block ${dup} is already free`)
  }

  /** is pblk free in the image (not mapped by a committed extent)? */
  isFree (pblk: number): boolean {
    return this.durable.containing(pblk) !== null
  }

  /** the first block of [pblk, pblk+len) that is free in the image, or -1 */
  firstFreeIn (pblk: number, len: number): number {
    const d = this.durable
    const a = d.findLE(pblk)
    if (a && d.end(a) > pblk) return pblk
    const b = a ? d.next(a) : d.first()
    return b && d.start(b) < pblk + len ? d.start(b) : -1
  }

  /**
   * Write the changed rows of `durable` (inside the commit's SQLite
   * transaction). Many changes go as two statements over a JSON array
   * (a truncate step changes thousands of rows; one statement per row
   * cost more than the rest of the step).
   */
  persist (db: Database.Database): void {
    const changed = this.durable.changed as Set<number>
    if (changed.size === 0) return
    this.stmts ??= {
      del: db.prepare('DELETE FROM free_space WHERE start = ?'),
      put: db.prepare('INSERT OR REPLACE INTO free_space (start, len) VALUES (?, ?)'),
      delMany: db.prepare('DELETE FROM free_space WHERE start IN (SELECT value FROM json_each(?))'),
      putMany: db.prepare('INSERT OR REPLACE INTO free_space (start, len) SELECT value ->> 0, value ->> 1 FROM json_each(?)')
    }
    const st = this.stmts
    const dels: number[] = []
    const puts: Array<[number, number]> = []
    for (const s of changed) {
      const a = this.durable.findLE(s)
      if (a && this.durable.start(a) === s) puts.push([s, this.durable.len(a)])
      else dels.push(s)
    }
    if (dels.length > 4) st.delMany.run(JSON.stringify(dels))
    else for (const s of dels) st.del.run(s)
    if (puts.length > 4) st.putMany.run(JSON.stringify(puts))
    else for (const [s, l] of puts) st.put.run(s, l)
  }

  /** the SQLite transaction that persisted the changes committed */
  persisted (): void {
    this.durable.changed?.clear()
  }

  /** invariant violations of both sets (debug checks) */
  check (): string[] {
    return [...this.avail.check().map(e => `avail: ${e}`), ...this.durable.check().map(e => `durable: ${e}`)]
  }
}
