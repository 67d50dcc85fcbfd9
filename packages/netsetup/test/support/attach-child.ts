/**
 * Run as its own Node process by the lifecycle tests: opens the network and attaches instances,
 * printing each attachment as a JSON line. With a kill step, it SIGKILLs itself right after the
 * first instance's attach finished that step (a crash of the host process mid-create).
 *   attach-child.ts <stateDir> <netns> <uplink> <killAt|-> <id> [<id> ...]
 */
import { HostNetwork, type AttachStep } from '../../src/index.js'

const [stateDir, netns, uplink, killAt, ...ids] = process.argv.slice(2) as [string, string, string, string, ...string[]]
const net = await HostNetwork.open({ stateDir, netns, uplink, dns: ['10.100.0.1'] })
for (const [i, id] of ids.entries()) {
  const att = await net.attach(id, {
    vcpus: 1,
    egress: { enabled: true, mode: 'all', proxy: { httpPort: 3128, httpsPort: 3128 } },
    onStep: (step: AttachStep) => {
      if (i === 0 && step === killAt) process.kill(process.pid, 'SIGKILL')
    },
  })
  process.stdout.write(`${JSON.stringify(att)}\n`)
}
