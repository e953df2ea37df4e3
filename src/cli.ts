// foliofs command line: mkfs, mount, umount, fsck, stats, fiemap, preload, help, --version.
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import { execFile, execFileSync, spawnSync } from 'child_process'
import { EXIT, ImageError, mkfs, openImage, parseSize } from './image'
import { fsckOrCorrupt } from './fsck'
import { compact } from './compact'
import { repairImage } from './fsck-repair'
import { bindSecondMount, isRemount, liveStats, mountOfImage, optionsOfFirstMount, parseMountOptions, parseRemountOptions, preflight, remount, runSupervisor, runWorker, startBackground, umount } from './daemon'
import { findMount, isStale, linksResolved, runDir } from './mounts'
import { FolioFs } from './fs'
import { progress } from './progress'
import { FIEMAP_EXTENT_DELALLOC, FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_MERGED, FIEMAP_EXTENT_UNKNOWN, FIEMAP_EXTENT_UNWRITTEN, FIEMAP_FLAG_SYNC, FIEMAP_MAX_PER_CALL } from './fiemap'

/** Run fn, then end (also when fn throws). */
function ended<T> (fn: () => T, end: () => void): T {
  try { return fn() } finally { end() }
}

function words (key: string): string {
  return key.replace(/([a-z])([A-Z])/g, '$1 $2').replace(/_/g, ' ').toLowerCase()
}

function bytes (n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let k = 0
  while (n >= 1024 && k < units.length - 1) { n /= 1024; k++ }
  return `${k ? n.toFixed(1) : n} ${units[k]}`
}

/** `foliofs stats` as a two-column table; nested objects become indented sections. */
function table (o: Record<string, unknown>, indent = ''): string[] {
  const keys = Object.keys(o)
  const width = Math.max(0, ...keys.map(k => words(k).length)) + 2
  const rows: string[] = []
  const blockSize = typeof o.blockSize === 'number' ? o.blockSize : 0
  for (const k of keys) {
    const v = o[k]
    if (v !== null && typeof v === 'object') {
      rows.push(`${indent}${words(k)}`, ...table(v as Record<string, unknown>, indent + '  '))
      continue
    }
    let text = typeof v === 'boolean' ? (v ? 'yes' : 'no') : String(v)
    if (blockSize && typeof v === 'number' && k === 'capacityBlocks') text += `  (${bytes(v * blockSize)})`
    if (blockSize && typeof v === 'number' && k === 'usedBlocks' && typeof o.capacityBlocks === 'number') {
      text += `  (${bytes(v * blockSize)}, ${(100 * v / o.capacityBlocks).toFixed(1)}%)`
    }
    rows.push(`${indent}${words(k).padEnd(width)}${text}`)
  }
  return rows
}

const MOUNT_OPTIONS = `mount options: ro, rw, noatime, relatime, strictatime, allow_other, nosuid, nodev, noexec, sync, cache_size=SIZE, attr_timeout=S,
  entry_timeout=S, debug, inject_restarts=P (fault injection: B-tree transaction restarts with probability P),
  debug_checks, dirty_expire=SECONDS (write back dirty data older than this; default 5),
  writeback_delay_ms=N (fault injection: writeback holds its folio locks N ms longer),
  discard, nodiscard (give freed data-area blocks back to the host; default discard),
  read_plans, noread_plans (read plans: the binding reads the data area for the daemon; default on),
  readahead=KB (the kernel's readahead window, root only; default 2048), suid, nosuid, dev, nodev, exec, noexec, async, dirsync,
  and fstab's defaults, auto, noauto, user, nouser, users, _netdev, nofail, x-* (ignored)`

/** Each command's one-line synopsis and what `foliofs help COMMAND` adds to it. */
const COMMANDS: Record<string, { usage: string, help: string }> = {
  mkfs: {
    usage: 'foliofs mkfs [--size SIZE] [--label LABEL] [--force] IMAGE',
    help: `Create an empty foliofs image. SIZE is the logical capacity (default 8G;
suffixes K, M, G, T, P; 256K to 4P); --force replaces an existing file. Shows its progress
on stderr when that is a terminal.`
  },
  mount: {
    usage: 'foliofs mount IMAGE MOUNTPOINT [-o OPTIONS] [--foreground|-f] [--log FILE]',
    help: `Mount IMAGE on MOUNTPOINT. Returns once the mount is live; a supervisor
keeps the FUSE worker running in the background (log: /run/foliofs/, or
--log FILE). --foreground (-f) runs the worker in the terminal until it is
unmounted or gets SIGINT/SIGTERM.
-o remount,ro / -o remount,rw (root; IMAGE may be left out): switch a live
mount: to read-only after writing everything back (refused while files are
open for writing or deleted files still open), back to read-write if it was mounted read-write. Other
options cannot change on a remount and are ignored, as mount(8) passes the
mount's current ones along; one that no mount takes is refused (exit 2).
${MOUNT_OPTIONS}`
  },
  umount: {
    usage: 'foliofs umount [--lazy|-l] MOUNTPOINT',
    help: `Unmount like umount(8): a busy filesystem is refused (exit 6), naming the
processes that use it; waits for
the daemon to close the image. --lazy detaches at once; the daemon exits
after the last open file is closed.`
  },
  fsck: {
    usage: 'foliofs fsck [--verify-data] [--repair] [--compact] IMAGE',
    help: `Check an unmounted image read-only: SQLite integrity (table by table), the
extent B-tree, links, reachability, sizes and block accounting. Each finding
names the inode and its path. --verify-data also reads every written data
block and checks its crc32 (a scrub), listing damaged files by path.
Exit 0 clean, 8 errors found, 5 the image cannot be checked at all (cut
short, unreadable superblock), 4 not a foliofs image. Shows its progress on
stderr when that is a terminal.
--repair then fixes what is safe to fix: entries pointing to missing
inodes (removed), inodes no entry reaches (linked into /lost+found),
wrong link counts, block counts and sizes, free-space accounting; anything
else (damaged tables or extent tree, bad data) is reported and left, and an
image with such damage is not written at all. Exit 0 when the image is
clean afterwards, 8 when errors remain.
--compact gives unused space back to the host instead of checking: the
database is vacuumed (and set to vacuum itself at every unmount from then
on) and a hole is punched in IMAGE-data for every free range.`
  },
  stats: {
    usage: 'foliofs stats [--json] MOUNTPOINT|IMAGE',
    help: `Counters of a mounted filesystem (through its private ioctl) or of an
unmounted image, as a table; --json prints them as JSON for scripts.`
  },
  fiemap: {
    usage: 'foliofs fiemap [--sync] [--json] FILE',
    help: `Print how FILE on a foliofs mount is laid out (its FIEMAP), like
filefrag -v: logical and physical blocks (4 KiB; physical = block of the
data area IMAGE-data), length, flags. Data not written back yet shows as
delalloc (no physical place yet); --sync writes the file back first
(FIEMAP_FLAG_SYNC), showing its progress on stderr when that is a terminal.
--json prints the extents (bytes) as JSON. Exit 4 if FILE is not on foliofs.`
  },
  preload: {
    usage: 'foliofs preload [--] COMMAND [ARGS...]',
    help: `Run COMMAND with foliofs's LD_PRELOAD shim, which gives unmodified
programs FS_IOC_FIEMAP on foliofs files (the kernel does not forward it to
FUSE filesystems), e.g.  foliofs preload filefrag -v FILE  or
foliofs preload xfs_io -c 'fiemap -v' FILE. Everything else passes through
unchanged. Exits with COMMAND's status (127: not found).`
  },
  help: {
    usage: 'foliofs help [COMMAND]',
    help: 'Show the usage of all commands, or the details of one.'
  }
}

const USAGE = `usage:
${Object.values(COMMANDS).map(c => `  ${c.usage}`).join('\n')}
  foliofs --version
${MOUNT_OPTIONS}`

function version (): string {
  const pkg = JSON.parse(fs.readFileSync(path.resolve(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }
  return pkg.version
}

function helpOf (cmd: string): string {
  const c = COMMANDS[cmd === 'unmount' ? 'umount' : cmd]
  if (!c) throw new ImageError(`help: unknown command '${cmd}' (commands: ${Object.keys(COMMANDS).join(', ')})`, EXIT.USAGE)
  return `usage: ${c.usage}\n\n${c.help}`
}

interface Parsed { pos: string[], flags: Map<string, string | true>, o: string[] }

/**
 * argv after the command: -o OPTS (or -oOPTS), --name[=value] (the names in
 * valued take a value), the single-letter options in shorts (as the long
 * name they stand for), `--` ending the options; anything else starting
 * with '-' is an unknown option, and an empty operand is refused (it named
 * a file '' or '-data' in the working directory).
 */
function parseArgs (cmd: string, args: string[], valued: string[], shorts: Record<string, string> = {}): Parsed {
  const p: Parsed = { pos: [], flags: new Map(), o: [] }
  const usage = (): string => `usage: ${COMMANDS[cmd].usage} (see: foliofs help ${cmd})`
  let operands = false
  for (let k = 0; k < args.length; k++) {
    const a = args[k]
    if (operands || a === '-' || !a.startsWith('-')) {
      if (a === '') throw new ImageError(`empty argument; ${usage()}`, EXIT.USAGE)
      p.pos.push(a)
    } else if (a === '--') {
      operands = true
    } else if (a === '-o') {
      if (k + 1 >= args.length) throw new ImageError('-o needs an option list', EXIT.USAGE)
      p.o.push(args[++k])
    } else if (a.startsWith('-o') && a.length > 2) {
      p.o.push(a.slice(2))
    } else if (a.startsWith('--')) {
      const eq = a.indexOf('=')
      const name = eq > 0 ? a.slice(2, eq) : a.slice(2)
      if (valued.includes(name)) {
        const v = eq > 0 ? a.slice(eq + 1) : args[++k]
        if (v === undefined) throw new ImageError(`--${name} needs a value`, EXIT.USAGE)
        p.flags.set(name, v)
      } else {
        if (eq > 0) throw new ImageError(`--${name} takes no value; ${usage()}`, EXIT.USAGE)
        p.flags.set(name, true)
      }
    } else if (shorts[a] !== undefined) {
      p.flags.set(shorts[a], true)
    } else {
      throw new ImageError(`unknown option ${a}; ${usage()}`, EXIT.USAGE)
    }
  }
  return p
}

function need (cmd: string, p: Parsed, n: number, allowed: string[]): void {
  const usage = `usage: ${COMMANDS[cmd].usage} (see: foliofs help ${cmd})`
  for (const f of p.flags.keys()) if (!allowed.includes(f)) throw new ImageError(`unknown flag --${f}; ${usage}`, EXIT.USAGE)
  if (p.o.length > 0 && cmd !== 'mount') throw new ImageError(`unknown option -o; ${usage}`, EXIT.USAGE)
  if (p.pos.length !== n) throw new ImageError(usage, EXIT.USAGE)
}

function ioctlTool (): string {
  return path.resolve(__dirname, '..', '..', 'native', 'build', 'foliofs-ioctl')
}

const preloadLib = (): string => path.resolve(__dirname, '..', '..', 'native', 'build', 'libfoliofs-preload.so')

interface FiemapOut { logical: number, physical: number, length: number, flags: number }

/** the error of a failed foliofs-ioctl fiemap run (its JSON on stdout, or stderr) */
function fiemapFailure (file: string, err: unknown): ImageError {
  const e = err as { stdout?: string, stderr?: string }
  const j = (() => { try { return JSON.parse(e.stdout ?? '') as { errno?: number, error?: string } } catch { return null } })()
  if (j?.errno === 25 || j?.errno === 38 || j?.errno === 95) return new ImageError(`${file}: not on a foliofs mount`, EXIT.NOT_FOLIOFS)
  return new ImageError(`${file}: ${j?.error ?? (e.stderr ?? String(err)).trim()}`, 1)
}

/** the whole map of file, paging through the private ioctl (291 extents a call) */
function fiemapOf (file: string): FiemapOut[] {
  const out: FiemapOut[] = []
  let start = 0
  for (;;) {
    const args = ['fiemap', '--start', String(start), '--count', String(FIEMAP_MAX_PER_CALL), file]
    let text: string
    try {
      text = execFileSync(ioctlTool(), args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
    } catch (err) {
      throw fiemapFailure(file, err)
    }
    const r = JSON.parse(text) as { mapped: number, extents: FiemapOut[] }
    out.push(...r.extents)
    const last = r.extents[r.extents.length - 1]
    if (!last || r.extents.length < FIEMAP_MAX_PER_CALL || (last.flags & FIEMAP_EXTENT_LAST)) return out
    start = last.logical + last.length
  }
}

/** the mount's dirty and writeback bytes, all files (the stats ioctl works on any file of the mount) */
function cacheDirtyBytes (file: string): number {
  const s = JSON.parse(execFileSync(ioctlTool(), ['stats', file], { encoding: 'utf8' })) as { pagecache: { dirtyBytes: number, writebackBytes: number } }
  return s.pagecache.dirtyBytes + s.pagecache.writebackBytes
}

const PROGRESS_POLL_MS = 200

/**
 * FIEMAP_FLAG_SYNC: one count-only call in which the daemon writes file
 * back. On a terminal, stderr shows how much of the file's delalloc data
 * is written back meanwhile, from the mount's dirty bytes (other files'
 * writes can only make it look slower, never done too early).
 */
async function fiemapSync (file: string): Promise<void> {
  const shown = progress(`fiemap --sync ${file}`)
  let timer: NodeJS.Timeout | null = null
  try {
    const total = shown.active ? fiemapOf(file).filter(e => e.flags & FIEMAP_EXTENT_DELALLOC).reduce((n, e) => n + e.length, 0) : 0
    if (total > 0) {
      const others = Math.max(0, cacheDirtyBytes(file) - total)
      const MiB = 1024 * 1024
      const show = (): void => {
        const left = Math.min(total, Math.max(0, cacheDirtyBytes(file) - others))
        shown.update('writing back (MiB)', Math.round((total - left) / MiB), Math.ceil(total / MiB))
      }
      show()
      timer = setInterval(() => { try { show() } catch { /* the call's own result reports errors */ } }, PROGRESS_POLL_MS)
    }
    await new Promise<void>((resolve, reject) => {
      execFile(ioctlTool(), ['fiemap', '--count', '0', '--flags', String(FIEMAP_FLAG_SYNC), file], { encoding: 'utf8' },
        (err, stdout, stderr) => { if (err) reject(fiemapFailure(file, { stdout, stderr })); else resolve() })
    })
  } finally {
    if (timer) clearInterval(timer)
    shown.end()
  }
}

const FE_FLAGS: Array<[number, string]> = [[FIEMAP_EXTENT_LAST, 'last'], [FIEMAP_EXTENT_UNKNOWN, 'unknown_loc'],
  [FIEMAP_EXTENT_DELALLOC, 'delalloc'], [FIEMAP_EXTENT_UNWRITTEN, 'unwritten'], [FIEMAP_EXTENT_MERGED, 'merged']]

function fiemapTable (file: string, extents: FiemapOut[]): string[] {
  const size = fs.statSync(file).size
  const rows = [`${file}: ${size} bytes, ${extents.length} extent${extents.length === 1 ? '' : 's'}`,
    ' ext  logical blocks          physical blocks         length  flags']
  extents.forEach((e, i) => {
    const lb = e.logical / 4096
    const n = e.length / 4096
    const phys = e.flags & FIEMAP_EXTENT_UNKNOWN ? '-' : `${e.physical / 4096}..${e.physical / 4096 + n - 1}`
    const flags = FE_FLAGS.filter(([b]) => e.flags & b).map(([, w]) => w).join(',')
    rows.push(`${String(i).padStart(4)}  ${`${lb}..${lb + n - 1}`.padEnd(22)}  ${phys.padEnd(22)}  ${String(n).padStart(6)}  ${flags}`)
  })
  return rows
}

function statsOfImage (image: string): Record<string, unknown> {
  const img = openImage(image, { readonly: true })
  const folio = new FolioFs(img)
  try {
    const st = folio.statfs()
    return {
      image: path.resolve(image),
      mounted: false,
      uuid: img.sb.uuid,
      label: img.sb.label,
      version: img.sb.version,
      blockSize: img.sb.blockSize,
      capacityBlocks: img.sb.capacityBlocks,
      usedBlocks: folio.used,
      inodes: st.files - st.ffree,
      btree: folio.data.summary()
    }
  } finally {
    folio.close()
  }
}

async function main (argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv
  // `foliofs CMD ... --help`; for preload only right after it: what follows is COMMAND's (`foliofs preload df -h`)
  const asksHelp = cmd === 'preload' ? ['--help', '-h'].includes(rest[0]) : rest.includes('--help') || rest.includes('-h')
  if (cmd && COMMANDS[cmd === 'unmount' ? 'umount' : cmd] && asksHelp) {
    console.log(helpOf(cmd))
    return 0
  }
  switch (cmd) {
    case 'mkfs': {
      const p = parseArgs('mkfs', rest, ['size', 'label'])
      need('mkfs', p, 1, ['size', 'label', 'force'])
      const size = p.flags.get('size')
      const shown = progress(`mkfs ${p.pos[0]}`)
      const sb = ended(() => mkfs(p.pos[0], {
        capacityBytes: typeof size === 'string' ? parseSize(size) : undefined,
        label: typeof p.flags.get('label') === 'string' ? p.flags.get('label') as string : undefined,
        force: p.flags.has('force'),
        progress: shown.update
      }), shown.end)
      console.log(`foliofs: created ${p.pos[0]}: uuid ${sb.uuid}, ${sb.capacityBlocks} blocks of ${sb.blockSize} bytes`)
      return 0
    }
    case 'mount': {
      const p = parseArgs('mount', rest, ['log'], { '-f': 'foreground' })
      if (isRemount(p.o)) {
        if (p.flags.size > 0 || p.pos.length < 1 || p.pos.length > 2) throw new ImageError(`usage: foliofs mount [IMAGE] MOUNTPOINT -o remount,ro|rw`, EXIT.USAGE)
        await remount(p.pos[p.pos.length - 1], parseRemountOptions(p.o).readonly)
        return 0
      }
      need('mount', p, 2, ['foreground', 'log'])
      const [image, mountpoint] = p.pos
      const opts = parseMountOptions(p.o)
      if (p.flags.has('foreground')) {
        const notify = (m: { ready?: true, error?: string, exitCode?: number, phase?: string }): void => { if (process.send) process.send(m) }
        try {
          return await runWorker(image, mountpoint, opts, notify)
        } catch (err) {
          const code = err instanceof ImageError ? err.exitCode : EXIT.MOUNT_FAILED
          notify({ error: (err as Error).message, exitCode: code })
          throw err
        }
      }
      const first = mountOfImage(image)
      const log = p.flags.get('log')
      if (first) {
        bindSecondMount(first, mountpoint, opts)
        const kept = optionsOfFirstMount(p.o).concat(log !== undefined ? ['--log'] : [])
        if (kept.length) process.stderr.write(`foliofs: note: ${image} is mounted at ${first.mountpoint}: ${mountpoint} is a bind mount of it, with that mount's options and log (not taken: ${kept.join(' ')})\n`)
        return 0
      }
      if (log === '') throw new ImageError('--log: empty file name', EXIT.USAGE)
      preflight(image, mountpoint, opts.readonly)
      const logFile = typeof log === 'string' ? log : path.join(runDir(), path.resolve(mountpoint).replace(/\//g, '_') + '.log')
      const optArgs = p.o.length ? ['-o', p.o.join(',')] : []
      return await startBackground(path.resolve(image), path.resolve(mountpoint), optArgs, logFile, typeof log === 'string')
    }
    case '__supervise':
      runSupervisor(rest)
      return -1 // keeps running
    case 'umount':
    case 'unmount': {
      const p = parseArgs('umount', rest, [], { '-l': 'lazy' })
      need('umount', p, 1, ['lazy'])
      await umount(p.pos[0], { lazy: p.flags.has('lazy') })
      return 0
    }
    case 'fsck': {
      const p = parseArgs('fsck', rest, [])
      need('fsck', p, 1, ['verify-data', 'compact', 'repair'])
      const image = p.pos[0]
      if (p.flags.has('compact')) {
        if (p.flags.size > 1) throw new ImageError(`--compact goes alone; usage: ${COMMANDS.fsck.usage}`, EXIT.USAGE)
        const r = compact(image)
        r.sqliteAfter = fs.statSync(image).size
        console.log(`foliofs fsck --compact ${image}: database ${bytes(r.sqliteBefore)} -> ${bytes(r.sqliteAfter)}; ${r.discard ? `${bytes(r.punchedBlocks * 4096)} of free data area punched` : 'the data area cannot be punched here'}`)
        return 0
      }
      let report: ReturnType<typeof fsckOrCorrupt>
      if (p.flags.has('repair')) {
        const r = repairImage(image, { verifyData: p.flags.has('verify-data') })
        for (const line of r.repaired) console.log(`repaired: ${line}`)
        if (r.refused) console.log(`not repaired: ${r.refused}; mount it read-only (-o ro) to copy files off`)
        report = r.report
      } else {
        const shown = progress(`fsck ${image}`)
        report = ended(() => fsckOrCorrupt(image, { verifyData: p.flags.has('verify-data'), progress: shown.update }), shown.end)
      }
      for (const line of report.errors) console.log(`error: ${line}`)
      for (const file of report.damaged ?? []) console.log(`damaged: ${file}`)
      const data = report.verified === undefined ? '' : `; data: ${report.verified} blocks verified, ${report.unverified ?? 0} without checksum, ${report.damaged?.length ?? 0} damaged files`
      console.log(`foliofs fsck ${image}: ${report.inodes} inodes, ${report.dirents} entries, ${report.blocks} data blocks${report.journaled ? ` (and ${report.journaled} in the data journal, replayed at the next mount)` : ''}, ${report.errors.length} errors${data}`)
      return report.errors.length ? EXIT.FSCK_ERRORS : 0
    }
    case 'stats': {
      const p = parseArgs('stats', rest, [])
      need('stats', p, 1, ['json'])
      const target = p.pos[0]
      const stale = (): ImageError => new ImageError(`${target}: stale mount (its daemon is gone); clear it with foliofs umount ${target}`, EXIT.NOT_FOUND)
      const live = (mp: string): Record<string, unknown> => {
        try {
          return { mounted: true, ...liveStats(mp) }
        } catch (err) {
          if ((err as ImageError).exitCode !== EXIT.BUSY && isStale(mp)) throw stale()
          throw err
        }
      }
      // a mount point is asked without a stat of it: a stat waits for a daemon that does not answer
      // (through symlinks too, followed without a stat)
      const where = linksResolved(target)
      const asMount = findMount(where)?.mountpoint === where
      let st: fs.Stats | undefined
      if (!asMount) {
        try {
          st = fs.statSync(target)
        } catch {
          if (isStale(target)) throw stale()
          throw new ImageError(`${target}: no such file or mount point`, EXIT.NOT_FOUND)
        }
      }
      let stats: Record<string, unknown>
      if (asMount || st?.isDirectory() === true) {
        const m = findMount(where)
        if (!m || m.fstype !== 'fuse.foliofs') throw new ImageError(`${target}: not a foliofs mount point`, EXIT.USAGE)
        stats = live(where)
      } else {
        // a mounted image: its daemon's numbers (what is on disk lags them; a read-only mount's lock would not even say it is in use)
        const m = mountOfImage(target)
        stats = m ? live(m.mountpoint) : statsOfImage(target)
      }
      console.log(p.flags.has('json') ? JSON.stringify(stats, null, 2) : table(stats).join('\n'))
      return 0
    }
    case 'fiemap': {
      const p = parseArgs('fiemap', rest, [])
      need('fiemap', p, 1, ['sync', 'json'])
      const file = p.pos[0]
      if (isStale(file)) throw new ImageError(`${file}: on a stale mount (its daemon is gone); clear it with foliofs umount MOUNTPOINT`, EXIT.NOT_FOUND)
      if (!fs.existsSync(file)) throw new ImageError(`${file}: no such file`, EXIT.NOT_FOUND)
      // FIEMAP maps a file's data: a FIFO, socket or device node has none (and opening a FIFO waits for a writer)
      const st = fs.statSync(file)
      if (!st.isFile() && !st.isDirectory()) throw new ImageError(`${file}: not a regular file or directory (FIEMAP maps their data)`, EXIT.USAGE)
      if (p.flags.has('sync')) await fiemapSync(file)
      const extents = fiemapOf(file)
      console.log(p.flags.has('json') ? JSON.stringify({ file, size: fs.statSync(file).size, extents }, null, 2) : fiemapTable(file, extents).join('\n'))
      return 0
    }
    case 'preload': {
      const argv = rest[0] === '--' ? rest.slice(1) : rest // as env(1) and nice(1): -- before COMMAND is not COMMAND
      if (argv.length === 0 || argv[0] === '') throw new ImageError(`usage: ${COMMANDS.preload.usage}`, EXIT.USAGE)
      const lib = preloadLib()
      if (!fs.existsSync(lib)) throw new ImageError(`${lib} is missing (run npm run setup)`, EXIT.USAGE)
      const env = { ...process.env, LD_PRELOAD: [lib, process.env.LD_PRELOAD].filter(Boolean).join(' ') }
      const r = spawnSync(argv[0], argv.slice(1), { stdio: 'inherit', env })
      if (r.error) {
        // the shell's answers: 127 not found, 126 found but not executable
        const code = (r.error as NodeJS.ErrnoException).code
        process.stderr.write(`foliofs: ${argv[0]}: ${code === 'ENOENT' ? 'command not found' : code === 'EACCES' ? 'permission denied' : r.error.message}\n`)
        return code === 'ENOENT' ? 127 : 126
      }
      return r.status ?? 128 + (r.signal ? os.constants.signals[r.signal] : 0)
    }
    case '--version':
    case '-V':
    case 'version':
      if (rest.length > 0) throw new ImageError(`usage: foliofs --version`, EXIT.USAGE)
      console.log(`foliofs ${version()}`)
      return 0
    case 'help':
      if (rest.length > 1) throw new ImageError(`usage: ${COMMANDS.help.usage}`, EXIT.USAGE)
      console.log(rest.length ? helpOf(rest[0]) : USAGE)
      return 0
    case undefined:
      throw new ImageError('no command; usage: foliofs COMMAND [ARGS...] (commands and options: foliofs help)', EXIT.USAGE)
    case '-h':
    case '--help':
      console.log(USAGE)
      return 0
    default:
      throw new ImageError(`unknown command '${cmd}' (see: foliofs help)`, EXIT.USAGE)
  }
}

/**
 * Exit with code once stdout and stderr have taken everything written to
 * them: into a pipe, process.exit() alone drops what the pipe has not
 * taken yet (`foliofs fiemap --json | jq` got the first 64 KiB).
 */
function exitFlushed (code: number): void {
  process.exitCode = code
  let left = 2
  const done = (): void => { if (--left === 0) process.exit(code) }
  process.stdout.write('', done)
  process.stderr.write('', done)
}

export function run (): void {
  main(process.argv.slice(2)).then(code => {
    if (code >= 0) exitFlushed(code)
  }, err => {
    if (err instanceof ImageError) {
      process.stderr.write(`foliofs: ${err.message}\n`)
      exitFlushed(err.exitCode)
      return
    }
    // a bug, not bad input: one line (the stack with DEBUG set)
    process.stderr.write(`foliofs: internal error: ${(err as Error)?.message ?? String(err)}${process.env.DEBUG ? `\n${(err as Error)?.stack ?? ''}` : ' (DEBUG=foliofs:* shows where)'}\n`)
    exitFlushed(1)
  })
}

if (require.main === module) run()

export { main }
