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
