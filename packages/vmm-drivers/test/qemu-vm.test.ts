/**
 * Real VMs under TCG: the cached guest kernel with a tiny busybox initrd this test builds. One VM
 * runs at a time in this file.
 */
import { existsSync } from 'node:fs'
import { mkdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { randomBytes } from 'node:crypto'
import { run, type Logger } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { QemuDriver, type QemuRunningVm, type VmEvent, type VmSpec } from '../src/index.js'
import { guestSpec, prepareGuest, qemuProcessesMentioning, roundTrip, waitForText, type TestGuest } from './support/guest.js'

const MiB = 1024 * 1024

function captureLogger(): Logger & { warnings: string[] } {
  const warnings: string[] = []
  return { warnings, debug() {}, info() {}, warn: (m) => warnings.push(m), error: (m) => warnings.push(m) }
}

function lastTick(text: string): number {
  const ticks = [...text.matchAll(/HM-TICK (\d+)/g)].map((m) => Number(m[1]))
  return ticks.length ? Math.max(...ticks) : -1
}

async function assertNoProcessAndNoRuntimeFiles(spec: VmSpec): Promise<void> {
  expect(await qemuProcessesMentioning(spec.runtimeDir)).toEqual([])
  expect(existsSync(join(spec.runtimeDir, 'qmp.sock'))).toBe(false)
  expect(existsSync(join(spec.runtimeDir, 'qemu.pid'))).toBe(false)
  for (const ch of spec.channels ?? []) if (ch.backend.kind === 'socket') expect(existsSync(ch.backend.path)).toBe(false)
}

let guest: TestGuest
const specs: VmSpec[] = []
const driver = new QemuDriver({ logger: captureLogger() })

beforeAll(async () => {
  guest = await prepareGuest()
})

afterAll(async () => {
  // Whatever a failed test left running must not outlive the file.
  for (const spec of specs) await driver.destroy({ runtimeDir: spec.runtimeDir })
  for (const spec of specs) expect(await qemuProcessesMentioning(spec.runtimeDir)).toEqual([])
  if (guest) await rm(guest.dir, { recursive: true, force: true })
})

describe('a VM through its whole life', { timeout: 120_000 }, () => {
  let spec: VmSpec
  let vm: QemuRunningVm
  let tap: string
  const events: VmEvent[] = []

  let netns: string

  beforeAll(async () => {
    tap = `hmt${randomBytes(4).toString('hex')}`
    // In a namespace of this test's own, never the host's: the TAP stays down and has no
    // address, the guest only needs to see its NIC.
    netns = `hmvt${randomBytes(4).toString('hex')}`
    await run('ip', ['netns', 'add', netns])
    await run('ip', ['-n', netns, 'tuntap', 'add', 'dev', tap, 'mode', 'tap', 'vnet_hdr'])
    const disk = join(guest.dir, 'data.img')
    const ro = join(guest.dir, 'ro.img')
    await writeFile(disk, '')
    await truncate(disk, 8 * MiB)
    await writeFile(ro, '')
    await truncate(ro, 4 * MiB)
    spec = await guestSpec(guest, 'life', {
      disks: [
        { path: disk, serial: 'hm-test', throttle: { bytesPerSec: 1_000_000 } },
        { path: ro, serial: 'hm-ro', readonly: true },
      ],
      nics: [{ tap, mac: '02:00:0a:0b:0c:0d' }],
      netns,
    })
    specs.push(spec)
  })

  afterAll(async () => {
    await driver.destroy({ runtimeDir: spec.runtimeDir })
    await run('ip', ['netns', 'del', netns]).catch(() => {})
  })

  it('starts and its init runs, printing to the console log', async () => {
    vm = await driver.start(spec)
    vm.onEvent((e) => events.push(e))
    expect(vm.phase).toBe('running')
    expect(vm.accel).toBe('tcg')
    expect(vm.persisted).toMatchObject({ driver: 'qemu', pid: vm.pid, controlSocket: join(spec.runtimeDir, 'qmp.sock') })
    expect(await vm.state()).toBe('running')
    await waitForText(spec.consoleLog, /HM-READY/)
    const console = await readFile(spec.consoleLog, 'utf8')
    expect(console).toContain('HM-BOOTED')
    expect(console).not.toContain('HM-INSMOD-FAILED')
    const pidFile = await readFile(join(spec.runtimeDir, 'qemu.pid'), 'utf8')
    expect(Number(pidFile.trim())).toBe(vm.pid)
  })

  it('writes what the guest sends to a file-backed port', async () => {
    const fileBackend = spec.channels?.find((c) => c.name === 'test.file')?.backend.path as string
    await waitForText(fileBackend, /HM-FILE-PORT hello from \S+/, 10_000)
  })

  it('round-trips over a socket-backed port, and the port takes a new client after the first left', async () => {
    const first = await vm.connectChannel('test.echo')
    expect(await roundTrip(first, 'one')).toBe('echo:one')
    first.destroy()
    await sleep(300)
    const second = await vm.connectChannel('test.echo')
    expect(await roundTrip(second, 'two')).toBe('echo:two')
    second.destroy()
  })

  it('lets the guest find disks by serial and the NIC by MAC', async () => {
    const console = await readFile(spec.consoleLog, 'utf8')
    const disks = [...console.matchAll(/HM-DISK (\S+) (\S+) ro=(\d)/g)].map((m) => [m[2], m[3]])
    expect(disks.sort()).toEqual([
      ['hm-ro', '1'],
      ['hm-test', '0'],
    ])
    expect(console).toMatch(/HM-NIC \S+ 02:00:0a:0b:0c:0d/)
  })

  it('applies the disk throttle in QEMU', async () => {
    const limits = await vm.execute<Record<string, number>>('qom-get', { path: '/objects/disk0-throttle', property: 'limits' })
    expect(limits['bps-total']).toBe(1_000_000)
  })

  it('pauses (the guest does nothing) and resumes (it carries on)', async () => {
    const paused = await vm.pause()
    expect(paused.phase).toBe('paused')
    expect(await paused.state()).toBe('paused')
    const before = (await stat(spec.consoleLog)).size
    await sleep(2500)
    expect((await stat(spec.consoleLog)).size).toBe(before)
    const tick = lastTick(await readFile(spec.consoleLog, 'utf8'))
    vm = await paused.resume()
    expect(vm.phase).toBe('running')
    expect(await vm.state()).toBe('running')
    await waitForText(spec.consoleLog, new RegExp(`HM-TICK ${tick + 1}\\b`), 20_000)
    expect(events.some((e) => e.type === 'state' && e.state === 'paused')).toBe(true)
    expect(events.some((e) => e.type === 'state' && e.state === 'running')).toBe(true)
  })

  let snapshotDir: string
  it('stands by to a directory and restores; the guest carries on where it was', async () => {
    snapshotDir = join(guest.dir, 'snapshot')
    const tick = lastTick(await readFile(spec.consoleLog, 'utf8'))
    const pid = vm.pid
    const snap = await vm.standby(snapshotDir)
    expect(snap.exit.reason).toBe('standby')
    expect(snap.bytes).toBeGreaterThan(1 * MiB)
    expect(snap.bytes).toBe((await stat(join(snapshotDir, 'vmstate'))).size)
    // Anonymous memory: the RAM is in the stream, no file to map.
    expect(await driver.snapshotRamFile(snapshotDir)).toBeUndefined()
    expect(await vm.state()).toBe('exited')
    expect(existsSync(`/proc/${pid}`)).toBe(false)
    await assertNoProcessAndNoRuntimeFiles(spec)
    console.log(`standby: ${snap.bytes} bytes in ${snap.durationMs} ms`)

    vm = await driver.start({ ...spec, restoreFrom: snapshotDir })
    vm.onEvent((e) => events.push(e))
    expect(vm.timings.restoreMs).toBeGreaterThan(0)
    console.log(`restore: guest running ${vm.timings.restoreMs} ms after spawn`)
    expect(await vm.state()).toBe('running')
    await waitForText(spec.consoleLog, new RegExp(`HM-TICK ${tick + 2}\\b`), 20_000)
    const text = await readFile(spec.consoleLog, 'utf8')
    // No second boot: the same init kept counting.
    expect(text.match(/HM-BOOTED/g)).toHaveLength(1)
    const echo = await vm.connectChannel('test.echo')
    expect(await roundTrip(echo, 'after-restore')).toBe('echo:after-restore')
    echo.destroy()
  })

  it('refuses to restore a snapshot into a different machine', async () => {
    await expect(driver.start({ ...spec, memoryBytes: 512 * MiB, restoreFrom: snapshotDir })).rejects.toMatchObject({
      code: 'invalid_input',
      field: 'restoreFrom',
    })
  })

  it('shuts down gracefully within the deadline (the guest sees the power button)', async () => {
    const exit = await vm.shutdown({ timeoutMs: 30_000 })
    expect(exit).toMatchObject({ reason: 'poweroff', code: 0, vmmReason: 'guest-shutdown' })
    expect(exit.forced).toBeUndefined()
    expect(await readFile(spec.consoleLog, 'utf8')).toContain('HM-POWER-BUTTON')
    expect(await vm.state()).toBe('exited')
    await assertNoProcessAndNoRuntimeFiles(spec)
    expect(events.at(-1)).toMatchObject({ type: 'exit', exit: { reason: 'poweroff' } })
    await expect(vm.pause()).rejects.toMatchObject({ code: 'vmm_not_running' })
  })
})

describe('ends that are not a clean poweroff', { timeout: 120_000 }, () => {
  it('forces the end when the guest ignores the power button past the deadline', async () => {
    const spec = await guestSpec(guest, 'stubborn', { cmdline: 'quiet hm.ignore_power=1' })
    specs.push(spec)
    await using vm = await driver.start(spec)
    await waitForText(spec.consoleLog, /HM-READY/)

    // First, a snapshot that cannot be written (a 1 MiB filesystem): the VM carries on as it was.
    const small = join(guest.dir, 'small-fs')
    await mkdir(small)
    await run('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'hm-test', small])
    try {
      await expect(vm.standby(join(small, 'snap'))).rejects.toMatchObject({ code: 'snapshot_failed' })
      expect(existsSync(join(small, 'snap', 'vmstate'))).toBe(false)
      expect(existsSync(join(small, 'snap', 'snapshot.json'))).toBe(false)
    } finally {
      await run('umount', [small])
    }
    expect(await vm.state()).toBe('running')
    const echo = await vm.connectChannel('test.echo')
    expect(await roundTrip(echo, 'still here')).toBe('echo:still here')
    echo.destroy()

    const exit = await vm.shutdown({ timeoutMs: 1500 })
    expect(exit).toMatchObject({ reason: 'quit', forced: true, vmmReason: 'host-qmp-quit' })
    expect(await readFile(spec.consoleLog, 'utf8')).not.toContain('HM-POWER-BUTTON')
    await assertNoProcessAndNoRuntimeFiles(spec)
  })

  it('reports a guest panic as a panic', async () => {
    const spec = await guestSpec(guest, 'panicky')
    specs.push(spec)
    await using vm = await driver.start(spec)
    await waitForText(spec.consoleLog, /HM-READY/)
    const echo = await vm.connectChannel('test.echo')
    echo.write('panic\n')
    const exit = await vm.waitForExit({ timeoutMs: 30_000 })
    echo.destroy()
    expect(exit.reason).toBe('panic')
    await assertNoProcessAndNoRuntimeFiles(spec)
  })

  it('kills at once, resolves accel auto to tcg with a warning, and refuses a second VM on the same runtime dir', async () => {
    const logger = captureLogger()
    const autoDriver = new QemuDriver({ logger })
    const spec = await guestSpec(guest, 'killed', { accel: 'auto' })
    specs.push(spec)
    const vm = await autoDriver.start(spec)
    expect(vm.accel).toBe('tcg')
    expect(logger.warnings.join('\n')).toMatch(/falling back to TCG/)
    await expect(autoDriver.start(spec)).rejects.toMatchObject({ code: 'conflict', field: 'runtimeDir' })
    await expect(vm.resizeMemory(512 * MiB)).rejects.toMatchObject({ code: 'not_supported', field: 'hotplugMemory' })
    const exit = await vm.kill()
    expect(exit).toMatchObject({ reason: 'killed', code: null, signal: 'SIGKILL' })
    await assertNoProcessAndNoRuntimeFiles(spec)
    expect(await vm.kill()).toBe(exit)
  })
})

describe('memory hotplug', { timeout: 120_000 }, () => {
  it('grows guest memory in DIMMs the guest onlines, grows only, and refuses standby afterwards', async () => {
    const spec = await guestSpec(guest, 'hotplug', {
      cmdline: 'quiet memhp_default_state=online',
      hotplugMemory: { maxBytes: 1024 * MiB, slots: 2 },
    })
    specs.push(spec)
    await using vm = await driver.start(spec)
    await waitForText(spec.consoleLog, /HM-READY/)
    const echo = await vm.connectChannel('test.echo')
    const memTotalKb = async () => Number((await roundTrip(echo, 'meminfo')).match(/MemTotal:\s+(\d+) kB/)?.[1])
    const before = await memTotalKb()
    expect(before).toBeGreaterThan(0)

    await expect(vm.resizeMemory(256 * MiB + 100 * MiB)).rejects.toMatchObject({ code: 'invalid_input', field: 'totalBytes' })
    await expect(vm.resizeMemory(2048 * MiB)).rejects.toMatchObject({ code: 'invalid_input', field: 'totalBytes' })
    expect(await vm.resizeMemory(512 * MiB)).toEqual({ memoryBytes: 512 * MiB })
    let after = before
    for (let i = 0; i < 50 && after - before < 256 * 1024 - 4096; i++) {
      await sleep(200)
      after = await memTotalKb()
    }
    // 256 MiB more, give or take what the kernel keeps for itself.
    expect(after - before).toBeGreaterThan(256 * 1024 - 4096)
    expect(after - before).toBeLessThanOrEqual(256 * 1024)
    expect(await vm.resizeMemory(512 * MiB)).toEqual({ memoryBytes: 512 * MiB })
    await expect(vm.resizeMemory(384 * MiB)).rejects.toMatchObject({ code: 'not_supported' })
    expect(await vm.execute<unknown[]>('query-memory-devices')).toHaveLength(1)
    await expect(vm.standby(join(guest.dir, 'hotplug-snap'))).rejects.toMatchObject({ code: 'not_supported', field: 'hotplugMemory' })
    expect(await vm.state()).toBe('running')
    echo.destroy()
  })
})

describe('disk hotplug', { timeout: 120_000 }, () => {
  it('adds and removes SCSI disks while running, and a standby of a VM with one restores with the spec it reports', async () => {
    const boot = join(guest.dir, 'hp-boot.img')
    const hot = join(guest.dir, 'hp-hot.img')
    for (const f of [boot, hot]) {
      await writeFile(f, '')
      await truncate(f, 4 * MiB)
    }
    const spec = await guestSpec(guest, 'diskhp', {
      scsiController: true,
      disks: [{ path: boot, serial: 'hm-blk' }],
    })
    specs.push(spec)
    let vm: QemuRunningVm = await driver.start(spec)
    try {
      await waitForText(spec.consoleLog, /HM-READY/)
      const nodes = async () => (await vm.execute<{ device: string; inserted?: { 'node-name': string } }[]>('query-block')).map((b) => b.inserted?.['node-name'])
      const disk = { path: hot, serial: 'hm-hot', bus: 'scsi' as const, scsiId: 3, readonly: true, throttle: { bytesPerSec: 2_000_000 } }
      await vm.hotplugDisk(disk)
      expect(vm.spec.disks?.map((d) => d.serial)).toEqual(['hm-blk', 'hm-hot'])
      expect(await nodes()).toContain('hd-hm-hot')
      const limits = await vm.execute<Record<string, number>>('qom-get', { path: '/objects/hd-hm-hot-throttle', property: 'limits' })
      expect(limits['bps-total']).toBe(2_000_000)
      // A serial or target taken, a disk not on the SCSI bus, a virtio-blk disk to unplug: refused, nothing added.
      await expect(vm.hotplugDisk({ ...disk, scsiId: 4 })).rejects.toMatchObject({ code: 'invalid_input', field: 'disk.serial' })
      await expect(vm.hotplugDisk({ ...disk, serial: 'hm-other' })).rejects.toMatchObject({ code: 'invalid_input', field: 'disk.scsiId' })
      await expect(vm.hotplugDisk({ path: hot, serial: 'hm-pci' })).rejects.toMatchObject({ code: 'invalid_input', field: 'disk.bus' })
      await expect(vm.unplugDisk('hm-blk')).rejects.toMatchObject({ code: 'invalid_state' })
      await expect(vm.unplugDisk('hm-none')).rejects.toMatchObject({ code: 'invalid_input', field: 'serial' })
      expect(vm.spec.disks).toHaveLength(2)

      // The restore gets the spec the VM reports (the hot disk on its command line) and loads the snapshot.
      const snap = join(guest.dir, 'diskhp-snap')
      await vm.standby(snap)
      await expect(driver.start({ ...spec, restoreFrom: snap })).rejects.toMatchObject({ field: 'restoreFrom' })
      vm = await driver.start({ ...spec, disks: [{ path: boot, serial: 'hm-blk' }, disk], restoreFrom: snap })
      expect(await vm.state()).toBe('running')
      expect(await nodes()).toContain('hd-hm-hot')

      await vm.unplugDisk('hm-hot')
      expect(await nodes()).not.toContain('hd-hm-hot')
      expect(vm.spec.disks?.map((d) => d.serial)).toEqual(['hm-blk'])
      const objects = await vm.execute<{ name: string }[]>('qom-list', { path: '/objects' })
      expect(objects.map((o) => o.name)).not.toContain('hd-hm-hot-throttle')
      // The same serial and target again: nothing of the first one is left in the way.
      await vm.hotplugDisk(disk)
      await vm.unplugDisk('hm-hot')
      const snap2 = join(guest.dir, 'diskhp-snap2')
      await vm.standby(snap2)
      vm = await driver.start({ ...spec, restoreFrom: snap2 })
      expect(await vm.state()).toBe('running')
    } finally {
      await vm.kill().catch(() => {})
    }
  })

  it('refuses a hot-plug on a VM started without the controller', async () => {
    const spec = await guestSpec(guest, 'nohp', {})
    specs.push(spec)
    await using vm = await driver.start(spec)
    await expect(vm.hotplugDisk({ path: '/dev/null', serial: 'x', bus: 'scsi', scsiId: 0 })).rejects.toMatchObject({ code: 'invalid_state' })
  })
})

describe('failed starts leave nothing behind', { timeout: 60_000 }, () => {
  it('names a missing kernel without spawning anything', async () => {
    const spec = await guestSpec(guest, 'nokernel', { kernel: join(guest.dir, 'no-such-vmlinux') })
    specs.push(spec)
    await expect(driver.start(spec)).rejects.toMatchObject({ code: 'invalid_input', field: 'kernel' })
    expect(existsSync(spec.runtimeDir)).toBe(false)
    expect(await qemuProcessesMentioning(spec.runtimeDir)).toEqual([])
  })

  it("gives QEMU's own complaint when it dies during start, and leaves no process", async () => {
    const bad = join(guest.dir, 'not-a-kernel')
    await writeFile(bad, 'this is not a kernel\n')
    const spec = await guestSpec(guest, 'badkernel', { kernel: bad })
    specs.push(spec)
    const err = await driver.start(spec).then(
      () => undefined,
      (e: unknown) => e,
    )
        // QEMU's wording depends on what else it loads ("invalid kernel header", "kernel too old ...").
    expect(err).toMatchObject({ code: 'vmm_start_failed', message: expect.stringMatching(/exited with code 1 during start: qemu: \S/) })
    const output = (err as { details: { output: string } }).details.output
    expect(output).toMatch(/^qemu: /)
    await assertNoProcessAndNoRuntimeFiles(spec)
    // The VMM log keeps the argv and the complaint for later.
    const log = await readFile(join(spec.runtimeDir, 'vmm.log'), 'utf8')
    expect(log).toMatch(/start: qemu-system-x86_64 .*-kernel \S*not-a-kernel/)
    expect(log.trimEnd().endsWith(output)).toBe(true)
  })

  it('says so when the QEMU binary cannot be run', async () => {
    const spec = await guestSpec(guest, 'nobinary')
    specs.push(spec)
    await expect(new QemuDriver({ qemuBinary: join(guest.dir, 'no-such-qemu') }).start(spec)).rejects.toMatchObject({
      code: 'tool_missing',
      field: join(guest.dir, 'no-such-qemu'),
      step: 'qemu.spawn',
      message: expect.stringContaining('not installed'),
    })
  })

  it('kills the process when the caller fails in onSpawn', async () => {
    const spec = await guestSpec(guest, 'onspawn')
    specs.push(spec)
    let seenPid = 0
    await expect(
      driver.start(spec, {
        onSpawn: (p) => {
          seenPid = p.pid
          throw new Error('could not persist')
        },
      }),
    ).rejects.toThrow('could not persist')
    expect(seenPid).toBeGreaterThan(0)
    expect(existsSync(`/proc/${seenPid}`)).toBe(false)
    await assertNoProcessAndNoRuntimeFiles(spec)
  })

  it('stops and cleans up when the caller aborts mid-start', async () => {
    const spec = await guestSpec(guest, 'aborted')
    specs.push(spec)
    const ac = new AbortController()
    await expect(driver.start(spec, { signal: ac.signal, onSpawn: () => ac.abort(new Error('caller gave up')) })).rejects.toMatchObject({
      code: 'aborted',
    })
    await assertNoProcessAndNoRuntimeFiles(spec)
    await expect(driver.start(spec, { signal: ac.signal })).rejects.toMatchObject({ code: 'aborted' })
  })

  it('gives up at the readiness deadline, kills the process and says it was not ready', async () => {
    const spec = await guestSpec(guest, 'deadline')
    specs.push(spec)
    // A deadline QEMU cannot meet, so the timeout path runs against a live process.
    await expect(driver.start(spec, { readyTimeoutMs: 1 })).rejects.toMatchObject({
      code: 'vmm_start_failed',
      message: expect.stringContaining('not ready within 1 ms'),
    })
    await assertNoProcessAndNoRuntimeFiles(spec)
  })
})
