/**
 * For the crash test of test/instances/network.test.ts, inside the lab's host namespace:
 *   create <cfg>: opens a manager with a network and creates an instance, then waits to be killed;
 *   reopen <cfg>: opens the manager again (its reconcile runs) and prints `RESULT <json>` with
 *   the instances and whatever of ours the kernel still holds.
 */
import { HostNetwork } from '@hypeman-ts/netsetup'
import { join } from 'node:path'
import { Hypeman } from '../../src/index.js'

const [mode, raw] = process.argv.slice(2) as ['create' | 'reopen', string]
const cfg = JSON.parse(raw) as { dataDir: string; uplink: string; image: string }
// A network of its own next to the scenario's: another bridge, subnet and nftables tables.
const network = { uplink: cfg.uplink, bridge: 'hmbrcrash', table: 'hmcrash', subnet: '10.124.0.0/24', dns: ['10.124.0.1'] }
const hm = await Hypeman.open({ dataDir: cfg.dataDir, network, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' } })
if (mode === 'create') {
  process.stdout.write('creating\n')
  await hm.instances.create({ image: cfg.image, name: 'crash-net', cmd: ['sleep', '600'], network: { egress: { enabled: true } } })
  process.stdout.write('created\n')
  setInterval(() => {}, 1 << 30)
} else {
  const instances = await hm.instances.list()
  await hm.close()
  const net = await HostNetwork.open({ stateDir: join(cfg.dataDir, 'network'), ...network })
  const inventory = await net.inspect()
  process.stdout.write(`RESULT ${JSON.stringify({ instances, inventory })}\n`)
}
