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
