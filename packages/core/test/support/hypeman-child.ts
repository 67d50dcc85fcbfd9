/**
 * Run as a separate process by the crash tests: opens a manager on a data dir and creates an
 * instance (with the volumes of an optional JSON argument), so the test can kill -9 this process
 * at any moment.
 */
import { Hypeman } from '../../src/index.js'

const [dataDir, image, name, volumes] = process.argv.slice(2) as [string, string, string, string | undefined]
const hm = await Hypeman.open({ dataDir, network: false, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' } })
const inst = await hm.instances.create({ image, name, cmd: ['sh', '-c', 'echo up; sleep 600'], ...(volumes ? { volumes: JSON.parse(volumes) } : {}) })
process.stdout.write(`created ${inst.id} ${inst.state}\n`)
// The template boot's warm VMM for the shape, which a crash leaves behind too.
for (let i = 0; i < 600 && !Object.values(hm.warm?.ready ?? {}).some((n) => n > 0); i++) await new Promise((r) => setTimeout(r, 100))
process.stdout.write(`warm ${JSON.stringify(hm.warm?.ready ?? {})}\n`)
// Stay alive until killed, holding the data dir like a real service would.
setInterval(() => {}, 1 << 30)
