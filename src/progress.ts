// Progress display for long operations (fsck, mkfs, fiemap --sync): one
// line on stderr, redrawn in place, only when stderr is a terminal; silent
// otherwise so scripts and logs see nothing but the result.

export type ProgressFn = (phase: string, done?: number, total?: number) => void

/** active: the stream is a terminal (otherwise update and end do nothing) */
export interface Progress { update: ProgressFn, end: () => void, active: boolean }

const REDRAW_MS = 100

export function progress (label: string, stream: NodeJS.WriteStream = process.stderr): Progress {
  if (!stream.isTTY) return { update: () => {}, end: () => {}, active: false }
  let phase = ''
  let last = 0
  let drawn = false
  const update: ProgressFn = (p, done, total) => {
    const now = Date.now()
    // a new phase always shows; counts within a phase at most every REDRAW_MS
    if (p === phase && now - last < REDRAW_MS) return
    phase = p
    last = now
    const count = done === undefined ? '' : total ? ` ${done}/${total} (${Math.floor(100 * done / total)}%)` : ` ${done}`
    const line = `${label}: ${p}${count}`.slice(0, Math.max(20, (stream.columns || 80) - 1))
    stream.write(`\r\x1b[K${line}`)
    drawn = true
  }
  const end = (): void => {
    if (drawn) stream.write('\r\x1b[K')
    drawn = false
  }
  return { update, end, active: true }
}
