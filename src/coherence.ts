// Kernel cache coherence: what the kernel may cache, and how the daemon
// keeps what it caches true.
//
// The kernel caches each name's lookup (entry_timeout) and each inode's
// attributes (attr_timeout, and readdirplus fills that cache too). A change
// made through a name the kernel itself updates or drops: the reply carries
// the new attributes, or the kernel invalidates them after the request.
// What the kernel cannot know about is a change that reaches an inode
// through another of its names: libfuse's high-level API gives every path
// its own node, so each hard link is a kernel inode of its own, with its own
// cached size, times, nlink and pages. That is the one case this module
// handles: after a request changed inode X, every other name of X is
// invalidated (NOTIFY_INVAL_INODE: attributes and pages) before the request
// is answered. Inodes with one name (nearly all) cost one nlink read. A
// read's atime is left out: seen through another name it may lag by
// attr_timeout (see fuse-ops.ts's read for why).
//
// "Other" means every current path of X except the one the request came
// through, and this is not an optimization: the requesting kernel inode may
// hold its page locks until the answer (a write does: the folios it only
// partly writes), and invalidating its pages while the answer waits
// deadlocks. The same holds for another name with a write of its own in
// flight: two processes writing through two names of one file would each
// wait for the other's pages, which each holds until its own answer. So a
// name with a write in flight (writeStarts/writeEnds) is invalidated without
// waiting: the kernel drops its pages once that write's answer unlocks them
// (counted in `unwaited`). What this gives up is only the moment: a read
// through that name that takes the page lock before the invalidation does
// may still see the page as it was, as if it had come a moment earlier.
// Requests that carry only a file
// handle (libfuse's nullpath_ok) come through the path the handle was
// opened by, so handles remember it (opened/renamed/unlinked keep it what
// libfuse's node for it is). Should that ever be wrong, the wait ends after
// timeoutMs and the request is answered anyway (counted in `timeouts`):
// late, never stuck.
//
// The kernel's own part is less than it looks: after a link it updates only
// the source's ctime in its cache (the new name is a kernel inode of its
// own), so the source is invalidated like any other name; after an unlink
// or a rename it drops the nlink of what it removed or replaced itself.
//
// Names themselves need nothing: every rename, link and unlink goes through
// the kernel, which updates its dentries; negative entries are not cached.
//
// The other half is upcalls the kernel makes for data that does not exist:
// getxattr of security.capability before every write (the kernel's
// file_remove_privs), of system.posix_acl_* and security.selinux for each
// entry of `ls -l`. The binding answers ENODATA itself for names no inode
// has (setAbsentXattrs), EOPNOTSUPP for the SELinux label (see
// UNSUPPORTED_WHILE_ABSENT); the set shrinks before a name is stored
// (FolioFs.onXattrName, inside the storing transaction) and is computed
// afresh at each mount.
import type { FolioFs } from './fs'

export interface KernelNotifier {
  /** invalidate the kernel inodes of these paths; cb(0 or -errno) once done */
  invalidatePaths: (paths: string[], cb: (err: number) => void) => void
  /** getxattr of these names is ENODATA (EOPNOTSUPP for those in unsupported) without a call to the daemon */
  setAbsentXattrs: (names: string[], unsupported: string[]) => void
  /** the threads that write invalidations (the binding keeps a few idle ones for the next) */
  invalidationWorkers?: () => InvalidationWorkers
}

export interface InvalidationWorkers {
  /** threads made since the mount (fewer than invalidations: idle ones take the next) */
  made: number
  /** alive now */
  alive: number
  /** of those, waiting for an invalidation */
  idle: number
}

/**
 * Of PROBED_XATTRS, those answered EOPNOTSUPP while no inode has one: the
 * SELinux label, which only a host without SELinux asks the filesystem for
 * (SELinux answers it itself), and whose askers (ls -l, for one) remember
 * "unsupported" for the whole filesystem instead of asking for every file.
 * Storing one works all the same, and from then on it is an xattr like any.
 */
export const UNSUPPORTED_WHILE_ABSENT = ['security.selinux']

/** names the kernel asks for on its own, and that most filesystems never store */
export const PROBED_XATTRS = [
  'security.capability', 'security.selinux', 'security.ima', 'security.evm', 'security.apparmor',
  'system.posix_acl_access', 'system.posix_acl_default'
]

export interface CoherenceStats {
  /** requests that waited for other names to be invalidated */
  invalidations: number
  /** paths invalidated */
  paths: number
  /** waits cut short by timeoutMs (should stay 0) */
  timeouts: number
  /** invalidations the kernel refused (besides names it never looked up) */
  errors: number
  /** names invalidated without waiting, as they had a write in flight (see the top of the file) */
  unwaited: number
  /** xattr names answered by the binding (absent on every inode) */
  absentXattrs: number
}

/** where path p is once the node at `from` moved to `to` (null: p is not from or below it) */
function movedPath (p: string, from: string, to: string): string | null {
  return p === from ? to : p.startsWith(from + '/') ? to + p.slice(from.length) : null
}

export class Coherence {
  readonly stats: CoherenceStats = { invalidations: 0, paths: 0, timeouts: 0, errors: 0, unwaited: 0, absentXattrs: 0 }
  /** file handle -> the path the kernel inode of its requests has now (null: unlinked) */
  private readonly handlePaths = new Map<number, string | null>()
  /** file handle -> its inode */
  private readonly handleInos = new Map<number, number>()
  /**
   * inode -> its handles whose name is gone (unlinked, or renamed over):
   * the kernel inode they were opened through lives on beside the names
   * the inode still has, so one name left is two kernel inodes
   */
  private readonly detached = new Map<number, number>()
  /** writes being served, each with its handle and the path it came through (a handle's path follows renames) */
  private readonly writes = new Set<{ fh: number, path: string }>()
  private absent: Set<string>

  constructor (private readonly fs: FolioFs, private readonly notifier: KernelNotifier, private readonly timeoutMs = 2000) {
    const inUse = fs.xattrNamesInUse()
    this.absent = new Set(PROBED_XATTRS.filter(n => !inUse.has(n)))
    this.publishAbsent()
    fs.onPrivsDropped = ino => { this.modeChanged(ino) }
    fs.onXattrName = name => {
      if (!this.absent.has(name)) return
      this.absent.delete(name)
      this.publishAbsent()
    }
  }

  private publishAbsent (): void {
    this.stats.absentXattrs = this.absent.size
    this.notifier.setAbsentXattrs([...this.absent], UNSUPPORTED_WHILE_ABSENT)
  }

  // ---- where a handle's requests come from --------------------------------

  opened (fh: number, path: string, ino: number): void {
    this.handlePaths.set(fh, path)
    this.handleInos.set(fh, ino)
  }

  released (fh: number): void {
    if (this.handlePaths.get(fh) === null) this.count(this.handleInos.get(fh), -1)
    this.handlePaths.delete(fh)
    this.handleInos.delete(fh)
  }

  /** fh's name went: its kernel inode has no path any more */
  private detach (fh: number): void {
    this.handlePaths.set(fh, null)
    this.count(this.handleInos.get(fh), 1)
  }

  private count (ino: number | undefined, by: number): void {
    if (ino === undefined) return
    const n = (this.detached.get(ino) ?? 0) + by
    if (n > 0) this.detached.set(ino, n)
    else this.detached.delete(ino)
  }

  /** the path whose kernel inode sends requests on fh (null: none any more, or unknown) */
  via (fh: number): string | null { return this.handlePaths.get(fh) ?? null }

  /** libfuse moved the node of src (and of everything below it) to dst */
  renamed (src: string, dst: string): void {
    for (const [fh, p] of this.handlePaths) {
      if (p === null) continue
      const q = movedPath(p, src, dst)
      if (q !== null) this.handlePaths.set(fh, q)
      else if (movedPath(p, dst, dst) !== null) this.detach(fh) // replaced: its node has no name now
    }
  }

  /** RENAME_EXCHANGE: libfuse swapped the nodes of a and b (and of everything below them) */
  exchanged (a: string, b: string): void {
    for (const [fh, p] of this.handlePaths) {
      if (p === null) continue
      const q = movedPath(p, a, b) ?? movedPath(p, b, a)
      if (q !== null) this.handlePaths.set(fh, q)
    }
  }

  /** libfuse dropped the node of path */
  unlinked (path: string): void {
    for (const [fh, p] of this.handlePaths) if (p === path) this.detach(fh)
  }

  // ---- writes in flight --------------------------------------------------------

  /**
   * A write through fh (its kernel inode is `path`'s) is being served: the
   * kernel holds the pages it partly writes locked until the answer. The
   * token goes to writeEnds once the write is answered or failed. Misuse:
   * never ending it: that name's invalidations are never waited for again.
   */
  writeStarts (fh: number, path: string): object {
    const w = { fh, path }
    this.writes.add(w)
    return w
  }

  writeEnds (token: object): void {
    this.writes.delete(token as { fh: number, path: string })
  }

  /** the paths with a write in flight now */
  private writing (): Set<string> {
    const busy = new Set<string>()
    for (const w of this.writes) {
      const p = this.handlePaths.has(w.fh) ? this.handlePaths.get(w.fh) : w.path
      if (p) busy.add(p)
    }
    return busy
  }

  // ---- invalidation ----------------------------------------------------------

  workers (): InvalidationWorkers {
    return this.notifier.invalidationWorkers?.() ?? { made: 0, alive: 0, idle: 0 }
  }

  /**
   * whether a change to ino may leave another kernel inode stale: it has
   * several names, or a name and a handle whose name is gone (a write
   * through that handle must invalidate the name; the handle's own kernel
   * inode, having no path, cannot be invalidated: see README's limits)
   */
  shared (ino: number): boolean {
    const links = this.fs.linkCount(ino)
    return links > 1 || (links === 1 && this.detached.has(ino))
  }

  /**
   * ino's mode changed behind the request that carried it (a write or
   * truncate dropping setuid/setgid: FolioFs.killPriv): invalidate every
   * name of it, the requesting one included, without waiting. Waiting
   * could deadlock on the page locks the write holds; the kernel applies
   * it once the write is answered, so the writer may see the old mode
   * until then (a mode-only statx; anything asking for the size refreshes
   * anyway after a write).
   */
  modeChanged (ino: number): void {
    const paths = this.fs.pathsOf(ino)
    if (paths.length > 0) this.invalidate(paths)
  }

  /**
   * ino's attributes changed through a request whose answer tells the
   * kernel nothing of them (an ioctl setting inode flags moves ctime): every
   * name of it, the requesting one included. Resolves as others() does; an
   * ioctl holds no page locks, so waiting is safe.
   */
  async everywhere (ino: number): Promise<void> {
    await this.others([ino], [])
  }

  /** invalidate paths (counted); done, if given, once the kernel is done or refused (errors counted) */
  private invalidate (paths: string[], done?: () => void): void {
    this.stats.invalidations++
    this.stats.paths += paths.length
    this.notifier.invalidatePaths(paths, err => {
      if (err !== 0) this.stats.errors++
      done?.()
    })
  }

  /**
   * The kernel's cache of one name is wrong because of a request through
   * it that the daemon answered differently than the kernel assumed (an
   * O_APPEND write placed at the real end: the kernel copied the bytes
   * into its pages at the end it knew). Invalidated once that request is
   * answered, not waited for: calling it before the answer deadlocks on
   * the pages the request holds.
   */
  stale (path: string): void {
    setImmediate(() => this.invalidate([path]))
  }

  /**
   * After inos changed through the kernel inodes of `via`: invalidate every
   * other name of them. Resolves when the kernel has dropped what it cached
   * (or after timeoutMs). Call only with inos that were shared() before or
   * after the change; never throws.
   */
  async others (inos: number[], via: Array<string | null>): Promise<void> {
    const skip = new Set(via.filter((p): p is string => p !== null))
    const paths: string[] = []
    for (const ino of inos) {
      for (const p of this.fs.pathsOf(ino)) if (!skip.has(p)) paths.push(p)
    }
    if (paths.length === 0) return
    const busy = this.writes.size > 0 ? this.writing() : null
    const waited = busy ? paths.filter(p => !busy.has(p)) : paths
    if (waited.length < paths.length) {
      const unwaited = paths.filter(p => busy?.has(p))
      this.stats.unwaited += unwaited.length
      this.invalidate(unwaited)
    }
    if (waited.length === 0) return
    await new Promise<void>(resolve => {
      const timer = setTimeout(() => { this.stats.timeouts++; resolve() }, this.timeoutMs)
      this.invalidate(waited, () => { clearTimeout(timer); resolve() })
    })
  }
}
