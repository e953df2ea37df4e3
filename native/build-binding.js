#!/usr/bin/env node
// Patch fuse-native (ported to the system's libfuse 3: 1 MiB requests, lseek,
// fallocate, copy_file_range, readdirplus; plus ioctl, destroy, caller
// credentials, ns timestamps, NULL paths) and rebuild it from source with
// node-gyp against libfuse3 (pkg-config fuse3: Debian's libfuse3-dev). The
// libfuse 2 that fuse-native bundles is not used.
// Runs as npm's postinstall; safe to run again (idempotent).
'use strict'
const fs = require('fs')
const path = require('path')
const crypto = require('crypto')
const { execFileSync } = require('child_process')

const root = path.resolve(__dirname, '..')
const patchFile = path.join(__dirname, 'fuse-native.patch')
const pkgDir = path.dirname(require.resolve('fuse-native/package.json', { paths: [root] }))
const marker = path.join(pkgDir, '.foliofs-patch')
const release = path.join(pkgDir, 'build', 'Release')

function log (msg) { process.stderr.write(`foliofs native: ${msg}\n`) }

function nodeGyp () {
  const candidates = [
    process.env.npm_config_node_gyp,
    path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    '/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js',
    '/usr/share/nodejs/node-gyp/bin/node-gyp.js'
  ]
  for (const c of candidates) if (c && fs.existsSync(c)) return c
  throw new Error('node-gyp not found (it ships with npm); install npm >= 9')
}

function applyPatch () {
  const digest = crypto.createHash('sha256').update(fs.readFileSync(patchFile)).digest('hex')
  if (fs.existsSync(marker)) {
    if (fs.readFileSync(marker, 'utf8').trim() === digest) return false
    throw new Error(`${pkgDir} carries an older foliofs patch: run 'rm -rf node_modules && npm ci'`)
  }
  execFileSync('patch', ['-p1', '--forward', '--batch', '-i', patchFile], { cwd: pkgDir, stdio: 'inherit' })
  fs.writeFileSync(marker, digest + '\n')
  return true
}

/** the crc32 header the binding's read plans include, beside its source; whether it changed */
function copyHeader () {
  const from = path.join(__dirname, 'foliofs_crc32.h')
  const to = path.join(pkgDir, 'foliofs_crc32.h')
  const text = fs.readFileSync(from)
  if (fs.existsSync(to) && fs.readFileSync(to).equals(text)) return false
  fs.writeFileSync(to, text)
  return true
}

function built () {
  return fs.existsSync(path.join(release, 'fuse.node'))
}

function build () {
  const args = [nodeGyp(), 'rebuild', '--release']
  // build against the running node's own headers (no header download): /usr on Debian, /usr/local in node images
  const prefix = path.resolve(path.dirname(process.execPath), '..')
  for (const dir of [process.env.npm_config_nodedir, prefix, '/usr']) {
    if (dir && fs.existsSync(path.join(dir, 'include', 'node', 'node_api.h'))) { args.push(`--nodedir=${dir}`); break }
  }
  log(`building fuse-native: node ${args.slice(1).join(' ')}`)
  try {
    execFileSync('pkg-config', ['--exists', 'fuse3'])
  } catch {
    throw new Error('libfuse 3 development files not found (pkg-config fuse3): apt-get install libfuse3-dev pkg-config')
  }
  execFileSync(process.execPath, args, { cwd: pkgDir, stdio: ['ignore', 'inherit', 'inherit'] })
}

function verify () {
  const out = execFileSync(process.execPath, ['-e',
    "const b=require('node-gyp-build')(process.argv[1]);if(typeof b.fuse_native_signal_ioctl!=='function'||typeof b.fuse_native_signal_lseek!=='function')throw new Error('libfuse 3 port missing');console.log('ok')",
    pkgDir], { cwd: pkgDir, encoding: 'utf8' })
  if (out.trim() !== 'ok') throw new Error('fuse-native binding did not load')
}

function buildTools () {
  // the punch and crc addons need node_api.h: the running node's own headers
  const prefix = path.resolve(path.dirname(process.execPath), '..')
  const inc = [process.env.npm_config_nodedir, prefix, '/usr'].filter(Boolean).map(d => path.join(d, 'include', 'node'))
    .find(d => fs.existsSync(path.join(d, 'node_api.h')))
  const args = ['-s', '-C', __dirname]
  if (inc) args.push(`NODE_INCLUDE=${inc}`)
  const sqlite = path.join(path.dirname(require.resolve('better-sqlite3/package.json', { paths: [root] })), 'deps', 'sqlite3')
  args.push(`SQLITE_INCLUDE=${sqlite}`)
  execFileSync('make', args, { stdio: ['ignore', 'inherit', 'inherit'] })
}

try {
  const patched = applyPatch()
  const header = copyHeader()
  if (patched || header || !built()) build()
  verify()
  buildTools()
  log('fuse-native patched, built and loadable; native tools built')
} catch (err) {
  log(`FAILED: ${err.message}`)
  process.exit(1)
}
