// The reaper (src/reaper.ts) with a stand-in free function: batching,
// what settled() waits for, failures.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Reaper, REAP_DELAY_MS } from '../../src/reaper'

const tick = async (ms = 0): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

test('orphans queued together are freed in one batch, after the delay', async () => {
  const batches: number[][] = []
  const r = new Reaper(async inos => { batches.push(inos); return inos.length }, () => assert.fail('no failure expected'))
  for (let i = 1; i <= 50; i++) r.add(i)
  await tick()
  assert.equal(batches.length, 0, 'nothing freed before the delay')
  assert.equal(r.stats.reapQueued, 50)
  await tick(REAP_DELAY_MS * 3)
  assert.equal(batches.length, 1)
  assert.equal(batches[0].length, 50)
  assert.deepEqual(r.stats, { reaped: 50, reapBatches: 1, maxReapBatch: 50, reapFailures: 0, reapQueued: 0 })
})

test('settled() cuts the delay short and waits only for what was queued before it: a stream of deletes does not hold it', async t => {
  // no wall clock: the reaper's delay timer never fires by itself here, so
  // settled() resolving at all shows it did not wait for the delay (an
  // elapsed-time check failed on a loaded machine, and its failure left
  // the feeding on and the test process running)
  t.mock.timers.enable({ apis: ['setTimeout'] })
  const immediate = async (): Promise<void> => await new Promise(resolve => setImmediate(resolve))
  const stuck = async (turns: number): Promise<'stuck'> => { for (let i = 0; i < turns; i++) await immediate(); return 'stuck' }
  const batches: number[][] = []
  let next = 1000
  let feeding = true
  // while settled() waits, every batch sees another orphan queued (an rm -rf that goes on)
  const r = new Reaper(async inos => {
    batches.push(inos)
    await immediate()
    if (feeding) r.add(next++)
    return inos.length
  }, () => assert.fail('no failure expected'))
  r.add(1)
  r.add(2)
  try {
    assert.equal(await Promise.race([r.settled().then(() => 'settled' as const), stuck(1000)]), 'settled', 'no delay while someone waits')
    assert.deepEqual(batches[0], [1, 2])
    assert.ok(batches.length <= 2, `settled after ${batches.length} batches, not when the stream ended`)
  } finally {
    feeding = false
  }
  await r.settled()
  assert.equal(r.stats.reapQueued, 0)
})

test('a failed batch is reported, counted, and does not stop the reaper or settled()', async () => {
  const failed: number[][] = []
  const freed: number[] = []
  const r = new Reaper(async inos => {
    if (inos.includes(7)) throw new Error('disk gone')
    freed.push(...inos)
    return inos.length
  }, (_err, inos) => failed.push(inos))
  r.add(7)
  await r.settled()
  r.add(8)
  await r.settled()
  assert.deepEqual(failed, [[7]])
  assert.deepEqual(freed, [8])
  assert.equal(r.stats.reapFailures, 1)
  assert.equal(r.stats.reaped, 1)
})

test('orphans the free function leaves alone (a read-only filesystem) are not counted as reaped', async () => {
  const r = new Reaper(async () => 0, () => assert.fail('no failure expected'))
  r.add(1)
  r.add(2)
  await r.settled()
  assert.equal(r.stats.reaped, 0)
  assert.equal(r.stats.reapBatches, 1)
})
