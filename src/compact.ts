// `foliofs fsck --compact IMAGE`: give an unmounted image's unused space
// back to the host filesystem, offline.
//  * SQLite: VACUUM, switching the database to auto_vacuum = INCREMENTAL on
//    the way (images made before it was the default; from then on every
//    unmount returns free pages by itself, FolioFs.close);
//  * data area: punch every free range (discard.ts), e.g. space freed by a
//    mount with -o nodiscard or on a host that could not punch then.
// The image is opened read-write and validated first (openImage: a corrupt
// image is refused, never compacted); the exclusive lock keeps a mount out.
import * as fs from 'fs'
import { openImage, type OpenImage } from './image'
import { DataArea } from './dataarea'
import { Discard, type DiscardStats } from './discard'
import { ExtentTree } from './btree'

export interface CompactReport { sqliteBefore: number, sqliteAfter: number, punchedBlocks: number, discard: boolean }

/**
 * Punch every free range of an unmounted image's data area (nothing is
 * allocated meanwhile: the open is exclusive). For fsck --repair of an
 * image a crash left unclean: its repair closes the image cleanly, and the
 * next mount would no longer know to redo the punches the crash left
 * undone (FileData.redoDiscards). Returns the blocks punched.
 */
export function punchFree (image: string): number {
  const img = openImage(image, { check: false }) // fsck has just checked it
  try {
    return punchFreeOf(image, img, () => {}).blocks
  } finally {
    img.db.close()
  }
}

/** punch every free range of an open image's data area, then leave the database a plain one at rest */
function punchFreeOf (image: string, img: OpenImage, log: (line: string) => void): DiscardStats {
  const tree = ExtentTree.open(img.db, { totalBlocks: img.sb.capacityBlocks })
  const area = DataArea.open(image, img.sb.uuid, false)
  try {
    const d = new Discard(area.descriptor, true, log)
    d.punchAll(tree.freeRanges())
    img.db.pragma('journal_mode = DELETE')
    return d.stats
  } finally {
    area.close()
  }
}

export function compact (image: string, log?: (line: string) => void): CompactReport {
  const img = openImage(image) // a missing or foreign file: its one-line error
  const sqliteBefore = fs.statSync(image).size
  try {
    img.db.pragma('auto_vacuum = INCREMENTAL')
    img.db.exec('VACUUM')
    const d = punchFreeOf(image, img, log ?? (l => process.stderr.write(l + '\n')))
    return { sqliteBefore, sqliteAfter: 0, punchedBlocks: d.blocks, discard: d.enabled }
  } finally {
    img.db.close()
  }
}
