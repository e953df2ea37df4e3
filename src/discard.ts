// Discard: blocks the filesystem no longer uses are punched out of the
// data area (fallocate PUNCH_HOLE | KEEP_SIZE), so deleting data gives the
// space back to the host filesystem, like `-o discard` on a thin device.
//
// When: the allocator hands a commit's freed ranges over once that commit
// is durable and before they can be allocated again (Allocator.onReusable),
// so a punch never races with new data in the same blocks, and a crash
// before the commit is durable still finds the old data the old mapping
// points to. The punch is synchronous for that reason (native/foliofs-punch.c,
// node has no fallocate).
//
// Where the host cannot punch (EOPNOTSUPP, or the addon is missing) the
// first attempt turns discard off for the mount with one log line; the
// data area then keeps its size, as before.
//
// Misuse: punching a range that is still mapped (or reserved) destroys
// data: only ever call punch() from onReusable, or offline on ranges the
// free-space map holds (fsck --compact).
import * as path from 'path'
import { constants } from 'os'
import { BLOCK_SIZE } from './imageerror'

type PunchFn = (fd: number, offset: number, length: number) => number

let loaded: PunchFn | null | undefined

/** the native punchHole, or null where it was not built */
function punchFn (): PunchFn | null {
  if (loaded === undefined) {
    try {
      loaded = (require(path.resolve(__dirname, '..', '..', 'native', 'build', 'foliofs_punch.node')) as { punchHole: PunchFn }).punchHole
    } catch {
      loaded = null
    }
  }
  return loaded
}

export interface DiscardStats { enabled: boolean, punches: number, blocks: number, errors: number }

export class Discard {
  readonly stats: DiscardStats
  private warned = false

  /** fd: the data area, open for writing */
  constructor (private readonly fd: number, enabled: boolean, private readonly log: (line: string) => void = l => process.stderr.write(l + '\n')) {
    this.stats = { enabled: enabled && punchFn() !== null, punches: 0, blocks: 0, errors: 0 }
    if (enabled && !this.stats.enabled) this.off('the punch addon (native/build/foliofs_punch.node) is not built')
  }

  private off (why: string): void {
    this.stats.enabled = false
    if (!this.warned) this.log(`foliofs: discard off: ${why}; freed space stays allocated in the data area`)
    this.warned = true
  }

  /** punch blocks [pblk, pblk + len) of the data area (free, and not allocatable until this returns) */
  punch (pblk: number, len: number): void {
    const fn = punchFn()
    if (!this.stats.enabled || !fn || len <= 0) return
    const rc = fn(this.fd, pblk * BLOCK_SIZE, len * BLOCK_SIZE)
    if (rc === 0) {
      this.stats.punches++
      this.stats.blocks += len
      return
    }
    this.stats.errors++
    if (rc === -constants.errno.EOPNOTSUPP || rc === -constants.errno.ENOSYS) this.off('the host filesystem cannot punch holes')
    else this.log(`foliofs: discard of data area blocks [${pblk}, +${len}) failed (errno ${-rc}); the space stays allocated`)
  }

  /** onReusable for the allocator */
  readonly reusable = (starts: readonly number[], lens: readonly number[]): void => {
    for (let i = 0; i < starts.length; i++) this.punch(starts[i], lens[i])
  }
}
