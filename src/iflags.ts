// Inode flags: chattr/lsattr (FS_IOC_GETFLAGS/FS_IOC_SETFLAGS, which the
// kernel forwards to FUSE daemons as ioctls with a 4-byte int). ext4's
// meaning for the four foliofs keeps:
//   i  immutable:   no write, truncate, fallocate, unlink, rename, link,
//                   attribute or xattr change; a directory takes no new or
//                   removed names
//   a  append-only: writes only at the end (opens for writing need
//                   O_APPEND), no truncate, punch, unlink, rename, link,
//                   mode/owner/explicit time or xattr change; a directory
//                   takes new names but loses none
//   d  nodump, A noatime (reads leave atime alone): stored, and noatime
//                   honoured
// The kernel keeps no flags of its own for a FUSE inode (IS_IMMUTABLE is
// never true there), so the daemon enforces all of it (fs.ts). Only root
// (CAP_LINUX_IMMUTABLE) changes i and a; the kernel checks that and
// ownership before it sends SETFLAGS, and the daemon checks again.
//
// On disk (no format change): one row of the xattrs table per inode with
// flags, named IFLAGS_XATTR, value the flags as a 4-byte little-endian
// integer; no row means 0. Invariants: the name is outside every namespace
// the xattr calls accept (user., trusted., security., system.), so no
// user can read, set or list it (listxattr filters it); the value only
// holds SUPPORTED bits; the row goes with the inode (deleteInodeRow).
// An older foliofs ignores the row (and would list it by listxattr).
import { ioc, IOC_READ, IOC_WRITE } from './ioctl'

export const FS_IMMUTABLE_FL = 0x10
export const FS_APPEND_FL = 0x20
export const FS_NODUMP_FL = 0x40
export const FS_NOATIME_FL = 0x80
export const SUPPORTED_IFLAGS = FS_IMMUTABLE_FL | FS_APPEND_FL | FS_NODUMP_FL | FS_NOATIME_FL
/** flags whose change needs CAP_LINUX_IMMUTABLE (root) */
export const PRIVILEGED_IFLAGS = FS_IMMUTABLE_FL | FS_APPEND_FL

/** the xattrs row holding an inode's flags (see the essay above) */
export const IFLAGS_XATTR = 'foliofs.iflags'

/** the command numbers encode a long (8 bytes); the data the kernel sends is an int */
export const FS_IOC_GETFLAGS = ioc(IOC_READ, 0x66, 1, 8)
export const FS_IOC_SETFLAGS = ioc(IOC_WRITE, 0x66, 2, 8)
export const IFLAGS_SIZE = 4
/**
 * struct fsxattr (28 bytes): the kernel reads the old flags through
 * FS_IOC_FSGETXATTR before a SETFLAGS (its fileattr code), and xfs_io's
 * chattr uses FSSETXATTR. Only fsx_xflags is used; extent size hints and
 * project ids are not kept (read as 0; setting them is EOPNOTSUPP).
 */
export const FS_IOC_FSGETXATTR = ioc(IOC_READ, 0x58, 31, 28)
export const FS_IOC_FSSETXATTR = ioc(IOC_WRITE, 0x58, 32, 28)
export const FSXATTR_SIZE = 28
const XFLAGS: Array<[number, number]> = [[0x8, 0x10], [0x10, 0x20], [0x80, 0x40], [0x40, 0x80]] // [FS_XFLAG_*, FS_*_FL]: immutable, append, nodump, noatime

export function flagsToXflags (flags: number): number {
  let x = 0
  for (const [xf, f] of XFLAGS) if (flags & f) x |= xf
  return x
}

/** null: an xflag foliofs does not keep */
export function xflagsToFlags (x: number): number | null {
  let f = 0
  for (const [xf, fl] of XFLAGS) if (x & xf) { f |= fl; x &= ~xf }
  return x === 0 ? f : null
}

export function decodeIflags (v: Buffer | undefined): number {
  if (v === undefined || v.length !== IFLAGS_SIZE) return 0
  return v.readUInt32LE(0) & SUPPORTED_IFLAGS
}

export function encodeIflags (flags: number): Buffer {
  const b = Buffer.alloc(IFLAGS_SIZE)
  b.writeUInt32LE(flags >>> 0, 0)
  return b
}

/** immutable or append-only: the inode's name, size and attributes are fixed */
export const isFrozen = (flags: number): boolean => (flags & (FS_IMMUTABLE_FL | FS_APPEND_FL)) !== 0
