// Typed errors of the B-tree and transaction layer (bcachefs style: a
// restart is not a failure, it is an instruction to re-run the transaction).

export const RESTART_REASONS = [
  'relock', //           a dropped lock could not be re-taken: the node changed meanwhile
  'would_deadlock', //   a trylock failed; waiting while holding locks is forbidden
  'upgrade', //          intent -> write upgrade failed at commit
  'injected' //          fault injection
] as const

export type RestartReason = typeof RESTART_REASONS[number]

export class TransRestart extends Error {
  readonly reason: RestartReason
  constructor (reason: RestartReason, detail?: string) {
    super(`transaction restart: ${reason}${detail ? ` (${detail})` : ''}`)
    this.name = 'TransRestart'
    this.reason = reason
  }
}

export const isRestart = (e: unknown): e is TransRestart => e instanceof TransRestart

export type BtreeErrCode =
  | 'lock_held_across_await' // debug check: a transaction awaited while holding node locks
  | 'trans_misuse' //           API used out of order: tree access after a swallowed restart or
  //                             inside dropLocksDo, a commit inside an outer SQLite transaction,
  //                             a synchronous transaction while another holds locks
  | 'node_corrupt' //           a page failed its checksum or structure checks
  | 'restart_limit' //          a transaction restarted past the hard bound

export class BtreeError extends Error {
  readonly code: BtreeErrCode
  constructor (code: BtreeErrCode, message: string) {
    super(`${code}: ${message}`)
    this.name = 'BtreeError'
    this.code = code
  }
}
