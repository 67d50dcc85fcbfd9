/**
 * CloudHypervisorDriver end to end against our fake Cloud Hypervisor (support/fake-vmm.ts), a
 * real separate process that serves specs/cloud-hypervisor-openapi.yaml under /api/v1 on the unix
 * socket and refuses what does not validate. Every call is also checked against the spec before
 * it is sent (`checkCall`). This proves the transport, supervision, readiness, vsock handshake,
 * attach, standby/restore bookkeeping and destroy; no real Cloud Hypervisor was ever run.
 */
import { readFile, truncate } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import {
  CloudHypervisorDriver,
  cloudHypervisorDialect,
  restRuntime,
  VmmApiError,
  type LiveVm,
  type PersistedVm,
  type VmEvent,
  type VmSpec,
} from '../src/index.js'
import { mutations, recorded } from './support/fake-vmm-harness.js'
import { lines, restDriverSuite } from './support/rest-driver-suite.js'

const MiB = 1024 * 1024
const ch = restDriverSuite('cloud-hypervisor', (opts) => new CloudHypervisorDriver(opts))

const resize = (bytes: number) => ({ method: 'PUT', path: '/vm.resize', body: { desired_ram: bytes } })

describe('CloudHypervisorDriver against the fake Cloud Hypervisor', { timeout: 60_000 }, () => {
  it('boots with exactly the planned calls, each valid, then pause/resume, resize, vsock and a graceful stop', async () => {
    const { driver, record } = await ch.driverWith()
    const s = ch.spec()
    let spawned: PersistedVm | undefined
    const vm = ch.track(await driver.start(s, { onSpawn: (p) => void (spawned = p) }))
    expect(vm.phase).toBe('running')
    expect(vm.driver).toBe('cloud-hypervisor')
    expect(spawned).toEqual(vm.persisted)
    const rt = restRuntime(s.runtimeDir, cloudHypervisorDialect.apiSocketName)
    expect(vm.persisted).toMatchObject({ driver: 'cloud-hypervisor', accel: 'kvm', controlSocket: join(s.runtimeDir, 'ch.sock') })
    expect(driver.isAlive(vm.persisted)).toBe(true)
    expect((await readFile(join(s.runtimeDir, 'vmm.pid'), 'utf8')).trim()).toBe(String(vm.pid))
    // The socket is a key=value option: a bare path would be read as an option list.
    const argv = (await readFile(`/proc/${vm.pid}/cmdline`, 'utf8')).split('\0')
    expect(argv.slice(argv.indexOf('--api-socket'), argv.indexOf('--api-socket') + 2)).toEqual(['--api-socket', `path=${rt.apiSocket}`])

    const reqs = await recorded(record)
    expect(reqs.filter((r) => r.errors.length > 0 || r.responseErrors.length > 0)).toEqual([])
    const planned = cloudHypervisorDialect.planBoot(s, rt).map(({ method, path, body }) => ({ method, path, ...(body !== undefined ? { body } : {}) }))
    expect(mutations(reqs)).toEqual(planned)
    expect(planned.map((c) => c.path)).toEqual(['/vm.create', '/vm.boot'])
    expect(reqs[0]).toMatchObject({ method: 'GET', path: '/vmm.ping', status: 200 })
    // The start ends by asking the VMM itself whether the guest runs.
    expect(reqs.at(-1)).toMatchObject({ method: 'GET', path: '/vm.info', status: 200 })
    expect(await readFile(s.consoleLog, 'utf8')).toMatch(/fake cloud-hypervisor: guest booted/)

    const events: VmEvent[] = []
    vm.onEvent((e) => events.push(e))
    const agent = await vm.connectChannel('hypeman.agent')
    const greeting = lines(agent, 2)
    agent.write('hello\n')
    expect(await greeting).toEqual(['guest port 1024 on fake cloud-hypervisor', 'echo:hello'])
    agent.destroy()
    await expect(vm.connectChannel('hypeman.app')).rejects.toMatchObject({ code: 'invalid_input', field: 'name' })

    const paused = await vm.pause()
    expect(paused.phase).toBe('paused')
    expect(await paused.state()).toBe('paused')
    const running = await paused.resume()
    expect(await running.state()).toBe('running')

    // ACPI hotplug adds whole 128 MiB DIMMs and never takes one back.
    await expect(running.resizeMemory(320 * MiB)).rejects.toMatchObject({ code: 'invalid_input', field: 'totalBytes' })
    expect(await running.resizeMemory(512 * MiB)).toEqual({ memoryBytes: 512 * MiB })
    await expect(running.resizeMemory(384 * MiB)).rejects.toMatchObject({ code: 'not_supported', field: 'totalBytes' })
    expect(await running.resizeMemory(768 * MiB)).toEqual({ memoryBytes: 768 * MiB })
    // Read back from vm.info: the VM already has it, so nothing is sent.
    expect(await running.resizeMemory(768 * MiB)).toEqual({ memoryBytes: 768 * MiB })
    await expect(running.resizeMemory(1024 * MiB)).rejects.toMatchObject({ code: 'invalid_input', field: 'totalBytes' })

    const exit = await running.shutdown({ timeoutMs: 10_000 })
    expect(exit).toMatchObject({ reason: 'poweroff', vmmReason: 'acpi-power-button', code: 0, signal: null })
    expect(exit.forced).toBeUndefined()
    expect(events.map((e) => (e.type === 'state' ? e.state : e.type))).toEqual(['paused', 'running', 'exit'])
    const after = await recorded(record)
    expect(after.filter((r) => r.errors.length > 0 || r.responseErrors.length > 0)).toEqual([])
    expect(mutations(after).slice(planned.length)).toEqual([
      { method: 'PUT', path: '/vm.pause' },
      { method: 'PUT', path: '/vm.resume' },
      resize(512 * MiB),
      resize(768 * MiB),
      { method: 'PUT', path: '/vm.power-button' },
    ])
    expect(driver.isAlive(vm.persisted)).toBe(false)
    await ch.expectNothingLeft(s)
    await expect(vm.state()).resolves.toBe('exited')
    await expect(vm.pause()).rejects.toMatchObject({ code: 'vmm_not_running' })
  })

  it('stands by into a directory (pause, vm.snapshot, vmm.shutdown) and restores from it (vm.restore, vm.resume)', async () => {
    const { driver, record } = await ch.driverWith()
    const s = ch.spec()
    const vm = ch.track(await driver.start(s))
    await vm.resizeMemory(512 * MiB)
    const snapDir = join(ch.dir, 'snap-ch')
    const snap = await vm.standby(snapDir)
    // Cloud Hypervisor has a quit call: the VMM ends by itself after the snapshot, no signal.
    expect(snap.exit).toMatchObject({ reason: 'standby', code: 0, signal: null })
    expect(snap.bytes).toBeGreaterThanOrEqual(512 * MiB)
    const meta = JSON.parse(await readFile(join(snapDir, 'snapshot.json'), 'utf8'))
    expect(meta).toMatchObject({
      driver: 'cloud-hypervisor',
      format: 'hypeman-ts/rest-snapshot/1',
      pinnedPaths: {
        'disks[0].path': ch.files.disks[0],
        consoleLog: s.consoleLog,
        'vsock socket (runtimeDir)': join(s.runtimeDir, 'vsock.sock'),
      },
    })
    expect(Object.keys(meta.files).sort()).toEqual(['config.json', 'memory-ranges', 'state.json'])
    expect(mutations(await recorded(record)).slice(-3)).toEqual([
      { method: 'PUT', path: '/vm.pause' },
      { method: 'PUT', path: '/vm.snapshot', body: { destination_url: `file://${snapDir}` } },
      { method: 'PUT', path: '/vmm.shutdown' },
    ])
    await ch.expectNothingLeft(s)

    const again = await ch.driverWith()
    const restored = ch.track(await again.driver.start({ ...s, restoreFrom: snapDir }))
    expect(restored.timings.restoreMs).toBeGreaterThan(0)
    expect(await restored.state()).toBe('running')
    // The hotplugged memory came back with the snapshot: growing to it sends nothing.
    expect(await restored.resizeMemory(512 * MiB)).toEqual({ memoryBytes: 512 * MiB })
    expect(await restored.resizeMemory(640 * MiB)).toEqual({ memoryBytes: 640 * MiB })
    const reqs = await recorded(again.record)
    expect(reqs.filter((r) => r.errors.length > 0 || r.responseErrors.length > 0)).toEqual([])
    expect(mutations(reqs)).toEqual([
      { method: 'PUT', path: '/vm.restore', body: { source_url: `file://${snapDir}` } },
      { method: 'PUT', path: '/vm.resume' },
      resize(640 * MiB),
    ])
    const agent = await restored.connectChannel('hypeman.agent')
    expect(await lines(agent, 1)).toEqual(['guest port 1024 on fake cloud-hypervisor'])
    agent.destroy()
    await restored.kill()
  })

  it('stands by a paused VM without resuming it', async () => {
    const { driver, record } = await ch.driverWith()
    const s = ch.spec()
    const paused = await ch.track(await driver.start(s)).pause()
    const snapDir = join(ch.dir, 'snap-ch-paused')
    expect((await paused.standby(snapDir)).exit).toMatchObject({ reason: 'standby' })
    expect(mutations(await recorded(record)).slice(-3)).toEqual([
      { method: 'PUT', path: '/vm.pause' },
      { method: 'PUT', path: '/vm.snapshot', body: { destination_url: `file://${snapDir}` } },
      { method: 'PUT', path: '/vmm.shutdown' },
    ])
    await ch.expectNothingLeft(s)
  })

  it('refuses a restore whose disks, console or shape moved, or whose snapshot is damaged, before spawning anything', async () => {
    const { driver, record } = await ch.driverWith()
    const s = ch.spec()
    const snapDir = join(ch.dir, 'snap-ch-2')
    await ch.track(await driver.start(s)).standby(snapDir)
    const before = (await recorded(record)).length
    const swapped = [s.disks?.[1], s.disks?.[0]].map((d, i) => ({ ...d, serial: i ? 'hm-rootfs' : 'hm-overlay' })) as VmSpec['disks']
    await expect(driver.start({ ...s, restoreFrom: snapDir, disks: swapped })).rejects.toMatchObject({ code: 'invalid_input', field: 'restoreFrom' })
    // Cloud Hypervisor reopens the serial file by the path it saved.
    await expect(driver.start({ ...s, restoreFrom: snapDir, consoleLog: join(ch.dir, 'elsewhere.log') })).rejects.toMatchObject({
      code: 'invalid_input',
      field: 'restoreFrom',
      message: expect.stringMatching(/consoleLog/),
    })
    await expect(driver.start({ ...s, restoreFrom: snapDir, vcpus: 1 })).rejects.toMatchObject({ code: 'invalid_input', field: 'restoreFrom' })
    await truncate(join(snapDir, 'memory-ranges'), 3)
    await expect(driver.start({ ...s, restoreFrom: snapDir })).rejects.toMatchObject({ code: 'restore_failed', field: 'restoreFrom' })
    await expect(driver.start({ ...s, restoreFrom: join(ch.dir, 'files') })).rejects.toMatchObject({ code: 'invalid_input', field: 'restoreFrom' })
    expect(await recorded(record)).toHaveLength(before)
    await ch.expectNothingLeft(s)
  })

  it('attaches from a fresh driver in either state, and sees a SIGKILL from outside as killed', async () => {
    const { driver, record } = await ch.driverWith()
    const s = ch.spec()
    const first = await driver.start(s)
    const persisted = first.persisted
    await first.detach()
    await expect(first.state()).rejects.toMatchObject({ code: 'invalid_state' })

    const other = ch.fresh()
    const vm = await other.attach(persisted)
    expect(vm.phase).toBe('running')
    const paused = await (vm as Extract<LiveVm, { phase: 'running' }>).pause()
    await paused.detach()
    const back = ch.track(await other.attach(persisted))
    expect(back.phase).toBe('paused')
    expect(await back.state()).toBe('paused')

    process.kill(persisted.pid, 'SIGKILL')
    const exit = await back.waitForExit({ timeoutMs: 10_000 })
    // Not our child: the status is unknowable, and nobody here asked for the end.
    expect(exit).toMatchObject({ reason: 'killed', code: null })
    expect(other.isAlive(persisted)).toBe(false)
    await expect(other.attach(persisted)).rejects.toMatchObject({ code: 'vmm_not_running' })
    await expect(other.attach({ ...persisted, driver: 'firecracker' })).rejects.toMatchObject({ code: 'invalid_input', field: 'driver' })
    await other.destroy(persisted)
    await other.destroy(persisted)
    await ch.expectNothingLeft(s)
    expect((await recorded(record)).filter((r) => r.errors.length > 0 || r.responseErrors.length > 0)).toEqual([])
  })

  it('destroys by runtime dir a VMM that was never recorded', async () => {
    const { driver } = await ch.driverWith()
    const s = ch.spec()
    const vm = await driver.start(s)
    const pid = vm.pid
    await vm.detach()
    await ch.fresh().destroy({ runtimeDir: s.runtimeDir })
    // Gone, or at most a zombie our test process has not reaped yet: never still running.
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
    expect(stat === '' || stat.includes(') Z')).toBe(true)
    await ch.expectNothingLeft(s)
  })

  it('presses the power button of a paused VM only after resuming it', async () => {
    const { driver, record } = await ch.driverWith()
    const s = ch.spec()
    const paused = await ch.track(await driver.start(s)).pause()
    expect(await paused.shutdown({ timeoutMs: 10_000 })).toMatchObject({ reason: 'poweroff', vmmReason: 'acpi-power-button', code: 0 })
    expect(mutations(await recorded(record)).slice(-3)).toEqual([
      { method: 'PUT', path: '/vm.pause' },
      { method: 'PUT', path: '/vm.resume' },
      { method: 'PUT', path: '/vm.power-button' },
    ])
    await ch.expectNothingLeft(s)
  })

  it('forces a guest that ignores the power button with vmm.shutdown, and reports a guest that powered off by itself', async () => {
    const stubborn = await ch.driverWith({ ignoreStop: true })
    const s = ch.spec()
    const vm = ch.track(await stubborn.driver.start(s))
    const exit = await vm.shutdown({ timeoutMs: 500 })
    // The VMM's own quit ended it: no signal was needed.
    expect(exit).toMatchObject({ reason: 'quit', forced: true, code: 0, signal: null })
    expect(mutations(await recorded(stubborn.record)).slice(-2)).toEqual([
      { method: 'PUT', path: '/vm.power-button' },
      { method: 'PUT', path: '/vmm.shutdown' },
    ])
    await ch.expectNothingLeft(s)

    const poweroff = await ch.driverWith({ guestExitMs: 300 })
    const s2 = ch.spec()
    const vm2 = ch.track(await poweroff.driver.start(s2))
    const exit2 = await vm2.waitForExit({ timeoutMs: 10_000 })
    expect(exit2).toMatchObject({ reason: 'poweroff', code: 0 })
    expect(exit2.forced).toBeUndefined()
    await ch.expectNothingLeft(s2)
  })

  it('surfaces a grow Cloud Hypervisor refuses as VmmApiError, the VM still running', async () => {
    // Eight ACPI DIMM slots: a ninth grow is refused by the VMM, not by the driver.
    const { driver } = await ch.driverWith()
    const s = ch.spec({ memoryBytes: 128 * MiB, hotplugMemory: { maxBytes: 128 * MiB * 10 } })
    const vm = ch.track(await driver.start(s))
    for (let i = 2; i <= 9; i++) await vm.resizeMemory(128 * MiB * i)
    const err = await vm.resizeMemory(128 * MiB * 10).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(VmmApiError)
    expect(err).toMatchObject({ status: 500, step: 'cloud-hypervisor.vm.resize', vmmMessage: expect.stringMatching(/NoSlotAvailable/) })
    expect(await vm.state()).toBe('running')
  })
})

describe('failed starts leave nothing behind', { timeout: 60_000 }, () => {
  it('a VMM that dies at once: vmm_start_failed with its last words', async () => {
    const { driver } = await ch.driverWith({ mode: 'exit-at-start' })
    const s = ch.spec()
    const err = await driver.start(s).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'vmm_start_failed' })
    expect((err as Error).message).toMatch(/Cloud Hypervisor exited with code 3/)
    expect((err as { details: { output: string } }).details.output).toMatch(/this fake was told to fail at start/)
    await ch.expectNothingLeft(s)
  })

  it('a VMM that never serves its API: killed at the readiness deadline', async () => {
    const { driver } = await ch.driverWith({ mode: 'never-listen' }, { readyTimeoutMs: 2500 })
    const s = ch.spec()
    const err = await driver.start(s).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'vmm_start_failed', step: 'api.ready' })
    expect((err as Error).message).toMatch(/not ready within 2500 ms.*the socket does not exist yet/s)
    await ch.expectNothingLeft(s)
  })

  it('an API that is slow to appear is waited for', async () => {
    const { driver } = await ch.driverWith({ listenDelayMs: 700 })
    const s = ch.spec()
    const vm = ch.track(await driver.start(s))
    expect(vm.timings.readyMs).toBeGreaterThanOrEqual(700)
    await vm.kill()
  })

  it('a boot call the VMM refuses: VmmApiError with its text, the process killed', async () => {
    const message = 'Error from API: The VM could not boot: Error loading kernel: InvalidElfMagicNumber'
    const { driver, record } = await ch.driverWith({ fail: `PUT /vm.boot=500:${message}` })
    const s = ch.spec()
    const err = await driver.start(s).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(VmmApiError)
    expect(err).toMatchObject({ code: 'vmm_api_error', status: 500, step: 'cloud-hypervisor.bootVM', method: 'PUT', path: '/vm.boot', vmmMessage: message })
    // Nothing was sent after the refused call.
    expect(mutations(await recorded(record)).map((c) => c.path)).toEqual(['/vm.create', '/vm.boot'])
    await ch.expectNothingLeft(s)
  })

  it('a restore the VMM refuses: VmmApiError, the process killed, the snapshot kept', async () => {
    const { driver } = await ch.driverWith()
    const s = ch.spec()
    const snapDir = join(ch.dir, 'snap-ch-3')
    await ch.track(await driver.start(s)).standby(snapDir)
    const refusing = await ch.driverWith({ fail: 'PUT /vm.restore=500:Error from API: The VM could not be restored: MissingState' })
    const err = await refusing.driver.start({ ...s, restoreFrom: snapDir }).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'vmm_api_error', status: 500, step: 'cloud-hypervisor.vm.restore' })
    expect(mutations(await recorded(refusing.record)).map((c) => c.path)).toEqual(['/vm.restore'])
    await ch.expectNothingLeft(s)
    // Untouched: a second attempt can still use it.
    const restored = ch.track(await driver.start({ ...s, restoreFrom: snapDir }))
    expect(await restored.state()).toBe('running')
  })

  it('onSpawn throwing, or an abort while waiting, kills the process', async () => {
    const { driver } = await ch.driverWith({ listenDelayMs: 3000 })
    const s = ch.spec()
    await expect(
      driver.start(s, {
        onSpawn: () => {
          throw new Error('could not persist')
        },
      }),
    ).rejects.toThrow('could not persist')
    await ch.expectNothingLeft(s)
    const ac = new AbortController()
    setTimeout(() => ac.abort(new Error('user gave up')), 300)
    await expect(driver.start(s, { signal: ac.signal })).rejects.toMatchObject({ code: 'aborted' })
    await ch.expectNothingLeft(s)
  })

  it('a second VMM on a runtime dir in use is a conflict', async () => {
    const { driver } = await ch.driverWith()
    const s = ch.spec()
    const vm = ch.track(await driver.start(s))
    await expect(driver.start(s)).rejects.toMatchObject({ code: 'conflict', field: 'runtimeDir' })
    expect(await vm.state()).toBe('running')
  })

  it('bad specs and accelerators are refused before anything is spawned', async () => {
    const { driver, record } = await ch.driverWith()
    const s = ch.spec()
    await expect(driver.start({ ...s, kernel: join(ch.dir, 'missing') })).rejects.toMatchObject({ code: 'invalid_input', field: 'kernel' })
    await expect(driver.start({ ...s, accel: 'tcg' })).rejects.toMatchObject({ code: 'accel_unavailable', field: 'accel' })
    await expect(ch.fresh({ kvmDevice: join(ch.dir, 'no-kvm') }).start(s)).rejects.toMatchObject({ code: 'accel_unavailable' })
    await expect(driver.start({ ...s, channels: [{ name: 'a', backend: { kind: 'file', path: '/tmp/a' } }] })).rejects.toMatchObject({
      code: 'not_supported',
      field: 'channels[0].backend.kind',
    })
    await expect(driver.start({ ...s, nics: [{ tap: 'hm-nonexist0', mac: '02:00:00:00:00:01' }] })).rejects.toMatchObject({ field: 'nics[0].tap' })
    // What only Cloud Hypervisor cannot take.
    await expect(driver.start({ ...s, hotplugMemory: { maxBytes: 768 * MiB, slots: 4 } })).rejects.toMatchObject({
      code: 'not_supported',
      field: 'hotplugMemory.slots',
    })
    await expect(driver.start({ ...s, hotplugMemory: { maxBytes: 320 * MiB } })).rejects.toMatchObject({ code: 'invalid_input', field: 'hotplugMemory.maxBytes' })
    await expect(driver.start({ ...s, runtimeDir: join(ch.dir, 'a,b') })).rejects.toMatchObject({ field: 'runtimeDir', message: expect.stringMatching(/comma/) })
    expect(await recorded(record)).toEqual([])
    await ch.expectNothingLeft(s)
  })
})
