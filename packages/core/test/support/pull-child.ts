/**
 * Run as a separate process by the crash test: pulls an image and prints each phase, so the test
 * can kill -9 it in the middle.
 */
import { ImageManager } from '../../src/index.js'

const [dir, name] = process.argv.slice(2) as [string, string]
const m = new ImageManager({ dir })
await m.init()
let last = ''
await m.pull(name, {
  onProgress: (p) => {
    if (p.phase !== last) {
      last = p.phase
      process.stdout.write(`${p.phase}\n`)
    }
  },
})
process.stdout.write('done\n')
