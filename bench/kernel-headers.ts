/**
 * bench:kernel-headers — what the kernel headers disk costs a boot: `instances.create` to Running
 * with `skipKernelHeaders: false` (the headers disk attached, mounted and linked by init) and
 * `true`, alternating, same image, the headers disk already in the cache (scripts/setup). Also
 * the guest's own view from its status events: kernel start → program started (`uptimeMs` of
 * `started`) and init start → program started (that minus `initMs` of `boot`), where the
 * headers work happens, and the part of it the init spends on the headers (`headersMs`: finding,
 * mounting and linking the disk).
 *
 *   npm run bench:kernel-headers [-- --runs 7] [-- --json]
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { withBusyboxManager } from './lib/busybox-manager.js'
import { argValue, finish, median, round, say } from './lib/report.js'

const RUNS = argValue('--runs', 7)
const CMD = ['sh', '-c', 'exec sleep 600']

/** From the instance's status events: kernel → started, and init → started, in ms. */
async function guestTimes(statusLog: string): Promise<{ kernelToStarted: number; initToStarted: number; headers: number }> {
  const events = (await readFile(statusLog, 'utf8'))
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { type: string; uptimeMs: number; initMs?: number; headersMs?: number })
  const boot = events.find((e) => e.type === 'boot')!
  const started = events.find((e) => e.type === 'started')!
  return { kernelToStarted: started.uptimeMs, initToStarted: started.uptimeMs - boot.initMs!, headers: started.headersMs ?? 0 }
}

await withBusyboxManager('headers', async (hm, image, work) => {
  say(`kernel headers: create → Running with and without the headers disk, ${RUNS} runs each alternating (plus one warm-up each), TCG, 1 vCPU, 256MB`)
  const sample = () => ({ create: [] as number[], kernel: [] as number[], init: [] as number[], headers: [] as number[] })
  const samples = { on: sample(), off: sample() }
  for (let i = 0; i <= RUNS; i++) {
    // Alternate which goes first, so a drift in the host's load does not favour one side.
    const order: ('on' | 'off')[] = i % 2 ? ['on', 'off'] : ['off', 'on']
    for (const side of order) {
      const t0 = performance.now()
      const inst = await hm.instances.create({ image, name: `bench-${side}-${i}`, vcpus: 1, size: '256MB', overlaySize: '256MB', cmd: CMD, skipKernelHeaders: side === 'off' })
      const create = performance.now() - t0
      const g = await guestTimes(join(work, 'data', 'instances', inst.id, 'status.jsonl'))
      await hm.instances.delete(inst.id)
      if (i === 0) continue // warm-up: page cache, accel probe, assets
      samples[side].create.push(create)
      samples[side].kernel.push(g.kernelToStarted)
      samples[side].init.push(g.initToStarted)
      samples[side].headers.push(g.headers)
      say(`  run ${i} headers ${side}: create → Running ${create.toFixed(0)} ms; guest kernel → started ${g.kernelToStarted} ms, init → started ${g.initToStarted} ms, headersMs ${g.headers}`)
    }
  }
  const m = (side: 'on' | 'off', k: 'create' | 'kernel' | 'init' | 'headers') => round(median(samples[side][k]), 1)
  const result = {
    benchmark: 'kernel-headers',
    runs: RUNS,
    accel: 'tcg',
    with_headers_create_to_running_ms: m('on', 'create'),
    without_headers_create_to_running_ms: m('off', 'create'),
    with_headers_init_to_started_ms: m('on', 'init'),
    without_headers_init_to_started_ms: m('off', 'init'),
    with_headers_kernel_to_started_ms: m('on', 'kernel'),
    without_headers_kernel_to_started_ms: m('off', 'kernel'),
    headers_ms: m('on', 'headers'),
    ratio_create: round(m('on', 'create') / m('off', 'create')),
  }
  say(`median create → Running: with headers ${result.with_headers_create_to_running_ms} ms, without ${result.without_headers_create_to_running_ms} ms (ratio ${result.ratio_create})`)
  say(`median init → started: with ${result.with_headers_init_to_started_ms} ms, without ${result.without_headers_init_to_started_ms} ms; kernel → started: with ${result.with_headers_kernel_to_started_ms} ms, without ${result.without_headers_kernel_to_started_ms} ms; headersMs ${result.headers_ms} ms`)
  finish(result)
})
