// fsx-style randomized file tester: a seeded, reproducible sequence of
// random operations on one file through the filesystem, mirrored in an
// in-memory model; every read is checked against the model.
//   node dist/test/fsx.js [--seed N] [--ops N] [--size MAX] [--oplen MAX]
//                         [--no-mmap] [--no-punch] [--dump EXPECTED] FILE
// Operations: write (random offset and length, also past EOF), read,
// truncate (shrink and grow), fsync, fdatasync, close+reopen, punch hole
// (fallocate PUNCH_HOLE|KEEP_SIZE; probed once at start, skipped where the
// filesystem answers EOPNOTSUPP) and mmap reads/writes. Node has no mmap or
// fallocate: those run in batches through test/fsx-helper.py (python3),
// started once and spoken to synchronously (over FIFOs), so the order of
// all operations is exactly the log's.
// A quarter of the offsets and lengths are 4 KiB-aligned (whole-block
// paths), the rest are arbitrary (partial blocks).
// On a mismatch: the last 20 operations, the first differing offset, exit 1.
// On success: one summary line; with --dump, the model's final content is
// written to EXPECTED (compare it with the file after a remount).
import * as fs from 'fs'
import * as path from 'path'
import * as os from 'os'
import { spawn, spawnSync, type ChildProcess } from 'child_process'
import { rng } from '../src/rng'

interface Args { seed: number, ops: number, size: number, oplen: number, mmap: boolean, punch: boolean, dump?: string, file: string }

function usage (msg: string): never {
  process.stderr.write(`fsx: ${msg}\nusage: node dist/test/fsx.js [--seed N] [--ops N] [--size MAX] [--oplen MAX] [--no-mmap] [--no-punch] [--dump EXPECTED] FILE\n`)
  process.exit(2)
}

function parseArgs (argv: string[]): Args {
  const a: Partial<Args> = { seed: 1, ops: 10000, size: 256 * 1024, oplen: 64 * 1024, mmap: true, punch: true }
  const num = (v: string | undefined, name: string): number => {
    const n = Number(v)
    if (v === undefined || !Number.isInteger(n) || n < 0) usage(`--${name} needs a non-negative integer`)
    return n
  }
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i]
    if (x === '--seed') a.seed = num(argv[++i], 'seed')
    else if (x === '--ops') a.ops = num(argv[++i], 'ops')
    else if (x === '--size') a.size = num(argv[++i], 'size')
    else if (x === '--oplen') a.oplen = num(argv[++i], 'oplen')
    else if (x === '--no-mmap') a.mmap = false
    else if (x === '--no-punch') a.punch = false
    else if (x === '--dump') { a.dump = argv[++i]; if (!a.dump) usage('--dump needs a file') }
    else if (x.startsWith('--')) usage(`unknown option ${x}`)
    else if (a.file === undefined) a.file = x
    else usage('one FILE only')
  }
  if (a.file === undefined) usage('FILE missing')
  if (a.size! < 1 || a.oplen! < 1) usage('--size and --oplen must be at least 1')
  return a as Args
}

const args = parseArgs(process.argv.slice(2))
const HELPER = path.join(__dirname, '..', '..', 'test', 'fsx-helper.py')
const BLOCK = 4096
const rand = rng(args.seed)
const dataRand = rng(args.seed ^ 0x5bd1e995)
const below = (n: number): number => Math.floor(rand() * n)

/** the model: bytes [0, size) of the file; everything past size is kept zero */
const model = Buffer.alloc(args.size)
let size = 0
const log: string[] = []
let opNo = 0
let fd = fs.openSync(args.file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o644)
const counts: Record<string, number> = {}

function note (s: string): void {
  log.push(`#${opNo} ${s}`)
  if (log.length > 20) log.shift()
}

function fail (msg: string, firstBad?: number): never {
  process.stdout.write(`fsx: FAILED at op ${opNo} (seed ${args.seed}): ${msg}\n`)
  if (firstBad !== undefined) process.stdout.write(`fsx: first differing byte at offset ${firstBad} (0x${firstBad.toString(16)})\n`)
  process.stdout.write('fsx: last operations:\n' + log.map(l => `  ${l}\n`).join(''))
  process.exit(1)
}

function firstDiff (a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i
  return n
}

function check (what: string, got: Buffer, off: number): void {
  const want = model.subarray(off, off + got.length)
  if (!got.equals(want)) {
    const i = firstDiff(got, want)
    fail(`${what}: data differs (got 0x${got[i].toString(16)}, want 0x${want[i].toString(16)})`, off + i)
  }
}

function fileSize (): number {
  return fs.fstatSync(fd).size
}

function checkSize (what: string): void {
  const s = fileSize()
  if (s !== size) fail(`${what}: file size ${s}, model ${size}`)
}

/** offset and length within [0, limit): 4 KiB-aligned a quarter of the time */
function range (limit: number, maxLen: number): { off: number, len: number } {
  if (rand() < 0.25 && limit >= BLOCK) {
    const off = below(Math.floor(limit / BLOCK)) * BLOCK
    const blocks = Math.max(1, Math.floor(Math.min(maxLen, limit - off) / BLOCK))
    return { off, len: (1 + below(blocks)) * BLOCK }
  }
  const off = below(limit)
  return { off, len: 1 + below(Math.min(maxLen, limit - off)) }
}

function randomData (len: number): Buffer {
  const b = Buffer.allocUnsafe(len)
  for (let i = 0; i < len; i += 4) {
    const v = (dataRand() * 4294967296) >>> 0
    for (let k = 0; k < 4 && i + k < len; k++) b[i + k] = (v >>> (8 * k)) & 0xff
  }
  return b
}

function setModelSize (n: number): void {
  if (n < size) model.fill(0, n, size)
  size = n
}

function opWrite (): void {
  const { off, len } = range(args.size, args.oplen)
  const data = randomData(len)
  note(`write off=${off} len=${len} (size ${size} -> ${Math.max(size, off + len)})${off > size ? ' past EOF' : ''}`)
  let done = 0
  while (done < len) done += fs.writeSync(fd, data, done, len - done, off + done)
  data.copy(model, off)
  if (off + len > size) size = off + len
}

function opRead (): void {
  // mostly inside the file, sometimes across or past EOF
  const limit = rand() < 0.8 && size > 0 ? size : args.size
  const { off, len } = range(limit, args.oplen)
  note(`read off=${off} len=${len} (size ${size})`)
  const buf = Buffer.alloc(len)
  let got = 0
  for (;;) {
    const n = fs.readSync(fd, buf, got, len - got, off + got)
    if (n === 0) break
    got += n
    if (got === len) break
  }
  const want = Math.max(0, Math.min(len, size - off))
  if (got !== want) fail(`read returned ${got} bytes, model has ${want}`, off + Math.min(got, want))
  check('read', buf.subarray(0, got), off)
  checkSize('read')
}

function opTruncate (): void {
  const n = rand() < 0.25 ? below(args.size / BLOCK) * BLOCK : below(args.size + 1)
  note(`truncate ${size} -> ${n} (${n < size ? 'shrink' : n > size ? 'grow' : 'same'})`)
  fs.ftruncateSync(fd, n)
  setModelSize(n)
  checkSize('truncate')
}

function opFsync (data: boolean): void {
  note(data ? 'fdatasync' : 'fsync')
  if (data) fs.fdatasyncSync(fd)
  else fs.fsyncSync(fd)
}

function opReopen (): void {
  note('close + reopen')
  fs.closeSync(fd)
  fd = fs.openSync(args.file, fs.constants.O_RDWR)
  checkSize('reopen')
}

interface HelperOp { op: 'mapread' | 'mapwrite' | 'punch', off: number, len: number, data?: string }
interface HelperResult { data?: string, errno?: string, msg?: string }

/**
 * The python helper, started once and spoken to synchronously over two
 * FIFOs (one JSON line each way). Node opens the request FIFO read-write
 * and the answer FIFO non-blocking, so neither open can hang, and a helper
 * that dies shows as EOF on the answer FIFO instead of a hang.
 */
class Helper {
  private readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fsx-'))
  private readonly req: number
  private readonly resp: number
  private readonly child: ChildProcess
  private pending = ''
  private readonly wait = new Int32Array(new SharedArrayBuffer(4))

  constructor (file: string) {
    const reqPath = path.join(this.dir, 'req')
    const respPath = path.join(this.dir, 'resp')
    const mk = spawnSync('mkfifo', [reqPath, respPath])
    if (mk.status !== 0) throw new Error(`mkfifo failed: ${mk.stderr}`)
    this.req = fs.openSync(reqPath, fs.constants.O_RDWR)
    this.resp = fs.openSync(respPath, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK)
    this.child = spawn('python3', [HELPER, file, reqPath, respPath], { stdio: ['ignore', 'ignore', 'inherit'] })
    this.child.unref()
    if (this.line(true) !== 'hello') throw new Error('fsx-helper.py did not start')
  }

  private line (starting = false): string {
    const buf = Buffer.alloc(65536)
    const deadline = Date.now() + 60_000
    for (;;) {
      const nl = this.pending.indexOf('\n')
      if (nl >= 0) {
        const l = this.pending.slice(0, nl)
        this.pending = this.pending.slice(nl + 1)
        return l
      }
      let n: number
      try {
        n = fs.readSync(this.resp, buf, 0, buf.length, null)
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e
        n = -1
      }
      if (n > 0) { this.pending += buf.toString('latin1', 0, n); continue }
      // EAGAIN: no answer yet; EOF: no writer (not started yet, or dead)
      if (n === 0 && !starting) throw new Error('fsx-helper.py exited')
      if (Date.now() > deadline) throw new Error('fsx-helper.py: no answer within 60 s')
      Atomics.wait(this.wait, 0, 0, 1)
    }
  }

  run (ops: HelperOp[]): HelperResult[] {
    const msg = Buffer.from(JSON.stringify(ops) + '\n')
    let done = 0
    while (done < msg.length) done += fs.writeSync(this.req, msg, done)
    return JSON.parse(this.line()) as HelperResult[]
  }

  close (): void {
    try { fs.closeSync(this.req) } catch { /* exiting anyway */ }
    try { fs.closeSync(this.resp) } catch { /* exiting anyway */ }
    fs.rmSync(this.dir, { recursive: true, force: true })
  }
}

let helperProc: Helper | undefined
process.on('exit', () => helperProc?.close())

function helper (ops: HelperOp[]): HelperResult[] {
  try {
    helperProc ??= new Helper(args.file)
    return helperProc.run(ops)
  } catch (e) {
    fail(`mmap/punch helper: ${(e as Error).message}`)
  }
}

let punchOk = false

function probePunch (): void {
  if (!args.punch) return
  // the file is empty: punching past EOF with KEEP_SIZE changes nothing where it is supported
  const [r] = helper([{ op: 'punch', off: 0, len: BLOCK }])
  if (!r.errno) punchOk = true
  else if (r.errno === 'EOPNOTSUPP' || r.errno === 'ENOTSUP' || r.errno === 'ENOSYS') process.stderr.write(`fsx: punch hole not supported here (${r.errno}); skipped\n`)
  else fail(`punch probe: ${r.errno} ${r.msg ?? ''}`)
}

/** a batch of 1..8 mapped reads/writes and hole punches, run in one helper process */
function opBatch (): void {
  const batch: HelperOp[] = []
  const planned: string[] = []
  let sz = size
  const n = 1 + below(8)
  for (let i = 0; i < n; i++) {
    const kinds: Array<HelperOp['op']> = []
    if (args.mmap) kinds.push('mapread', 'mapwrite')
    if (punchOk) kinds.push('punch')
    if (kinds.length === 0) return
    const kind = kinds[below(kinds.length)]
    if (kind === 'mapread') {
      if (sz === 0) continue
      const { off, len } = range(sz, args.oplen)
      batch.push({ op: kind, off, len })
      planned.push(`mapread off=${off} len=${len} (size ${sz})`)
    } else if (kind === 'mapwrite') {
      const { off, len } = range(args.size, args.oplen)
      batch.push({ op: kind, off, len, data: randomData(len).toString('base64') })
      planned.push(`mapwrite off=${off} len=${len} (size ${sz} -> ${Math.max(sz, off + len)})`)
      sz = Math.max(sz, off + len)
    } else {
      if (sz === 0) continue
      const { off, len } = range(sz, args.oplen)
      batch.push({ op: kind, off, len })
      planned.push(`punch off=${off} len=${len} (size ${sz})`)
    }
  }
  if (batch.length === 0) return
  const results = helper(batch)
  for (let i = 0; i < batch.length; i++) {
    const op = batch[i]
    counts[op.op] = (counts[op.op] ?? 0) + 1
    if (i > 0) opNo++
    note(planned[i] + (batch.length > 1 ? ` [batch ${i + 1}/${batch.length}]` : ''))
    const r = results[i]
    if (!r) fail(`${op.op}: no result from the helper`)
    if (r.errno) fail(`${op.op}: ${r.errno} ${r.msg ?? ''}`)
    if (op.op === 'mapread') {
      const got = Buffer.from(r.data!, 'base64')
      if (got.length !== op.len) fail(`mapread returned ${got.length} bytes, wanted ${op.len}`)
      check('mapread', got, op.off)
    } else if (op.op === 'mapwrite') {
      if (op.off + op.len > size) size = op.off + op.len
      Buffer.from(op.data!, 'base64').copy(model, op.off)
    } else {
      model.fill(0, op.off, Math.min(size, op.off + op.len))
    }
  }
  checkSize('after mmap/punch batch')
}

function verifyAll (what: string): void {
  checkSize(what)
  const buf = Buffer.alloc(size)
  let got = 0
  while (got < size) {
    const n = fs.readSync(fd, buf, got, size - got, got)
    if (n === 0) break
    got += n
  }
  if (got !== size) fail(`${what}: read ${got} of ${size} bytes`, got)
  check(what, buf, 0)
}

function main (): void {
  probePunch()
  const batchable = args.mmap || punchOk
  // weights: write 30, read 25, truncate 8, fsync 4, fdatasync 4, reopen 4, mmap/punch batch 6
  const table: Array<[number, string, () => void]> = [
    [30, 'write', opWrite], [25, 'read', opRead], [8, 'truncate', opTruncate],
    [4, 'fsync', () => opFsync(false)], [4, 'fdatasync', () => opFsync(true)],
    [4, 'reopen', opReopen], [6, 'batch', opBatch]
  ]
  const total = table.reduce((s, [w]) => s + w, 0)
  for (opNo = 1; opNo <= args.ops; opNo++) {
    let x = below(total)
    let i = 0
    while (x >= table[i][0]) x -= table[i++][0]
    const [, name, fn] = table[i]
    if (name === 'batch' && !batchable) continue
    try {
      fn()
    } catch (e) {
      fail(`${name}: ${(e as Error).message}`)
    }
    if (name !== 'batch') counts[name] = (counts[name] ?? 0) + 1
  }
  opNo = args.ops
  note('final verification (whole file)')
  verifyAll('final verification')
  fs.closeSync(fd)
  if (args.dump) fs.writeFileSync(args.dump, model.subarray(0, size))
  const mix = Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(', ')
  const executed = Object.values(counts).reduce((a, b) => a + b, 0)
  process.stdout.write(`fsx: ${executed} ops, seed ${args.seed}, final size ${size}: ok (${mix}; mmap ${args.mmap ? 'on' : 'off'}, punch ${punchOk ? 'on' : 'unsupported or off'})\n`)
}

main()
