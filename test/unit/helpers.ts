import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'

export function tmpdir (prefix = 'foliofs-unit-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix))
}

export { rng } from '../../src/rng'
