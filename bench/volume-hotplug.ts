/**
 * bench:volume-hotplug — what the SCSI controller for volumes attached while running costs a
 * boot, and how long a hot attach and detach take.
 *
 * Two managers, one with `volumeHotplug: true` (the default: every cold boot gets a virtio-scsi
 * controller, whose driver the guest loads after the program started) and one with `false`,
 * create → Running alternating, plus the time to a first exec (which the driver's load after the
 * start could delay). Wall times swing by 2x when other VMs share the cores, so the VMM's own CPU
 * time (utime + stime from /proc) up to Running and up to the first exec is reported too: under
 * TCG the guest's work is the VMM's CPU time, which other load barely changes. Then hot attach
 * (plug + guest mount) and detach (guest unmount + unplug) of a read-write volume.
 *
 *   npm run bench:volume-hotplug [-- --runs 7] [-- --json]
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Hypeman } from '@hypeman-ts/core'
import { pushFixtures, startRegistries } from '../packages/core/test/support/registry.js'
import { argValue, finish, median, round, say } from './lib/report.js'

const RUNS = argValue('--runs', 7)
const CMD = ['sh', '-c', 'exec sleep 600']
const params = { vcpus: 1, size: '256MB', overlaySize: '1GB', cmd: CMD }

/** CPU time (user + system) of a process so far, in ms. */
async function cpuMs(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // utime and stime are fields 14 and 15 of stat, in clock ticks (100 per second on Linux).
  return (Number(fields[11]) + Number(fields[12])) * 10
}

const work = await mkdtemp(join(tmpdir(), 'bench-hotplug-'))
const registries = await startRegistries(join(work, 'registry'))
const cacheOpts = { accel: 'tcg' as const, network: false as const }
const on = await Hypeman.open({ dataDir: join(work, 'on'), ...cacheOpts, volumeHotplug: true })
const off = await Hypeman.open({ dataDir: join(work, 'off'), ...cacheOpts, volumeHotplug: false })
try {
  await pushFixtures(registries.open.host, ['busybox:latest'])
  const image = `${registries.open.host}/busybox:latest`
  await on.images.pull(image)
  await off.images.pull(image)

  say(`volume-hotplug: create → Running with and without the SCSI controller, alternating, ${RUNS} runs each (plus one warm-up), TCG, 1 vCPU`)
  const series = () => ({ running: [] as number[], exec: [] as number[], cpuRunning: [] as number[], cpuExec: [] as number[] })
  const times = { on: series(), off: series() }
  for (let i = 0; i <= RUNS; i++) {
    // Which goes first alternates too, so neither always runs on the other's leftovers.
    const order: ['on' | 'off', Hypeman][] = i % 2 ? [['off', off], ['on', on]] : [['on', on], ['off', off]]
    const line: string[] = []
    for (const [label, hm] of order) {
      const t0 = performance.now()
      const inst = await hm.instances.create({ image, name: `bench-${label}-${i}`, ...params })
      const running = performance.now() - t0
      const pid = JSON.parse(await readFile(join(work, label, 'instances', inst.id, 'instance.json'), 'utf8')).vmm.pid as number
      const cpuRunning = await cpuMs(pid)
      await hm.instances.exec(inst.id, { argv: ['true'] })
      const exec = performance.now() - t0
      const cpuExec = await cpuMs(pid)
      await hm.instances.delete(inst.id)
      if (i === 0) continue // warm-up: page cache, assets
      times[label].running.push(running)
      times[label].exec.push(exec)
      times[label].cpuRunning.push(cpuRunning)
      times[label].cpuExec.push(cpuExec)
      line.push(`${label} ${running.toFixed(0)} ms, CPU ${cpuRunning} ms (first exec done ${exec.toFixed(0)} ms, CPU ${cpuExec} ms)`)
    }
    if (i > 0) say(`  run ${i}: ${line.join(', ')}`)
  }

  const vol = await on.volumes.create({ name: 'bench-vol', size: '64MB' })
  const inst = await on.instances.create({ image, name: 'bench-hot', ...params })
  const attachMs: number[] = []
  const detachMs: number[] = []
  for (let i = 0; i < RUNS; i++) {
    let t0 = performance.now()
    await on.instances.attachVolume(inst.id, vol.id, { mountPath: '/data' })
    attachMs.push(performance.now() - t0)
    t0 = performance.now()
    await on.instances.detachVolume(inst.id, vol.id)
    detachMs.push(performance.now() - t0)
  }
  await on.instances.delete(inst.id)

  const m = (xs: number[]) => round(median(xs), 1)
  /** `<name>_with_controller_ms`, `<name>_without_ms` and `<name>_ratio` of one series. */
  const compare = (name: string, key: keyof ReturnType<typeof series>) => ({
    [`${name}_with_controller_ms`]: m(times.on[key]),
    [`${name}_without_ms`]: m(times.off[key]),
    [`${name}_ratio`]: round(median(times.on[key]) / median(times.off[key])),
  })
  const result: Record<string, number | string> = {
    benchmark: 'volume-hotplug',
    runs: RUNS,
    accel: 'tcg',
    ...compare('create_to_running', 'running'),
    ...compare('create_to_first_exec', 'exec'),
    ...compare('vmm_cpu_to_running', 'cpuRunning'),
    ...compare('vmm_cpu_to_first_exec', 'cpuExec'),
    hot_attach_ms: m(attachMs),
    hot_detach_ms: m(detachMs),
  }
  const line = (what: string, name: string) =>
    say(`median ${what}: with the controller ${result[`${name}_with_controller_ms`]} ms, without ${result[`${name}_without_ms`]} ms (ratio ${result[`${name}_ratio`]})`)
  line('create → Running', 'create_to_running')
  line('create → first exec done', 'create_to_first_exec')
  line('VMM CPU time to Running', 'vmm_cpu_to_running')
  line('VMM CPU time to the first exec', 'vmm_cpu_to_first_exec')
  say(`median hot attach (plug + mount) ${result.hot_attach_ms} ms, detach (unmount + unplug) ${result.hot_detach_ms} ms`)
  finish(result)
} finally {
  for (const hm of [on, off]) {
    for (const i of await hm.instances.list()) await hm.instances.delete(i.id).catch(() => {})
    await hm.close()
  }
  await registries.stop()
  await rm(work, { recursive: true, force: true })
}
