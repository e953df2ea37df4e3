// foliofs command line: mkfs, mount, umount, fsck, stats.
import * as fs from 'fs'
import * as path from 'path'
import { execFileSync } from 'child_process'
import { EXIT, ImageError, mkfs, openImage, parseSize } from './image'
import { fsck } from './fsck'
import { parseMountOptions, preflight, runSupervisor, runWorker, startBackground, umount } from './daemon'
import { findMount, runDir } from './mounts'
import { FolioFs } from './fs'

const USAGE = `usage:
  foliofs mkfs [--size SIZE] [--label LABEL] [--force] IMAGE
  foliofs mount IMAGE MOUNTPOINT [-o OPTIONS] [--foreground] [--log FILE]
  foliofs umount [--lazy] MOUNTPOINT
  foliofs fsck IMAGE
  foliofs stats MOUNTPOINT|IMAGE
mount options: ro, rw, noatime, allow_other, nosuid, nodev, noexec, sync, attr_timeout=S, entry_timeout=S, debug,
  inject_restarts=P (fault injection: B-tree transaction restarts with probability P), debug_checks`

interface Parsed { pos: string[], flags: Map<string, string | true>, o: string[] }

function parseArgs (args: string[], valued: string[]): Parsed {
  const p: Parsed = { pos: [], flags: new Map(), o: [] }
  for (let k = 0; k < args.length; k++) {
    const a = args[k]
    if (a === '-o') {
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
        p.flags.set(name, true)
      }
    } else if (a === '-f') {
      p.flags.set('foreground', true)
    } else {
      p.pos.push(a)
    }
  }
  return p
}

function need (p: Parsed, n: number, allowed: string[]): void {
  if (p.pos.length !== n) throw new ImageError(USAGE, EXIT.USAGE)
  for (const f of p.flags.keys()) if (!allowed.includes(f)) throw new ImageError(`unknown flag --${f}\n${USAGE}`, EXIT.USAGE)
}

function ioctlTool (): string {
  return path.resolve(__dirname, '..', '..', 'native', 'build', 'foliofs-ioctl')
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
      capacityBlocks: st.blocks,
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
  switch (cmd) {
    case 'mkfs': {
      const p = parseArgs(rest, ['size', 'label'])
      need(p, 1, ['size', 'label', 'force'])
      const size = p.flags.get('size')
      const sb = mkfs(p.pos[0], {
        capacityBytes: typeof size === 'string' ? parseSize(size) : undefined,
        label: typeof p.flags.get('label') === 'string' ? p.flags.get('label') as string : undefined,
        force: p.flags.has('force')
      })
      console.log(`foliofs: created ${p.pos[0]}: uuid ${sb.uuid}, ${sb.capacityBlocks} blocks of ${sb.blockSize} bytes`)
      return 0
    }
    case 'mount': {
      const p = parseArgs(rest, ['log'])
      need(p, 2, ['foreground', 'log'])
      const [image, mountpoint] = p.pos
      const opts = parseMountOptions(p.o)
      if (p.flags.has('foreground')) {
        const notify = (m: { ready?: true, error?: string, exitCode?: number }): void => { if (process.send) process.send(m) }
        try {
          return await runWorker(image, mountpoint, opts, notify)
        } catch (err) {
          const code = err instanceof ImageError ? err.exitCode : EXIT.MOUNT_FAILED
          notify({ error: (err as Error).message, exitCode: code })
          throw err
        }
      }
      preflight(image, mountpoint)
      const log = p.flags.get('log')
      const logFile = typeof log === 'string' ? log : path.join(runDir(), path.resolve(mountpoint).replace(/\//g, '_') + '.log')
      const optArgs = p.o.length ? ['-o', p.o.join(',')] : []
      return await startBackground(path.resolve(image), path.resolve(mountpoint), optArgs, logFile)
    }
    case '__supervise':
      runSupervisor(rest)
      return -1 // keeps running
    case 'umount':
    case 'unmount': {
      const p = parseArgs(rest, [])
      need(p, 1, ['lazy'])
      await umount(p.pos[0], { lazy: p.flags.has('lazy') })
      return 0
    }
    case 'fsck': {
      const p = parseArgs(rest, [])
      need(p, 1, [])
      const report = fsck(p.pos[0])
      for (const line of report.errors) console.log(`error: ${line}`)
      console.log(`foliofs fsck ${p.pos[0]}: ${report.inodes} inodes, ${report.dirents} entries, ${report.blocks} data blocks, ${report.errors.length} errors`)
      return report.errors.length ? EXIT.FSCK_ERRORS : 0
    }
    case 'stats': {
      const p = parseArgs(rest, [])
      need(p, 1, ['json'])
      const target = p.pos[0]
      let st: fs.Stats
      try { st = fs.statSync(target) } catch { throw new ImageError(`${target}: no such file or mount point`, EXIT.NOT_FOUND) }
      let stats: Record<string, unknown>
      if (st.isDirectory()) {
        const m = findMount(target)
        if (!m || m.fstype !== 'fuse.foliofs') throw new ImageError(`${target}: not a foliofs mount point`, EXIT.USAGE)
        const out = execFileSync(ioctlTool(), ['stats', target], { encoding: 'utf8' })
        stats = { mounted: true, ...JSON.parse(out) as Record<string, unknown> }
      } else {
        stats = statsOfImage(target)
      }
      console.log(JSON.stringify(stats, null, 2))
      return 0
    }
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      console.log(USAGE)
      return cmd === undefined ? EXIT.USAGE : 0
    default:
      throw new ImageError(`unknown command '${cmd}'\n${USAGE}`, EXIT.USAGE)
  }
}

export function run (): void {
  main(process.argv.slice(2)).then(code => {
    if (code >= 0) process.exit(code)
  }, err => {
    if (err instanceof ImageError) {
      process.stderr.write(`foliofs: ${err.message}\n`)
      process.exit(err.exitCode)
    }
    process.stderr.write(`foliofs: ${(err as Error)?.stack ?? String(err)}\n`)
    process.exit(1)
  })
}

if (require.main === module) run()

export { main }
