// Errors as typed codes (bcachefs style): every failure that reaches FUSE is
// an FsError carrying a POSIX errno name; the adapter turns it into -errno.
import { constants } from 'os'

export type ErrnoName =
  | 'EPERM' | 'ENOENT' | 'EIO' | 'EBADF' | 'EACCES' | 'EEXIST' | 'EXDEV' | 'ENOTDIR'
  | 'EISDIR' | 'EINVAL' | 'EFBIG' | 'ENOSPC' | 'EROFS' | 'EMLINK' | 'ERANGE' | 'ENAMETOOLONG'
  | 'ENOSYS' | 'ENOTEMPTY' | 'ELOOP' | 'ENODATA' | 'ENOTTY' | 'EOPNOTSUPP' | 'E2BIG'
  | 'EOVERFLOW' | 'EBUSY' | 'EFAULT' | 'ENXIO' | 'ENODEV'

export class FsError extends Error {
  readonly code: ErrnoName
  constructor (code: ErrnoName, message?: string) {
    // an errno answer, not a bug: no stack trace (capturing one cost more than
    // the lookup behind ENOENT/ENODATA, which `ls -l` asks for every entry)
    const limit = Error.stackTraceLimit
    Error.stackTraceLimit = 0
    super(message ? `${code}: ${message}` : code)
    Error.stackTraceLimit = limit
    this.code = code
    this.name = 'FsError'
  }

  /** negative errno, the only error form fuse-native callbacks accept */
  get errno (): number {
    return -constants.errno[this.code]
  }
}

export function fsErr (code: ErrnoName, message?: string): FsError {
  return new FsError(code, message)
}

/** Map anything thrown inside an op to a negative errno (never an Error object). */
export function toNegErrno (err: unknown): number {
  if (err instanceof FsError) return err.errno
  const e = err as { code?: string }
  if (e && typeof e.code === 'string') {
    if (e.code === 'SQLITE_FULL') return -constants.errno.ENOSPC
    if (e.code === 'SQLITE_READONLY') return -constants.errno.EROFS
    const n = (constants.errno as Record<string, number>)[e.code]
    if (typeof n === 'number') return -n
  }
  return -constants.errno.EIO
}

export const NAME_MAX = 255
export const PATH_MAX = 4096
export const XATTR_NAME_MAX = 255
export const XATTR_SIZE_MAX = 65536
