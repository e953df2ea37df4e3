// Free-space map and block allocator. Free space is a sorted list of
// disjoint [start, start+len) ranges, persisted in the free_space table
// (only changed rows are written, in the commit's SQLite transaction).
// Allocation prefers the block right after the file's previous extent, then
// the first range after that hint that fits, so files stay contiguous.
import type Database from 'better-sqlite3'

export interface Range { pblk: number, len: number }

export class Allocator {
  private starts: number[] = []
  private lens: number[] = []
  private freeCount = 0
  private readonly changed = new Set<number>()
  readonly total: number

  constructor (total: number) {
    this.total = total
  }

  static load (db: Database.Database, total: number, initialized: boolean): Allocator {
    const a = new Allocator(total)
    if (!initialized) {
      a.insertRange(0, total)
      a.freeCount = total
      return a
    }
    for (const r of db.prepare('SELECT start, len FROM free_space ORDER BY start').iterate() as Iterable<{ start: number, len: number }>) {
      a.starts.push(r.start)
      a.lens.push(r.len)
      a.freeCount += r.len
    }
    return a
  }

  get free (): number { return this.freeCount }
  get fragments (): number { return this.starts.length }

  /** index of the last range with start <= pblk, or -1 */
  private findLE (pblk: number): number {
    let lo = 0
    let hi = this.starts.length - 1
    let ans = -1
    while (lo <= hi) {
      const mid = (lo + hi) >> 1
      if (this.starts[mid] <= pblk) { ans = mid; lo = mid + 1 } else hi = mid - 1
    }
    return ans
  }

  private setRange (i: number, start: number, len: number): void {
    this.changed.add(this.starts[i])
    this.starts[i] = start
    this.lens[i] = len
    this.changed.add(start)
  }

  private removeRange (i: number): void {
    this.changed.add(this.starts[i])
    this.starts.splice(i, 1)
    this.lens.splice(i, 1)
  }

  private insertRange (start: number, len: number): void {
    const i = this.findLE(start) + 1
    this.starts.splice(i, 0, start)
    this.lens.splice(i, 0, len)
    this.changed.add(start)
  }

  /** take [pblk, pblk+len) out of range i (which must contain it) */
  private carve (i: number, pblk: number, len: number): Range {
    const s = this.starts[i]
    const l = this.lens[i]
    const endR = s + l
    if (pblk === s && len === l) this.removeRange(i)
    else if (pblk === s) this.setRange(i, s + len, l - len)
    else if (pblk + len === endR) this.setRange(i, s, l - len)
    else {
      this.setRange(i, s, pblk - s)
      this.insertRange(pblk + len, endR - pblk - len)
    }
    this.freeCount -= len
    return { pblk, len }
  }

  /**
   * Allocate up to `want` contiguous blocks, preferring `hint`. Returns a
   * shorter range when no free range is long enough; null when full.
   */
  alloc (want: number, hint = 0): Range | null {
    if (want <= 0 || this.starts.length === 0) return null
    hint = Math.max(0, Math.min(hint, this.total - 1))
    const i = this.findLE(hint)
    const atHint = i >= 0 && hint < this.starts[i] + this.lens[i] ? this.starts[i] + this.lens[i] - hint : 0
    if (atHint >= want) return this.carve(i, hint, want)
    let best = -1
    const n = this.starts.length
    for (let k = 0; k < n; k++) {
      const j = (i + 1 + k) % n // first fit, scanning forward from the hint and wrapping
      if (this.lens[j] >= want) return this.carve(j, this.starts[j], want)
      if (best < 0 || this.lens[j] > this.lens[best]) best = j
    }
    // nothing fits whole: continue the file where it is if possible, else the largest piece
    if (atHint > 0) return this.carve(i, hint, atHint)
    return this.carve(best, this.starts[best], this.lens[best])
  }

  /** take exactly [pblk, pblk+len), which must be free (undo of a release) */
  take (pblk: number, len: number): void {
    const i = this.findLE(pblk)
    if (i < 0 || pblk + len > this.starts[i] + this.lens[i]) throw new Error(`take of [${pblk}, +${len}): not free`)
    this.carve(i, pblk, len)
  }

  /** return [pblk, pblk+len) to the free map, merging with its neighbours */
  release (pblk: number, len: number): void {
    if (len <= 0) return
    if (pblk < 0 || pblk + len > this.total) throw new Error(`free of [${pblk}, +${len}) outside the device`)
    const i = this.findLE(pblk)
    if (i >= 0 && this.starts[i] + this.lens[i] > pblk) throw new Error(`double free of block ${pblk}`)
    if (i + 1 < this.starts.length && this.starts[i + 1] < pblk + len) throw new Error(`double free of block ${this.starts[i + 1]}`)
    const mergeLeft = i >= 0 && this.starts[i] + this.lens[i] === pblk
    const mergeRight = i + 1 < this.starts.length && this.starts[i + 1] === pblk + len
    if (mergeLeft && mergeRight) {
      this.setRange(i, this.starts[i], this.lens[i] + len + this.lens[i + 1])
      this.removeRange(i + 1)
    } else if (mergeLeft) {
      this.setRange(i, this.starts[i], this.lens[i] + len)
    } else if (mergeRight) {
      this.setRange(i + 1, pblk, len + this.lens[i + 1])
    } else {
      this.insertRange(pblk, len)
    }
    this.freeCount += len
  }

  isFree (pblk: number): boolean {
    const i = this.findLE(pblk)
    return i >= 0 && pblk < this.starts[i] + this.lens[i]
  }

  /** write changed rows (inside the caller's SQLite transaction) */
  private stmts: { del: Database.Statement, put: Database.Statement } | null = null

  persist (db: Database.Database): void {
    if (this.changed.size === 0) return
    this.stmts ??= {
      del: db.prepare('DELETE FROM free_space WHERE start = ?'),
      put: db.prepare('INSERT OR REPLACE INTO free_space (start, len) VALUES (?, ?)')
    }
    const { del, put } = this.stmts
    for (const s of this.changed) {
      const i = this.findLE(s)
      if (i >= 0 && this.starts[i] === s) put.run(s, this.lens[i])
      else del.run(s)
    }
    this.changed.clear()
  }
}
