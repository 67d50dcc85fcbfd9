/**
 * CloudHypervisorDriver end to end against our fake Cloud Hypervisor (support/fake-vmm.ts), a
 * real separate process that serves specs/cloud-hypervisor-openapi.yaml under /api/v1 on the unix
 * socket and refuses what does not validate. Every call is also checked against the spec before
 * it is sent (`checkCall`). What every REST driver does is in support/rest-driver-contract.ts;
 * this file says how Cloud Hypervisor says it, and tests what only it does. No real Cloud
 * Hypervisor was ever run.
 */
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { CloudHypervisorDriver, cloudHypervisorDialect, VmmApiError } from '../src/index.js'
import { describeRestDriverContract } from './support/rest-driver-contract.js'
import { restDriverSuite } from './support/rest-driver-suite.js'

const MiB = 1024 * 1024
const ch = restDriverSuite('cloud-hypervisor', (opts) => new CloudHypervisorDriver(opts))

const resize = (bytes: number) => ({ method: 'PUT', path: '/vm.resize', body: { desired_ram: bytes } })

describeRestDriverContract('CloudHypervisorDriver', {
  suite: ch,
  dialect: cloudHypervisorDialect,
  // A key=value option: a bare path would be read as an option list.
  apiSocket: { file: 'ch.sock', argv: (path) => ['--api-socket', `path=${path}`] },
  readiness: { method: 'GET', path: '/vmm.ping' },
  stateQuery: { method: 'GET', path: '/vm.info' },
  bootPaths: ['/vm.create', '/vm.boot'],
  calls: {
    pause: [{ method: 'PUT', path: '/vm.pause' }],
    resume: [{ method: 'PUT', path: '/vm.resume' }],
    gracefulStop: [{ method: 'PUT', path: '/vm.power-button' }],
    quit: [{ method: 'PUT', path: '/vmm.shutdown' }],
    snapshot: (dir) => [{ method: 'PUT', path: '/vm.snapshot', body: { destination_url: `file://${dir}` } }],
    // A restored VM comes back paused.
    restore: (dir) => [
      { method: 'PUT', path: '/vm.restore', body: { source_url: `file://${dir}` } },
      { method: 'PUT', path: '/vm.resume' },
    ],
    resize,
  },
  exits: {
    graceful: { reason: 'poweroff', vmmReason: 'acpi-power-button', code: 0, signal: null },
    // Cloud Hypervisor has a quit call: the VMM ends by itself after the snapshot, no signal.
    afterStandby: { reason: 'standby', code: 0, signal: null },
    // Ended by the VMM's own quit: no signal was needed.
    forced: { reason: 'quit', code: 0, signal: null },
    unrequested: { reason: 'poweroff', code: 0 },
  },
  snapshot: {
    files: ['config.json', 'memory-ranges', 'state.json'],
    pinnedPaths: (s) => ({ consoleLog: s.consoleLog, 'vsock socket (runtimeDir)': join(s.runtimeDir, 'vsock.sock') }),
    damaged: 'memory-ranges',
    // Cloud Hypervisor reopens the serial file by the path it saved.
    refusedChanges: (_s, dir) => [
      [{ consoleLog: join(dir, 'elsewhere.log') }, { code: 'invalid_input', field: 'restoreFrom', message: expect.stringMatching(/consoleLog/) }],
    ],
  },
  refusedBootCall: {
    method: 'PUT',
    path: '/vm.boot',
    status: 500,
    message: 'Error from API: The VM could not boot: Error loading kernel: InvalidElfMagicNumber',
    step: 'cloud-hypervisor.bootVM',
  },
  refusedRestoreCall: {
    method: 'PUT',
    path: '/vm.restore',
    status: 500,
    message: 'Error from API: The VM could not be restored: MissingState',
    step: 'cloud-hypervisor.vm.restore',
  },
  refusedSpecs: (dir) => [
    [{ hotplugMemory: { maxBytes: 768 * MiB, slots: 4 } }, { code: 'not_supported', field: 'hotplugMemory.slots' }],
    [{ hotplugMemory: { maxBytes: 320 * MiB } }, { code: 'invalid_input', field: 'hotplugMemory.maxBytes' }],
    [{ runtimeDir: join(dir, 'a,b') }, { field: 'runtimeDir', message: expect.stringMatching(/comma/) }],
  ],
})

describe('CloudHypervisorDriver against the fake Cloud Hypervisor: what only it does', { timeout: 60_000 }, () => {
  it('grows memory only in whole 128 MiB ACPI DIMMs, up to the hotplug region, sending nothing for the size it has', async () => {
    const { vm: running, sentSinceBoot } = await ch.startRunning()
    // ACPI hotplug adds whole 128 MiB DIMMs and never takes one back.
    await expect(running.resizeMemory(320 * MiB)).rejects.toMatchObject({ code: 'invalid_input', field: 'totalBytes' })
    expect(await running.resizeMemory(512 * MiB)).toEqual({ memoryBytes: 512 * MiB })
    await expect(running.resizeMemory(384 * MiB)).rejects.toMatchObject({ code: 'not_supported', field: 'totalBytes' })
    expect(await running.resizeMemory(768 * MiB)).toEqual({ memoryBytes: 768 * MiB })
    // Read back from vm.info: the VM already has it, so nothing is sent.
    expect(await running.resizeMemory(768 * MiB)).toEqual({ memoryBytes: 768 * MiB })
    await expect(running.resizeMemory(1024 * MiB)).rejects.toMatchObject({ code: 'invalid_input', field: 'totalBytes' })
    expect(await sentSinceBoot()).toEqual([resize(512 * MiB), resize(768 * MiB)])
  })

  it('a vmm.shutdown refused after the snapshot: still a standby, the VMM killed after the quit grace, the snapshot usable', async () => {
    const { driver } = await ch.driverWith({ fail: 'PUT /vmm.shutdown=500:Error from API: shutting down the VMM failed' })
    const s = ch.spec()
    const snapDir = join(ch.dir, 'snap-quit-refused')
    const snap = await ch.track(await driver.start(s)).standby(snapDir)
    expect(snap.exit).toMatchObject({ reason: 'standby', code: null, signal: 'SIGKILL' })
    expect(snap.exit.forced).toBeUndefined()
    await ch.expectNothingLeft(s)
    const restored = ch.track(await (await ch.driverWith()).driver.start({ ...s, restoreFrom: snapDir }))
    expect(await restored.state()).toBe('running')
  })

  it('surfaces a grow Cloud Hypervisor refuses as VmmApiError, the VM still running', async () => {
    // Eight ACPI DIMM slots: a ninth grow is refused by the VMM, not by the driver.
    const { vm } = await ch.startRunning({ memoryBytes: 128 * MiB, hotplugMemory: { maxBytes: 128 * MiB * 10 } })
    for (let i = 2; i <= 9; i++) await vm.resizeMemory(128 * MiB * i)
    const err = await vm.resizeMemory(128 * MiB * 10).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(VmmApiError)
    expect(err).toMatchObject({ status: 500, step: 'cloud-hypervisor.vm.resize', vmmMessage: expect.stringMatching(/NoSlotAvailable/) })
    expect(await vm.state()).toBe('running')
  })
})
