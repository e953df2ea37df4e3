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
import { openImage } from './image'
import { DataArea } from './dataarea'
import { Discard } from './discard'
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
  let area: DataArea | null = null
  try {
    const tree = ExtentTree.open(img.db, { totalBlocks: img.sb.capacityBlocks })
    area = DataArea.open(image, img.sb.uuid, false)
    const d = new Discard(area.descriptor, true, () => {})
    d.punchAll(tree.freeRanges())
    img.db.pragma('journal_mode = DELETE')
    return d.stats.blocks
  } finally {
    area?.close()
    img.db.close()
  }
}

export function compact (image: string, log?: (line: string) => void): CompactReport {
  const img = openImage(image) // a missing or foreign file: its one-line error
  const sqliteBefore = fs.statSync(image).size
  const db = img.db
  let area: DataArea | null = null
  try {
    db.pragma('auto_vacuum = INCREMENTAL')
    db.exec('VACUUM')
    const tree = ExtentTree.open(db, { totalBlocks: img.sb.capacityBlocks })
    area = DataArea.open(image, img.sb.uuid, false)
    const d = new Discard(area.descriptor, true, log)
    d.punchAll(tree.freeRanges())
    db.pragma('journal_mode = DELETE')
    return { sqliteBefore, sqliteAfter: 0, punchedBlocks: d.stats.blocks, discard: d.stats.enabled }
  } finally {
    area?.close()
    db.close()
  }
}
