// A set of disjoint block ranges [start, start+len), kept sorted in chunks.
//
// Free space of a fragmented image has millions of ranges; one sorted array
// edited with splice makes every insert or removal O(n) (truncating 300k
// extents took a minute). Ranges are kept in chunks of at most 2*CHUNK
// entries instead, with each chunk's first start in `mins` for a binary
// search over chunks: every edit is O(log n + CHUNK).
//
// Invariants (checked by check()): chunks are non-empty; starts ascend
// strictly within and across chunks; ranges neither overlap nor touch
// (touching ranges are merged by the callers, see Allocator); mins[c] is
// chunk c's first start. A tracking set records in `changed` the bucket
// (start / trackBucket, rounded down) of every range start written or
// removed since clear(), so a persisted copy can rewrite just those buckets.

export interface Range { pblk: number, len: number }

const CHUNK = 256

interface Chunk { starts: number[], lens: number[], maxLen: number }

/** a position in the set: chunk c, index i */
export interface At { c: number, i: number }

export class RangeSet {
  private chunks: Chunk[] = []
  private mins: number[] = []
  private count = 0
  private sum = 0
  /** buckets with a range start written or removed since clear(); null when not tracking */
  readonly changed: Set<number> | null

  /** trackBucket > 0: record changes per bucket of that many blocks */
  constructor (private readonly trackBucket = 0) {
    this.changed = trackBucket > 0 ? new Set() : null
  }

  get size (): number { return this.count }
  /** total length of all ranges */
  get total (): number { return this.sum }

  start (a: At): number { return this.chunks[a.c].starts[a.i] }
  len (a: At): number { return this.chunks[a.c].lens[a.i] }
  end (a: At): number { return this.start(a) + this.len(a) }

  /** the last range with start <= pblk, or null */
  findLE (pblk: number): At | null {
    const m = this.mins
    let lo = 0
    let hi = m.length - 1
    let c = -1
    while (lo <= hi) {
      const mid = (lo + hi) >> 1
      if (m[mid] <= pblk) { c = mid; lo = mid + 1 } else hi = mid - 1
    }
    if (c < 0) return null
    const s = this.chunks[c].starts
    lo = 0
    hi = s.length - 1
    let i = 0
    while (lo <= hi) {
      const mid = (lo + hi) >> 1
      if (s[mid] <= pblk) { i = mid; lo = mid + 1 } else hi = mid - 1
    }
    return { c, i }
  }

  first (): At | null { return this.count ? { c: 0, i: 0 } : null }

  next (a: At): At | null {
    if (a.i + 1 < this.chunks[a.c].starts.length) return { c: a.c, i: a.i + 1 }
    return a.c + 1 < this.chunks.length ? { c: a.c + 1, i: 0 } : null
  }

  /** the range containing pblk, or null */
  containing (pblk: number): At | null {
    const a = this.findLE(pblk)
    return a && pblk < this.end(a) ? a : null
  }

  private touch (start: number): void { this.changed?.add(Math.floor(start / this.trackBucket)) }

  /** replace range a by [start, start+len); it must stay between its neighbours */
  set (a: At, start: number, len: number): void {
    const ch = this.chunks[a.c]
    this.touch(ch.starts[a.i])
    this.touch(start)
    const old = ch.lens[a.i]
    this.sum += len - old
    ch.starts[a.i] = start
    ch.lens[a.i] = len
    if (a.i === 0) this.mins[a.c] = start
    if (ch.maxLen >= 0) ch.maxLen = len >= ch.maxLen ? len : old === ch.maxLen ? -1 : ch.maxLen
  }

  remove (a: At): void {
    const ch = this.chunks[a.c]
    this.touch(ch.starts[a.i])
    this.sum -= ch.lens[a.i]
    ch.starts.splice(a.i, 1)
    ch.lens.splice(a.i, 1)
    ch.maxLen = -1
    this.count--
    if (ch.starts.length === 0) {
      this.chunks.splice(a.c, 1)
      this.mins.splice(a.c, 1)
    } else if (a.i === 0) this.mins[a.c] = ch.starts[0]
  }

  /** add [start, start+len), which must not overlap any range */
  insert (start: number, len: number): void {
    this.touch(start)
    this.sum += len
    this.count++
    if (this.chunks.length === 0) {
      this.chunks.push({ starts: [start], lens: [len], maxLen: len })
      this.mins.push(start)
      return
    }
    const a = this.findLE(start)
    const c = a ? a.c : 0
    const i = a ? a.i + 1 : 0
    const ch = this.chunks[c]
    ch.starts.splice(i, 0, start)
    ch.lens.splice(i, 0, len)
    if (ch.maxLen >= 0 && len > ch.maxLen) ch.maxLen = len
    if (i === 0) this.mins[c] = start
    if (ch.starts.length > 2 * CHUNK) {
      const right: Chunk = { starts: ch.starts.splice(CHUNK), lens: ch.lens.splice(CHUNK), maxLen: -1 }
      ch.maxLen = -1
      this.chunks.splice(c + 1, 0, right)
      this.mins.splice(c + 1, 0, right.starts[0])
    }
  }

  /**
   * Add many ranges at once: [starts[k], starts[k]+lens[k]) sorted by start, disjoint (touching is fine),
   * merged with each other and with touching neighbours. Returns a block
   * that is already in the set or given twice (and then changes nothing),
   * else -1. Each chunk the ranges land in is rebuilt by one linear merge
   * (a truncate step frees a thousand ranges into a few chunks; one
   * merge() each, with its searches and splices, was a tenth of the step).
   */
  mergeMany (rstarts: ArrayLike<number>, rlens: ArrayLike<number>): number {
    const nr = rstarts.length
    if (nr === 0) return -1
    if (this.chunks.length === 0) this.seed(rstarts[0])
    const plans: Array<{ c: number, starts: number[], lens: number[], added: number }> = []
    for (let k = 0; k < nr;) {
      const a = this.findLE(rstarts[k])
      const c = a ? a.c : 0
      const limit = c + 1 < this.chunks.length ? this.mins[c + 1] : Infinity
      let m = k
      while (m < nr && rstarts[m] < limit) m++
      const ch = this.chunks[c]
      const starts: number[] = []
      const lens: number[] = []
      let added = 0
      let i = 0
      let j = k
      let lastEnd = -Infinity
      while (i < ch.starts.length || j < m) {
        const fresh = j < m && (i >= ch.starts.length || rstarts[j] < ch.starts[i])
        const st = fresh ? rstarts[j] : ch.starts[i]
        const ln = fresh ? rlens[j] : ch.lens[i]
        if (fresh) { j++; added += ln } else i++
        if (st < lastEnd) { this.undoSeed(); return st }
        const n = starts.length
        if (st === lastEnd) { // touches the previous one: extend it
          this.touch(starts[n - 1])
          this.touch(st)
          lens[n - 1] += ln
        } else {
          if (fresh) this.touch(st)
          starts.push(st)
          lens.push(ln)
        }
        lastEnd = st + ln
      }
      if (lastEnd > limit) { this.undoSeed(); return limit }
      plans.push({ c, starts, lens, added })
      k = m
    }
    this.seeded = false
    for (let p = plans.length - 1; p >= 0; p--) {
      const { c, starts, lens, added } = plans[p]
      this.count += starts.length - this.chunks[c].starts.length
      this.sum += added
      const pieces: Chunk[] = []
      let o = 0
      for (; starts.length - o > 2 * CHUNK; o += CHUNK) pieces.push({ starts: starts.slice(o, o + CHUNK), lens: lens.slice(o, o + CHUNK), maxLen: -1 })
      pieces.push({ starts: o === 0 ? starts : starts.slice(o), lens: o === 0 ? lens : lens.slice(o), maxLen: -1 })
      this.chunks.splice(c, 1, ...pieces)
      this.mins.splice(c, 1, ...pieces.map(x => x.starts[0]))
    }
    // a rebuilt chunk's last range may now touch the next chunk's first
    for (let p = plans.length - 1; p >= 0; p--) {
      const c = this.findLE(plans[p].starts[plans[p].starts.length - 1]) as At
      const nx = this.next(c)
      if (nx && nx.c !== c.c && this.end(c) === this.start(nx)) {
        const l = this.len(nx)
        this.remove(nx)
        this.set(c, this.start(c), this.len(c) + l)
      }
    }
    return -1
  }

  /** mergeMany into an empty set starts from one empty chunk, which a failed merge takes away again */
  private seeded = false
  private seed (start: number): void {
    this.chunks.push({ starts: [], lens: [], maxLen: -1 })
    this.mins.push(start)
    this.seeded = true
  }

  private undoSeed (): void {
    if (!this.seeded) return
    this.chunks.pop()
    this.mins.pop()
    this.seeded = false
  }

  /** the first range at or after a (wrapping around) whose length is at least want */
  firstFit (from: At | null, want: number): At | null {
    const n = this.chunks.length
    const c0 = from ? from.c : 0
    for (let k = 0; k <= n; k++) {
      const c = (c0 + k) % n
      const ch = this.chunks[c]
      if (ch.maxLen < 0) ch.maxLen = Math.max(...ch.lens)
      if (ch.maxLen < want) continue
      const i0 = k === 0 && from ? from.i : 0
      for (let i = i0; i < ch.lens.length; i++) if (ch.lens[i] >= want) return { c, i }
    }
    return null
  }

  /** the longest range (ties: the first) */
  longest (): At | null {
    let best: At | null = null
    let bl = 0
    for (let c = 0; c < this.chunks.length; c++) {
      const ch = this.chunks[c]
      if (ch.maxLen < 0) ch.maxLen = Math.max(...ch.lens)
      if (ch.maxLen <= bl) continue
      bl = ch.maxLen
      best = { c, i: ch.lens.indexOf(bl) }
    }
    return best
  }

  * ranges (): Generator<Range> {
    for (const ch of this.chunks) for (let i = 0; i < ch.starts.length; i++) yield { pblk: ch.starts[i], len: ch.lens[i] }
  }

  /** invariant violations (debug checks and tests) */
  check (): string[] {
    const errs: string[] = []
    let prevEnd = -1
    let n = 0
    let sum = 0
    for (let c = 0; c < this.chunks.length; c++) {
      const ch = this.chunks[c]
      if (ch.starts.length === 0) errs.push(`chunk ${c} empty`)
      if (this.mins[c] !== ch.starts[0]) errs.push(`chunk ${c} min ${this.mins[c]} != ${ch.starts[0]}`)
      for (let i = 0; i < ch.starts.length; i++) {
        if (ch.lens[i] <= 0) errs.push(`range at ${ch.starts[i]} has length ${ch.lens[i]}`)
        if (ch.starts[i] <= prevEnd) errs.push(`range at ${ch.starts[i]} overlaps or touches its predecessor`)
        prevEnd = ch.starts[i] + ch.lens[i]
        n++
        sum += ch.lens[i]
      }
    }
    if (n !== this.count || sum !== this.sum) errs.push(`counters ${this.count}/${this.sum}, actual ${n}/${sum}`)
    return errs
  }
}

/**
 * Take [pblk, pblk+len) out of set s; it must lie inside one range.
 * Returns false (and changes nothing) if it does not.
 */
export function carve (s: RangeSet, pblk: number, len: number): boolean {
  const a = s.containing(pblk)
  if (!a) return false
  const st = s.start(a)
  const end = s.end(a)
  if (pblk + len > end) return false
  if (pblk === st && pblk + len === end) s.remove(a)
  else if (pblk === st) s.set(a, pblk + len, end - pblk - len)
  else if (pblk + len === end) s.set(a, st, pblk - st)
  else {
    s.set(a, st, pblk - st)
    s.insert(pblk + len, end - pblk - len)
  }
  return true
}

/**
 * Add [pblk, pblk+len) to set s, merging with touching neighbours. Returns
 * the overlapping block if any part of it is already in the set (and then
 * changes nothing), else -1.
 */
export function merge (s: RangeSet, pblk: number, len: number): number {
  const a = s.findLE(pblk)
  if (a && s.end(a) > pblk) return pblk
  const b = a ? s.next(a) : s.first()
  if (b && s.start(b) < pblk + len) return s.start(b)
  const left = a !== null && s.end(a) === pblk
  const right = b !== null && s.start(b) === pblk + len
  if (left && right) {
    const rl = s.len(b as At)
    s.remove(b as At)
    s.set(a as At, s.start(a as At), s.len(a as At) + len + rl)
  } else if (left) s.set(a as At, s.start(a as At), s.len(a as At) + len)
  else if (right) s.set(b as At, pblk, len + s.len(b as At))
  else s.insert(pblk, len)
  return -1
}
