// Constants and the typed error shared by the image and its data area.

export const BLOCK_SIZE = 4096

/** Exit codes of the CLI for image problems. */
export const EXIT = {
  USAGE: 2,
  NOT_FOUND: 3,
  NOT_FOLIOFS: 4,
  CORRUPT: 5,
  BUSY: 6,
  MOUNT_FAILED: 7,
  FSCK_ERRORS: 8
} as const

export class ImageError extends Error {
  readonly exitCode: number
  constructor (message: string, exitCode: number) {
    super(message)
    this.name = 'ImageError'
    this.exitCode = exitCode
  }
}

/**
 * The refusal of a read-write mount of a damaged image that a read-only
 * one still serves (exit 5): what is wrong, and `see`, the command that
 * looks into it.
 */
export function refusedReadWrite (image: string, what: string, see = 'foliofs fsck'): ImageError {
  return new ImageError(`${image}: corrupt image (${what}): refused read-write; mount it read-only (-o ro) to copy files off; see ${see}`, EXIT.CORRUPT)
}

/**
 * The host's failure to open or read one of the image's files (file: the
 * path named; where: the image it belongs to, for the line's start), or
 * null for ENOENT, whose meaning is the caller's (no such image; a data
 * area missing is damage). The process is short of descriptors or memory
 * (EMFILE, ENFILE, ENOMEM): exit 7, nothing wrong with the image; no
 * permission: exit 3; anything else (EIO: a bad sector) is the host
 * failing to read it: exit 5.
 */
export function hostFileError (err: unknown, where: string, file: string): ImageError | null {
  const code = (err as { code?: string }).code
  if (code === 'ENOENT') return null
  const of = file === where ? '' : ` ${file}`
  const short: Record<string, string> = {
    EMFILE: 'too many open files in this process: raise ulimit -n',
    ENFILE: "too many open files on this system: close some, or raise the kernel's fs.file-max",
    ENOMEM: 'out of memory'
  }
  if (code !== undefined && code in short) return new ImageError(`${where}: cannot open${of} (${short[code]}); the image is not at fault`, EXIT.MOUNT_FAILED)
  if (code === 'EACCES' || code === 'EPERM') return new ImageError(`${where}: cannot open${of} (permission denied)`, EXIT.NOT_FOUND)
  return new ImageError(`${where}: cannot read${of || ' image'} (${(err as Error).message})`, EXIT.CORRUPT)
}
