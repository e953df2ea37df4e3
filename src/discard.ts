// Discard: blocks the filesystem no longer uses are punched out of the
// data area (fallocate PUNCH_HOLE | KEEP_SIZE), so deleting data gives the
// space back to the host filesystem, like `-o discard` on a thin device.
//
// When: the allocator hands a commit's freed ranges over once that commit
// is durable (Allocator.onReusable), so a crash before then still finds
// the old data the old mapping points to; and it keeps them out of
// allocation until the punch is done (release), so a punch never lands on
// new data. The punches run on libuv's thread pool (native/foliofs-punch.c:
// node has no fallocate; one punch took ~0.7 ms on ext4 here, a fragmented
// delete makes thousands). A writer that finds the device full while
// punches are in flight waits for them (idle()) and tries again.
//
// Where the host cannot punch (EOPNOTSUPP, or the addon is missing) the
// first attempt turns discard off for the mount with one log line; the
// data area then keeps its size, as before.
//
// Misuse: punching a range that is still mapped or reserved destroys data:
// only ranges the allocator hands over, or offline ranges the free-space
// map holds (fsck --compact, punch()). The data area must stay open until
// idle() resolves.
import * as path from 'path'
import { constants } from 'os'
import { BLOCK_SIZE } from './imageerror'

interface Addon {
  punchHole: (fd: number, offset: number, length: number) => number
  punchHoles: (fd: number, offsets: Float64Array, lengths: Float64Array, cb: (rc: number) => void) => void
}

let loaded: Addon | null | undefined

/** the native addon, or null where it was not built */
function addon (): Addon | null {
  if (loaded === undefined) {
    try {
      loaded = require(path.resolve(__dirname, '..', '..', 'native', 'build', 'foliofs_punch.node')) as Addon
    } catch {
      loaded = null
    }
  }
  return loaded
}

export interface DiscardStats { enabled: boolean, punches: number, blocks: number, errors: number, inFlight: number }

export class Discard {
  readonly stats: DiscardStats
  private warned = false
  private waiters: Array<() => void> = []

  /** fd: the data area, open for writing */
  constructor (private readonly fd: number, enabled: boolean, private readonly log: (line: string) => void = l => process.stderr.write(l + '\n')) {
    this.stats = { enabled: enabled && addon() !== null, punches: 0, blocks: 0, errors: 0, inFlight: 0 }
    if (enabled && !this.stats.enabled) this.off('the punch addon (native/build/foliofs_punch.node) is not built')
  }

  private off (why: string): void {
    this.stats.enabled = false
    if (!this.warned) this.log(`foliofs: discard off: ${why}; freed space stays allocated in the data area`)
    this.warned = true
  }

  private failed (rc: number, what: string): void {
    this.stats.errors++
    if (rc === -constants.errno.EOPNOTSUPP || rc === -constants.errno.ENOSYS) this.off('the host filesystem cannot punch holes')
    else this.log(`foliofs: discard of ${what} failed (errno ${-rc}); the space stays allocated`)
  }

  /** offline, synchronous: punch blocks [pblk, pblk + len) (free in the free-space map, nothing else open) */
  punch (pblk: number, len: number): void {
    const a = addon()
    if (!this.stats.enabled || !a || len <= 0) return
    const rc = a.punchHole(this.fd, pblk * BLOCK_SIZE, len * BLOCK_SIZE)
    if (rc !== 0) return this.failed(rc, `data area blocks [${pblk}, +${len})`)
    this.stats.punches++
    this.stats.blocks += len
  }

  /** offline, synchronous: punch every range of free (punch()'s rules: nothing may allocate meanwhile) */
  punchAll (free: Iterable<{ pblk: number, len: number }>): void {
    for (const r of free) this.punch(r.pblk, r.len)
  }

  /** onReusable for the allocator: punch the ranges on the thread pool, release them when done */
  readonly reusable = (starts: readonly number[], lens: readonly number[], release: () => void): void => {
    const a = addon()
    if (!this.stats.enabled || !a || starts.length === 0) { release(); return }
    const offs = Float64Array.from(starts, s => s * BLOCK_SIZE)
    const bytes = Float64Array.from(lens, l => l * BLOCK_SIZE)
    const blocks = lens.reduce((n, l) => n + l, 0)
    this.stats.inFlight++
    a.punchHoles(this.fd, offs, bytes, rc => {
      this.stats.inFlight--
      if (rc === 0) {
        this.stats.punches += starts.length
        this.stats.blocks += blocks
      } else {
        this.failed(rc, `${starts.length} range(s) of the data area`)
      }
      release()
      if (this.stats.inFlight === 0) {
        const w = this.waiters
        this.waiters = []
        for (const wake of w) wake()
      }
    })
  }

  /** resolves when no punch is in flight (before closing the data area; a writer short of space) */
  async idle (): Promise<void> {
    if (this.stats.inFlight === 0) return
    await new Promise<void>(resolve => this.waiters.push(resolve))
  }
}
