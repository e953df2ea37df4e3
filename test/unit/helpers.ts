import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'

// every directory handed out, removed when the test process exits
const created: string[] = []
process.on('exit', () => {
  for (const dir of created) fs.rmSync(dir, { recursive: true, force: true })
})

export function tmpdir (prefix = 'foliofs-unit-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  created.push(dir)
  return dir
}

export { rng } from '../../src/rng'
