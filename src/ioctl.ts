// foliofs private ioctls. FUSE only forwards "restricted" ioctls whose
// argument size is encoded in the command (_IOC_SIZE, at most 16383 bytes),
// so every command here carries a fixed 16383-byte in/out area. The C side
// (native/foliofs_ioctl.h) defines the same numbers.

const IOC_NRBITS = 8
const IOC_TYPEBITS = 8
const IOC_SIZEBITS = 14
const IOC_NRSHIFT = 0
const IOC_TYPESHIFT = IOC_NRSHIFT + IOC_NRBITS
const IOC_SIZESHIFT = IOC_TYPESHIFT + IOC_TYPEBITS
const IOC_DIRSHIFT = IOC_SIZESHIFT + IOC_SIZEBITS
export const IOC_WRITE = 1
export const IOC_READ = 2

export function ioc (dir: number, type: number, nr: number, size: number): number {
  return ((dir << IOC_DIRSHIFT) | (type << IOC_TYPESHIFT) | (nr << IOC_NRSHIFT) | (size << IOC_SIZESHIFT)) >>> 0
}

export const iocSize = (cmd: number): number => (cmd >>> IOC_SIZESHIFT) & ((1 << IOC_SIZEBITS) - 1)

export const FOLIOFS_IOC_MAGIC = 0xf0
export const FOLIOFS_IOC_BUFSIZE = 16383

/** Read the daemon's statistics as NUL-terminated JSON. */
export const FOLIOFS_IOC_STATS = ioc(IOC_READ, FOLIOFS_IOC_MAGIC, 1, FOLIOFS_IOC_BUFSIZE)

/** FIEMAP: struct fiemap + up to 291 struct fiemap_extent, in and out (see src/fiemap.ts) */
export const FOLIOFS_IOC_FIEMAP = ioc(IOC_READ | IOC_WRITE, FOLIOFS_IOC_MAGIC, 2, FOLIOFS_IOC_BUFSIZE)

/** remount: byte 0 is 1 (read-only) or 0 (read-write); see FolioFs.setReadonly */
export const FOLIOFS_IOC_REMOUNT = ioc(IOC_READ | IOC_WRITE, FOLIOFS_IOC_MAGIC, 3, FOLIOFS_IOC_BUFSIZE)
