// The B-tree layer's public API. Code outside src/btree/ imports from here.
export { ExtentTree, BTREE_SCHEMA, type TreeOptions, type TreeStats } from './tree'
export { BtreeTrans, transGet, MAX_EXTENT_LEN, FAIR_RESTARTS, HARD_RESTARTS, type CommitResult } from './trans'
export { lockrestartDo, lockrestartDoSync, commitDo, dropLocksDo, nonblockingOrDrop, yieldToLoop } from './retry'
export { BtreeIter } from './iter'
export { BtreeError, TransRestart, isRestart, RESTART_REASONS, type RestartReason, type BtreeErrCode } from './errors'
export { EXT_WRITTEN, EXT_UNWRITTEN, type Extent, type Pos } from './node'
export type { Range } from './rangeset'
export { salvageExtentTree, type SalvageResult } from './salvage'
