/**
 * bench:boot — `instances.create` to Running (the guest program started) with a cached image,
 * against a bare `qemu-system-x86_64` started by hand with the same kernel, initrd, disks and
 * devices (no driver, no QMP client, no disk preparation), in the same run, alternating.
 *
 * Two baselines are reported:
 *   - bare → program started: the same guest work as ours, so the ratio is our orchestration cost
 *     (validation, image lookup, overlay and config disks, VMM supervision, readiness);
 *   - bare → init started: the literal baseline (the guest's `boot` status event).
 * Also the host memory per instance: the VMM's RSS beyond the guest RAM it touched (from smaps).
 *
 * Boots from a template, against the cold create, in the same run (alternating, same image and
 * shape; three managers on three data dirs: templates off, templates without warm VMMs, and the
 * default, templates with a warm VMM per shape):
 *   - warm_create_vs_cold: create → Running from the shape's template, adopting the warm VMM the
 *     previous create left (the default) vs a cold create;
 *   - template_create_vs_cold: the same without warm VMMs (QEMU started, template loaded);
 *   - restore_vs_cold: restore from standby through the API vs a cold create;
 *   - fork_vs_cold: fork of a Running instance to Running (fromRunning: standby, copy, restore
 *     the fork and give it its identity, restore the source) vs a cold create;
 *   - template_extra_ms: what the first create of a shape pays to make the template.
 *
 *   npm run bench:boot [-- --runs 5] [-- --json]
 */
import { spawn } from 'node:child_process'
import { copyFile, mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { buildQemuArgv, type VmSpec } from '@hypeman-ts/vmm-drivers'
import { createOverlayDisk } from '../packages/core/src/guest/index.js'
import { withBusyboxManager } from './lib/busybox-manager.js'
import { argValue, finish, median, round, say } from './lib/report.js'

const RUNS = argValue('--runs', 5)
const SIZE = '256MB'
const GUEST_RAM = 256 * 1024 * 1024
const CMD = ['sh', '-c', 'exec sleep 600']

/** RSS of the VMM outside the guest RAM mapping, and the guest RAM actually touched, in bytes. */
async function vmmMemory(pid: number): Promise<{ overhead: number; guest: number; total: number }> {
  const smaps = await readFile(`/proc/${pid}/smaps`, 'utf8')
  let total = 0
  let guest = 0
  let size = 0
  for (const line of smaps.split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      const [range] = line.split(' ')
      const [a, b] = range!.split('-').map((h) => Number.parseInt(h, 16)) as [number, number]
      size = b - a
    } else if (line.startsWith('Rss:')) {
      const kb = Number(line.split(/\s+/)[1]) * 1024
      total += kb
      if (size >= GUEST_RAM) guest += kb // the guest RAM block (one mapping of at least its size)
    }
  }
  return { overhead: total - guest, guest, total }
}

/** RSS of each warm VMM whose files are under `dir` (the manager's warm/), in bytes. */
async function warmVmmRss(dir: string): Promise<number[]> {
  const sizes: number[] = []
  for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
    if (!cmdline.includes(`${dir}/`)) continue
    const rss = /VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8').catch(() => ''))
    if (rss) sizes.push(Number(rss[1]) * 1024)
  }
  return sizes
}

async function waitForStatus(file: string, type: string, since: number, timeoutMs = 120_000): Promise<number> {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    const text = await readFile(file, 'utf8').catch(() => '')
    if (text.slice(since).includes(`"type":"${type}"`)) return performance.now()
    if (performance.now() > deadline) throw new Error(`no ${type} event in ${file}`)
    await new Promise((r) => setTimeout(r, 2))
  }
}

async function bare(spec: VmSpec, dir: string): Promise<{ toInit: number; toProgram: number }> {
  const status = join(dir, 'status.jsonl')
  // A fresh overlay, as each of our creates gets (made before the clock starts).
  const overlay = join(dir, 'overlay.ext4')
  await createOverlayDisk(overlay, 1024 ** 3)
  const s: VmSpec = {
    ...spec,
    disks: (spec.disks ?? []).map((d) => (d.serial === 'hm-overlay' ? { ...d, path: overlay } : d)),
    consoleLog: join(dir, 'console.log'),
    runtimeDir: dir,
    // RAM in a tmpfs file, as our instances have it, of this run's own.
    ...(spec.memoryFile ? { memoryFile: { ...spec.memoryFile, path: join(dirname(spec.memoryFile.path), `bare-${basename(dir)}`) } } : {}),
    channels: (spec.channels ?? []).map((c) => ({ ...c, backend: { ...c.backend, path: c.name === 'hypeman.status' ? status : join(dir, `${c.name}.${c.backend.kind}`) } })),
  }
  const argv = buildQemuArgv(s, { accel: 'tcg', qmpSocket: join(dir, 'qmp.sock'), pidFile: join(dir, 'qemu.pid') })
  const t0 = performance.now()
  const qemu = spawn('qemu-system-x86_64', argv, { stdio: ['ignore', 'ignore', 'inherit'] })
  try {
    const init = await waitForStatus(status, 'boot', 0)
    const program = await waitForStatus(status, 'started', 0)
    return { toInit: init - t0, toProgram: program - t0 }
  } finally {
    qemu.kill('SIGKILL')
    await new Promise((r) => qemu.once('exit', r))
    if (s.memoryFile) await rm(s.memoryFile.path, { force: true })
  }
}

await withBusyboxManager('boot', async (hm, image, work, open) => {
  const warm = await open('warm', { templates: {} })
  const noWarm = await open('tpl', { templates: { warm: 0 } })
  const shape = { image, vcpus: 1, size: SIZE, overlaySize: '1GB', cmd: CMD }

  // The bare boots use the exact machine our instance gets, read from a created instance.
  const probe = await hm.instances.create({ image, name: 'bench-probe', vcpus: 1, size: SIZE, overlaySize: '1GB', cmd: CMD })
  const record = JSON.parse(await readFile(join(work, 'data', 'instances', probe.id, 'instance.json'), 'utf8'))
  const spec: VmSpec = record.vmm.spec
  await hm.instances.stop(probe.id, { timeoutMs: 1000 })
  const bareDir = join(work, 'bare')
  await rm(bareDir, { recursive: true, force: true })
  const disks = await Promise.all(
    (spec.disks ?? []).map(async (d) => {
      // Read-only and shared: the image's disk stays in the image cache, the kernel headers disk in the kernel's.
      if (d.serial === 'hm-rootfs' || d.serial === 'hm-headers') return d
      const copy = join(work, `bare-${d.serial}`)
      await copyFile(d.path, copy)
      return { ...d, path: copy }
    }),
  )
  const bareSpec = { ...spec, disks }
  await hm.instances.delete(probe.id)

  say(`boot: create → Running vs bare qemu (same kernel, initrd, disks), ${RUNS} runs each (plus one warm-up), TCG, 1 vCPU, ${SIZE}`)
  const oursMs: number[] = []
  const bareProgramMs: number[] = []
  const bareInitMs: number[] = []
  const overhead: number[] = []
  const rss: number[] = []
  const warmMs: number[] = []
  const noWarmMs: number[] = []
  let adopted = 0
  const standbyMs: number[] = []
  const restoreMs: number[] = []
  const forkMs: number[] = []
  let templateMakeMs = 0
  for (let i = 0; i <= RUNS; i++) {
    // From a template (the warm-up run makes it).
    let t0 = performance.now()
    const w = await warm.instances.create({ ...shape, name: `warm-${i}` })
    const warmCreate = performance.now() - t0
    if (i === 0) templateMakeMs = warmCreate
    const wasWarm = (await readFile(join(work, 'warm', 'instances', w.id, 'hypeman.log'), 'utf8')).includes('a warm VMM')
    t0 = performance.now()
    await warm.instances.standby(w.id)
    const standby = performance.now() - t0
    t0 = performance.now()
    await warm.instances.restore(w.id)
    const restore = performance.now() - t0
    t0 = performance.now()
    const f = await warm.instances.fork(w.id, { name: `fork-${i}`, fromRunning: true })
    const forkTime = performance.now() - t0
    await warm.instances.delete(f.id)
    await warm.instances.delete(w.id)

    t0 = performance.now()
    const nw = await noWarm.instances.create({ ...shape, name: `tpl-${i}` })
    const noWarmCreate = performance.now() - t0
    await noWarm.instances.delete(nw.id)

    t0 = performance.now()
    const inst = await hm.instances.create({ ...shape, name: `bench-${i}` })
    const ours = performance.now() - t0
    const rec = JSON.parse(await readFile(join(work, 'data', 'instances', inst.id, 'instance.json'), 'utf8'))
    const mem = await vmmMemory(rec.vmm.pid)
    await hm.instances.delete(inst.id)

    const dir = await mkdtemp(join(work, 'bare-run-'))
    const b = await bare(bareSpec, dir)
    await rm(dir, { recursive: true, force: true })
    if (i === 0) continue // warm-up: page cache, accel probe, assets, the template
    oursMs.push(ours)
    warmMs.push(warmCreate)
    noWarmMs.push(noWarmCreate)
    if (wasWarm) adopted++
    standbyMs.push(standby)
    restoreMs.push(restore)
    forkMs.push(forkTime)
    bareProgramMs.push(b.toProgram)
    bareInitMs.push(b.toInit)
    overhead.push(mem.overhead)
    rss.push(mem.total)
    say(`  run ${i}: from a template ${warmCreate.toFixed(0)} ms (${wasWarm ? 'a warm VMM' : 'QEMU started'}), without warm VMMs ${noWarmCreate.toFixed(0)} ms, standby ${standby.toFixed(0)} ms, restore ${restore.toFixed(0)} ms, fork of a running one ${forkTime.toFixed(0)} ms`)
    say(`  run ${i}: ours cold ${ours.toFixed(0)} ms, bare to program ${b.toProgram.toFixed(0)} ms, bare to init ${b.toInit.toFixed(0)} ms, VMM RSS ${(mem.total / 2 ** 20).toFixed(0)} MiB (${(mem.overhead / 2 ** 20).toFixed(0)} MiB beyond guest RAM)`)
  }
  const result = {
    benchmark: 'boot',
    runs: RUNS,
    accel: 'tcg',
    ours_create_to_running_ms: round(median(oursMs), 1),
    bare_to_program_ms: round(median(bareProgramMs), 1),
    bare_to_init_ms: round(median(bareInitMs), 1),
    ratio_vs_bare_to_program: round(median(oursMs) / median(bareProgramMs)),
    ratio_vs_bare_to_init: round(median(oursMs) / median(bareInitMs)),
    vmm_rss_mib: round(median(rss) / 2 ** 20, 1),
    vmm_rss_beyond_guest_ram_mib: round(median(overhead) / 2 ** 20, 1),
    warm_create_to_running_ms: round(median(warmMs), 1),
    warm_create_vs_cold: round(median(warmMs) / median(oursMs)),
    warm_vmm_adopted_runs: adopted,
    template_create_to_running_ms: round(median(noWarmMs), 1),
    template_create_vs_cold: round(median(noWarmMs) / median(oursMs)),
    warm_vmm_rss_mib: round(median(await warmVmmRss(join(work, 'warm', 'warm'))) / 2 ** 20, 1),
    standby_ms: round(median(standbyMs), 1),
    restore_ms: round(median(restoreMs), 1),
    restore_vs_cold: round(median(restoreMs) / median(oursMs)),
    fork_ms: round(median(forkMs), 1),
    fork_vs_cold: round(median(forkMs) / median(oursMs)),
    template_make_create_ms: round(templateMakeMs, 1),
    template_extra_ms: round(templateMakeMs - median(oursMs), 1),
    template_bytes: (await warm.templates!.list())[0]?.bytes ?? null,
  }
  say(`median: ours ${result.ours_create_to_running_ms} ms; bare qemu to program ${result.bare_to_program_ms} ms, to init ${result.bare_to_init_ms} ms`)
  say(`ratio vs bare to program ${result.ratio_vs_bare_to_program} (goal ≤ 1.10); vs bare to init ${result.ratio_vs_bare_to_init}`)
  say(`from a template: ${result.warm_create_to_running_ms} ms, ratio vs cold ${result.warm_create_vs_cold} (goal ≤ 0.2); a warm VMM adopted in ${adopted} of ${RUNS} runs`)
  say(`from a template without warm VMMs: ${result.template_create_to_running_ms} ms, ratio vs cold ${result.template_create_vs_cold}; a warm VMM's RSS ${result.warm_vmm_rss_mib} MiB`)
  say(`restore from standby: ${result.restore_ms} ms (standby ${result.standby_ms} ms), ratio vs cold ${result.restore_vs_cold} (goal ≤ 0.1)`)
  say(`fork of a running instance to Running: ${result.fork_ms} ms, ratio vs cold ${result.fork_vs_cold} (goal ≤ 0.25)`)
  say(`the first create of the shape made the template: ${result.template_make_create_ms} ms (${result.template_extra_ms} ms over a cold create), ${result.template_bytes} bytes`)
  say(`host memory per instance: VMM RSS ${result.vmm_rss_mib} MiB, of which ${result.vmm_rss_beyond_guest_ram_mib} MiB beyond guest RAM`)
  finish(result)
})
