// flock(2) locks, kept by the daemon.
//
// Linux keeps flock locks per kernel inode. libfuse's path API makes every
// hard link of a file a kernel inode of its own, so the kernel's own locks
// did not see each other across names: a LOCK_EX through one link did not
// stop a LOCK_EX through another. The daemon therefore asks for the
// requests (the binding implements FUSE's flock operation) and keeps the
// locks per inode here.
//
// Semantics are flock(2)'s on Linux:
// * the owner is the open file description: the file handle (dup and fork
//   share it, a second open(2) of the same file is another owner);
// * any number of shared locks, or one exclusive lock, per inode;
// * a conversion (shared <-> exclusive) drops the old lock first, as Linux
//   does, so a failed non-blocking upgrade leaves the owner with no lock;
// * a lock goes away with LOCK_UN or when its handle is released (the last
//   close of the description, process exit included).
// Every request here is a try: granted (0) or -EWOULDBLOCK. A blocking
// flock is retried by the binding in its libfuse thread, woken by
// `onReleased` (any lock let go of) and interruptible by a signal there
// (see the binding's flock). Locks live as long as the mount: they are not
// on disk.
//
// Misuse: answering later instead of -EWOULDBLOCK (a blocked JS request
// could not be interrupted); letting go of a lock without onReleased
// (waiters would only poll).
import { constants } from 'os'

const LOCK_SH = 1
const LOCK_EX = 2
const LOCK_UN = 8
const EWOULDBLOCK = -constants.errno.EWOULDBLOCK
const EINVAL = -constants.errno.EINVAL

interface InodeLocks {
  /** owners holding a shared lock */
  shared: Set<number>
  /** the owner holding the exclusive lock, or null */
  exclusive: number | null
}

export interface FlockStats {
  /** requests granted (locks and unlocks) */
  granted: number
  /** tries answered EWOULDBLOCK (a blocked flock tries again) */
  busy: number
  /** locks held now */
  held: number
}

export class Flocks {
  private readonly byIno = new Map<number, InodeLocks>()
  /** owner (file handle) -> the inode it holds a lock on */
  private readonly owners = new Map<number, number>()
  readonly stats: FlockStats = { granted: 0, busy: 0, held: 0 }

  /** onReleased: called whenever a lock is let go of (the binding wakes blocked requests) */
  constructor (private readonly onReleased: () => void) {}

  /** flock(2) op (LOCK_SH, LOCK_EX or LOCK_UN; LOCK_NB is implied) on ino by owner: 0, -EWOULDBLOCK or -EINVAL */
  apply (ino: number, owner: number, op: number): number {
    const kind = op & (LOCK_SH | LOCK_EX | LOCK_UN)
    if (kind !== LOCK_SH && kind !== LOCK_EX && kind !== LOCK_UN) return EINVAL
    const l = this.byIno.get(ino) ?? { shared: new Set<number>(), exclusive: null }
    const had = l.exclusive === owner ? LOCK_EX : l.shared.has(owner) ? LOCK_SH : 0
    if (had === kind) { this.stats.granted++; return 0 }
    if (had !== 0) this.drop(ino, owner) // unlock, or convert: the old lock goes first
    if (kind === LOCK_UN) { this.stats.granted++; return 0 }
    const busy = l.exclusive !== null || (kind === LOCK_EX && l.shared.size > 0)
    if (busy) { this.stats.busy++; return EWOULDBLOCK }
    if (kind === LOCK_EX) l.exclusive = owner
    else l.shared.add(owner)
    this.byIno.set(ino, l)
    this.owners.set(owner, ino)
    this.stats.held++
    this.stats.granted++
    return 0
  }

  /** owner's handle is released: its lock, if any, goes */
  released (owner: number): void {
    const ino = this.owners.get(owner)
    if (ino !== undefined) this.drop(ino, owner)
  }

  private drop (ino: number, owner: number): void {
    const l = this.byIno.get(ino)
    this.owners.delete(owner)
    if (!l) return
    if (l.exclusive === owner) l.exclusive = null
    else if (!l.shared.delete(owner)) return
    this.stats.held--
    if (l.exclusive === null && l.shared.size === 0) this.byIno.delete(ino)
    this.onReleased()
  }
}
