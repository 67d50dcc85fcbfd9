/**
 * bench:api — what the HTTP server costs on top of the library, in the same run, alternating:
 *
 *   - create → Running through the official SDK and `hypeman-ts serve`'s server, against
 *     `hm.instances.create` called directly, same image (cached), same manager;
 *   - `GET /instances` through the SDK with N instances running (default 10; `--instances 10,50`),
 *     against `hm.instances.list()` directly: the ratio says what HTTP, auth, validation and JSON
 *     add; the absolute numbers say whether a list reads the VMs' states one after another;
 *   - with `--recorded 200`, the same list once that many instances are recorded (the running ones
 *     plus stopped ones that booted, ran `true` and ended: 200 running guests do not fit a 2-core
 *     machine under TCG), and its ratio to the first list.
 *
 *   npm run bench:api [-- --runs 5] [-- --instances 10] [-- --recorded 200] [-- --json]
 */
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import HypemanClient from '@onkernel/hypeman'
import { Hypeman } from '@hypeman-ts/core'
import { createServer, mintToken } from '@hypeman-ts/server'
import { FIXTURES } from '../packages/core/test/support/registry.js'
import { argValue, finish, median, percentile, round, say } from './lib/report.js'

const RUNS = argValue('--runs', 5)
const LIST_CALLS = argValue('--list-calls', 30)
const SIZES = (process.argv[process.argv.indexOf('--instances') + 1] ?? '').match(/^\d+(,\d+)*$/)
  ? process.argv[process.argv.indexOf('--instances') + 1]!.split(',').map(Number)
  : [10]
const RECORDED = argValue('--recorded', 0)
const IMAGE = `oci:${FIXTURES}/small:busybox-amd64`
const CMD = ['sleep', '3600']

async function timed<T>(f: () => Promise<T>): Promise<[number, T]> {
  const t0 = performance.now()
  const v = await f()
  return [performance.now() - t0, v]
}

const dataDir = await mkdtemp(join(tmpdir(), 'hm-bench-api-'))
const hm = await Hypeman.open({ dataDir, network: false, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' } })
const secret = randomBytes(32)
const server = await createServer(hm, { jwtSecret: secret, allowLocalLayouts: true })
try {
  const { port } = await server.listen({ port: 0 })
  const client = new HypemanClient({ baseURL: `http://127.0.0.1:${port}`, apiKey: mintToken(secret), maxRetries: 0, timeout: 300_000 })
  await hm.images.pull(IMAGE)

  say(`api: create → Running through the SDK + server vs the library, ${RUNS} runs each (plus one warm-up each), alternating, TCG, 1 vCPU, 256 MiB`)
  const viaApi: number[] = []
  const direct: number[] = []
  for (let i = 0; i <= RUNS; i++) {
    const [a, made] = await timed(() => client.instances.create({ name: `api-${i}`, image: IMAGE, cmd: CMD, network: { enabled: false } }))
    if (made.state !== 'Running') throw new Error(`api-${i} is ${made.state}`)
    await hm.instances.delete(made.id)
    const [d, inst] = await timed(() => hm.instances.create({ name: `lib-${i}`, image: IMAGE, cmd: CMD, network: { enabled: false } }))
    await hm.instances.delete(inst.id)
    if (i === 0) continue // warm-up: first boots fill caches
    viaApi.push(a)
    direct.push(d)
    say(`  run ${i}: via API ${a.toFixed(0)} ms, library ${d.toFixed(0)} ms`)
  }

  const lists: Record<string, unknown>[] = []
  const measureList = async (n: number, label: string) => {
    const api: number[] = []
    const lib: number[] = []
    for (let i = 0; i < LIST_CALLS; i++) {
      const [a, got] = await timed(() => client.instances.list())
      if (got.length !== n) throw new Error(`listed ${got.length} of ${n}`)
      api.push(a)
      lib.push((await timed(() => hm.instances.list()))[0])
    }
    lists.push({ instances: n, running, api_median_ms: round(median(api), 2), api_p95_ms: round(percentile(api, 95), 2), library_median_ms: round(median(lib), 2), ratio: round(median(api) / median(lib)) })
    say(`  GET /instances with ${label}: median ${median(api).toFixed(1)} ms (p95 ${percentile(api, 95).toFixed(1)}), library list ${median(lib).toFixed(1)} ms`)
  }
  let running = 0
  for (const n of SIZES) {
    for (; running < n; running++) await hm.instances.create({ name: `fill-${running}`, image: IMAGE, cmd: CMD, network: { enabled: false } })
    await measureList(n, `${n} running`)
  }
  if (RECORDED > running) {
    // Two boots at a time (two cores); each guest runs `true` and ends, leaving a Stopped instance.
    let next = running
    const fill = async () => {
      while (next < RECORDED) {
        const i = next++
        const inst = await hm.instances.create({ name: `rec-${i}`, image: IMAGE, cmd: ['true'], network: { enabled: false } })
        await hm.instances.waitForState(inst.id, 'Stopped', { timeout: '120s' })
      }
    }
    await Promise.all([fill(), fill()])
    await measureList(RECORDED, `${RECORDED} recorded (${running} running)`)
  }
  const first = lists[0] as { api_median_ms: number }
  const last = lists[lists.length - 1] as { api_median_ms: number }

  const result = {
    runs: RUNS,
    api_create_to_running_ms: round(median(viaApi), 1),
    library_create_to_running_ms: round(median(direct), 1),
    ratio_api_vs_library: round(median(viaApi) / median(direct)),
    list: lists,
    list_ratio_last_vs_first: round(last.api_median_ms / first.api_median_ms),
  }
  say(`median: via API ${result.api_create_to_running_ms} ms, library ${result.library_create_to_running_ms} ms, ratio ${result.ratio_api_vs_library} (goal ≤ 1.05)`)
  finish(result)
} finally {
  await server.close()
  for (const i of await hm.instances.list()) await hm.instances.delete(i.id)
  await hm.close()
  await rm(dataDir, { recursive: true, force: true })
}
