// src/flocks.ts: flock(2) semantics kept per inode by the daemon. The
// binding retries blocking requests; these are the tries themselves and
// the wake-ups they owe the binding.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { constants } from 'os'
import { Flocks } from '../../src/flocks'

const SH = 1
const EX = 2
const UN = 8
const NB = 4
const BUSY = -constants.errno.EWOULDBLOCK

function locks (): { f: Flocks, wakes: () => number } {
  let n = 0
  const f = new Flocks(() => { n++ })
  return { f, wakes: () => n }
}

test('shared locks share, an exclusive one excludes every other owner of the inode', () => {
  const { f } = locks()
  assert.equal(f.apply(7, 1, SH | NB), 0)
  assert.equal(f.apply(7, 2, SH | NB), 0, 'SH with SH')
  assert.equal(f.apply(7, 3, EX | NB), BUSY, 'EX while others hold SH')
  assert.equal(f.apply(8, 3, EX | NB), 0, 'another inode is free')
  assert.equal(f.apply(7, 1, UN), 0)
  assert.equal(f.apply(7, 2, UN), 0)
  assert.equal(f.apply(7, 3, EX | NB), 0, 'free once both let go')
  assert.equal(f.apply(7, 1, SH | NB), BUSY, 'SH while another holds EX')
  assert.equal(f.stats.held, 2)
})

test('a conversion drops the old lock first: a failed upgrade leaves none, as on Linux', () => {
  const { f, wakes } = locks()
  f.apply(1, 10, SH | NB)
  f.apply(1, 11, SH | NB)
  assert.equal(f.apply(1, 10, EX | NB), BUSY)
  assert.equal(wakes(), 1, 'dropping the SH let go of a lock: waiters are woken')
  assert.equal(f.apply(1, 11, EX | NB), 0, '11 is alone now')
  assert.equal(f.apply(1, 11, EX | NB), 0, 'the same lock again is a no-op')
  assert.equal(f.apply(1, 11, SH | NB), 0, 'a downgrade always succeeds')
  assert.equal(f.apply(1, 10, SH | NB), 0)
})

test('a released handle lets go of its lock and wakes waiters; unlocking nothing is fine', () => {
  const { f, wakes } = locks()
  assert.equal(f.apply(3, 5, UN), 0)
  assert.equal(wakes(), 0)
  f.apply(3, 5, EX | NB)
  f.released(5)
  assert.equal(wakes(), 1)
  assert.equal(f.stats.held, 0)
  assert.equal(f.apply(3, 6, EX | NB), 0)
  f.released(99) // held nothing
  assert.equal(wakes(), 1)
  assert.equal(f.apply(3, 6, 0), -constants.errno.EINVAL, 'no operation')
})
