/**
 * The demo: boots a real VM from an OCI image, streams the program's output, prints its exit code.
 *
 *   npm run demo                                   # the busybox image made at setup (works offline)
 *   npm run demo -- IMAGE [CMD...]                 # any image reference, e.g. docker.io/library/alpine:latest
 */
import { Hypeman } from '@hypeman-ts/core'

const cache = process.env.HYPEMAN_TS_CACHE ?? '/var/cache/hypeman-ts'
const [imageArg, ...cmd] = process.argv.slice(2)
const image = imageArg ?? `oci:${cache}/fixtures/small:busybox-amd64`
const program = imageArg
  ? cmd.length ? { cmd } : {}
  : { cmd: ['sh', '-c', 'echo "Hello from $(hostname), a VM running kernel $(uname -r)"; echo "memory: $(grep MemTotal /proc/meminfo)"; echo "cpus: $(nproc)"; ls /'] }

// No network by default: the demo must not change the host's networking. HYPEMAN_TS_DEMO_NETWORK=1
// gives the VM the default network (a bridge, NAT and our nftables tables, set up on first use).
const withNetwork = process.env.HYPEMAN_TS_DEMO_NETWORK === '1'
const hm = await Hypeman.open({ dataDir: process.env.HYPEMAN_TS_DATA_DIR ?? '/var/lib/hypeman-ts/demo', ...(withNetwork ? {} : { network: false }) })
const name = `demo-${Date.now().toString(36)}`
let exitCode = 1
try {
  const t0 = performance.now()
  console.error(`[demo] creating ${name} from ${image} ...`)
  const inst = await hm.instances.create({ image, name, vcpus: 1, size: '512MB', overlaySize: '1GB', ...program })
  console.error(`[demo] ${inst.state} after ${((performance.now() - t0) / 1000).toFixed(1)} s (id ${inst.id}); program output:`)

  const stop = new AbortController()
  const printing = (async () => {
    for await (const line of hm.instances.logs(inst.id, { follow: true, tail: 10_000, signal: stop.signal })) console.log(line)
  })()
  const done = await hm.instances.waitForState(inst.id, 'Stopped', { timeout: '5m' })
  await new Promise((r) => setTimeout(r, 300)) // let the last lines land
  stop.abort()
  await printing
  const final = await hm.instances.get(inst.id)
  if (done.timedOut) console.error('[demo] still running after 5 minutes; stopping it')
  console.error(`[demo] exit code ${final.exitCode} (${final.exitMessage})`)
  exitCode = final.exitCode ?? 1
} finally {
  await hm.instances.delete(name).catch(() => {})
  await hm.close()
}
process.exit(exitCode)
