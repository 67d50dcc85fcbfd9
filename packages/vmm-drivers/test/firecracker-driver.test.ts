/**
 * FirecrackerDriver end to end against our fake Firecracker (support/fake-vmm.ts), a real
 * separate process that serves specs/firecracker-swagger.yaml on the unix socket and refuses
 * what does not validate. Every call is also checked against the spec before it is sent
 * (`checkCall`). This proves the transport, supervision, readiness, vsock handshake, attach,
 * standby/restore bookkeeping and destroy; no real Firecracker was ever run.
 */
import { readFile, truncate } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import {
  FirecrackerDriver,
  firecrackerDialect,
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
const fc = restDriverSuite('firecracker', (opts) => new FirecrackerDriver(opts))

describe('FirecrackerDriver against the fake Firecracker', { timeout: 60_000 }, () => {
  it('boots with exactly the planned calls, each valid, then pause/resume, resize, vsock and a graceful stop', async () => {
    const { driver, record } = await fc.driverWith()
    const s = fc.spec()
    let spawned: PersistedVm | undefined
    const vm = fc.track(await driver.start(s, { onSpawn: (p) => void (spawned = p) }))
    expect(vm.phase).toBe('running')
    expect(vm.driver).toBe('firecracker')
    expect(spawned).toEqual(vm.persisted)
    expect(vm.persisted).toMatchObject({ driver: 'firecracker', accel: 'kvm', controlSocket: join(s.runtimeDir, 'firecracker.sock') })
    expect(driver.isAlive(vm.persisted)).toBe(true)
    expect((await readFile(join(s.runtimeDir, 'vmm.pid'), 'utf8')).trim()).toBe(String(vm.pid))

    const reqs = await recorded(record)
    expect(reqs.filter((r) => r.errors.length > 0 || r.responseErrors.length > 0)).toEqual([])
    const rt = restRuntime(s.runtimeDir, firecrackerDialect.apiSocketName)
    const planned = firecrackerDialect.planBoot(s, rt).map(({ method, path, body }) => ({ method, path, body }))
    expect(mutations(reqs)).toEqual(planned)
    expect(reqs[0]).toMatchObject({ method: 'GET', path: '/', status: 200 })
    expect(await readFile(s.consoleLog, 'utf8')).toMatch(/fake firecracker: guest booted/)

    const events: VmEvent[] = []
    vm.onEvent((e) => events.push(e))
    const agent = await vm.connectChannel('hypeman.agent')
    const greeting = lines(agent, 2)
    agent.write('hello\n')
    expect(await greeting).toEqual(['guest port 1024 on fake firecracker', 'echo:hello'])
    agent.destroy()
    await expect(vm.connectChannel('hypeman.app')).rejects.toMatchObject({ code: 'invalid_input', field: 'name' })

    const paused = await vm.pause()
    expect(paused.phase).toBe('paused')
    expect(await paused.state()).toBe('paused')
    const running = await paused.resume()
    expect(await running.state()).toBe('running')

    expect(await running.resizeMemory(512 * MiB)).toEqual({ memoryBytes: 512 * MiB })
    // virtio-mem gives memory back too.
    expect(await running.resizeMemory(384 * MiB)).toEqual({ memoryBytes: 384 * MiB })
    await expect(running.resizeMemory(1024 * MiB)).rejects.toMatchObject({ code: 'invalid_input', field: 'totalBytes' })
    await expect(running.resizeMemory(257 * MiB)).rejects.toMatchObject({ code: 'invalid_input', field: 'totalBytes' })

    const exit = await running.shutdown({ timeoutMs: 10_000 })
    expect(exit).toMatchObject({ reason: 'poweroff', vmmReason: 'ctrl-alt-del', code: 0, signal: null })
    expect(exit.forced).toBeUndefined()
    expect(events.map((e) => (e.type === 'state' ? e.state : e.type))).toEqual(['paused', 'running', 'exit'])
    expect(mutations(await recorded(record)).slice(planned.length)).toEqual([
      { method: 'PATCH', path: '/vm', body: { state: 'Paused' } },
      { method: 'PATCH', path: '/vm', body: { state: 'Resumed' } },
      { method: 'PATCH', path: '/hotplug/memory', body: { requested_size_mib: 256 } },
      { method: 'PATCH', path: '/hotplug/memory', body: { requested_size_mib: 128 } },
      { method: 'PUT', path: '/actions', body: { action_type: 'SendCtrlAltDel' } },
    ])
    expect(driver.isAlive(vm.persisted)).toBe(false)
    await fc.expectNothingLeft(s)
    await expect(vm.state()).resolves.toBe('exited')
    await expect(vm.pause()).rejects.toMatchObject({ code: 'vmm_not_running' })
  })

  it('stands by into a directory and restores from it with snapshot/load alone', async () => {
    const { driver, record } = await fc.driverWith()
    const s = fc.spec()
    const vm = fc.track(await driver.start(s))
    await vm.resizeMemory(512 * MiB)
    const snapDir = join(fc.dir, 'snap-fc')
    const snap = await vm.standby(snapDir)
    expect(snap.exit).toMatchObject({ reason: 'standby' })
    // Firecracker has no quit call: after the snapshot the process is killed.
    expect(snap.exit.signal).toBe('SIGKILL')
    expect(snap.bytes).toBeGreaterThanOrEqual(512 * MiB)
    const meta = JSON.parse(await readFile(join(snapDir, 'snapshot.json'), 'utf8'))
    expect(meta).toMatchObject({ driver: 'firecracker', format: 'hypeman-ts/rest-snapshot/1', pinnedPaths: { 'disks[0].path': fc.files.disks[0] } })
    expect(Object.keys(meta.files).sort()).toEqual(['memory', 'vmstate'])
    expect(mutations(await recorded(record)).slice(-2)).toEqual([
      { method: 'PATCH', path: '/vm', body: { state: 'Paused' } },
      { method: 'PUT', path: '/snapshot/create', body: { snapshot_type: 'Full', snapshot_path: `${snapDir}/vmstate`, mem_file_path: `${snapDir}/memory` } },
    ])
    await fc.expectNothingLeft(s)

    const again = await fc.driverWith()
    const restored = fc.track(await again.driver.start({ ...s, restoreFrom: snapDir }))
    expect(restored.timings.restoreMs).toBeGreaterThan(0)
    expect(await restored.state()).toBe('running')
    const reqs = await recorded(again.record)
    expect(reqs.filter((r) => r.errors.length > 0)).toEqual([])
    expect(mutations(reqs)).toEqual([
      {
        method: 'PUT',
        path: '/snapshot/load',
        body: {
          snapshot_path: `${snapDir}/vmstate`,
          mem_backend: { backend_type: 'File', backend_path: `${snapDir}/memory` },
          resume_vm: true,
          vsock_override: { uds_path: join(s.runtimeDir, 'vsock.sock') },
        },
      },
    ])
    // The hotplugged memory came back with the snapshot.
    expect(await restored.resizeMemory(512 * MiB)).toEqual({ memoryBytes: 512 * MiB })
    const agent = await restored.connectChannel('hypeman.agent')
    expect(await lines(agent, 1)).toEqual(['guest port 1024 on fake firecracker'])
    agent.destroy()
    await restored.kill()
  })

  it('refuses a restore whose disks moved or whose snapshot is damaged, before spawning anything', async () => {
    const { driver } = await fc.driverWith()
    const s = fc.spec()
    const snapDir = join(fc.dir, 'snap-fc-2')
    await fc.track(await driver.start(s)).standby(snapDir)
    const moved = { ...s, restoreFrom: snapDir, disks: [s.disks?.[1], s.disks?.[0]].map((d, i) => ({ ...d, serial: i ? 'hm-rootfs' : 'hm-overlay' })) as VmSpec['disks'] }
    await expect(driver.start(moved)).rejects.toMatchObject({ code: 'invalid_input', field: 'restoreFrom' })
    await expect(driver.start({ ...s, restoreFrom: snapDir, vcpus: 1 })).rejects.toMatchObject({ code: 'invalid_input', field: 'restoreFrom' })
    await truncate(join(snapDir, 'vmstate'), 3)
    await expect(driver.start({ ...s, restoreFrom: snapDir })).rejects.toMatchObject({ code: 'restore_failed', field: 'restoreFrom' })
    await expect(driver.start({ ...s, restoreFrom: join(fc.dir, 'files') })).rejects.toMatchObject({ code: 'invalid_input', field: 'restoreFrom' })
    await fc.expectNothingLeft(s)
  })

  it('attaches from a fresh driver in either state, and sees a SIGKILL from outside as killed', async () => {
    const { driver, record } = await fc.driverWith()
    const s = fc.spec()
    const first = await driver.start(s)
    const persisted = first.persisted
    await first.detach()
    await expect(first.state()).rejects.toMatchObject({ code: 'invalid_state' })

    const other = fc.fresh()
    const vm = await other.attach(persisted)
    expect(vm.phase).toBe('running')
    const paused = await (vm as Extract<LiveVm, { phase: 'running' }>).pause()
    await paused.detach()
    const back = fc.track(await other.attach(persisted))
    expect(back.phase).toBe('paused')

    process.kill(persisted.pid, 'SIGKILL')
    const exit = await back.waitForExit({ timeoutMs: 10_000 })
    // Not our child: the status is unknowable, and nobody here asked for the end.
    expect(exit).toMatchObject({ reason: 'killed', code: null })
    expect(other.isAlive(persisted)).toBe(false)
    await expect(other.attach(persisted)).rejects.toMatchObject({ code: 'vmm_not_running' })
    await expect(other.attach({ ...persisted, driver: 'qemu' })).rejects.toMatchObject({ code: 'invalid_input', field: 'driver' })
    await other.destroy(persisted)
    await other.destroy(persisted)
    await fc.expectNothingLeft(s)
    expect((await recorded(record)).filter((r) => r.errors.length > 0)).toEqual([])
  })

  it('destroys by runtime dir a VMM that was never recorded', async () => {
    const { driver } = await fc.driverWith()
    const s = fc.spec()
    const vm = await driver.start(s)
    const pid = vm.pid
    await vm.detach()
    await fc.fresh().destroy({ runtimeDir: s.runtimeDir })
    // Gone, or at most a zombie our test process has not reaped yet: never still running.
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
    expect(stat === '' || stat.includes(') Z')).toBe(true)
    await fc.expectNothingLeft(s)
  })

  it('forces a guest that ignores Ctrl+Alt+Del, and reports a guest that reset by itself as reboot', async () => {
    const stubborn = await fc.driverWith({ ignoreStop: true })
    const s = fc.spec()
    const vm = fc.track(await stubborn.driver.start(s))
    const exit = await vm.shutdown({ timeoutMs: 500 })
    expect(exit).toMatchObject({ reason: 'killed', forced: true, signal: 'SIGKILL' })
    await fc.expectNothingLeft(s)

    const resets = await fc.driverWith({ guestExitMs: 300 })
    const s2 = fc.spec()
    const vm2 = fc.track(await resets.driver.start(s2))
    expect(await vm2.waitForExit({ timeoutMs: 10_000 })).toMatchObject({ reason: 'reboot', vmmReason: 'guest-reset', code: 0 })
    await fc.expectNothingLeft(s2)
  })
})

describe('failed starts leave nothing behind', { timeout: 60_000 }, () => {
  it('a VMM that dies at once: vmm_start_failed with its last words', async () => {
    const { driver } = await fc.driverWith({ mode: 'exit-at-start' })
    const s = fc.spec()
    const err = await driver.start(s).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'vmm_start_failed' })
    expect((err as Error).message).toMatch(/exited with code 3/)
    expect((err as { details: { output: string } }).details.output).toMatch(/this fake was told to fail at start/)
    await fc.expectNothingLeft(s)
  })

  it('a VMM that never serves its API: killed at the readiness deadline', async () => {
    const { driver } = await fc.driverWith({ mode: 'never-listen' }, { readyTimeoutMs: 2500 })
    const s = fc.spec()
    const err = await driver.start(s).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'vmm_start_failed', step: 'api.ready' })
    expect((err as Error).message).toMatch(/not ready within 2500 ms.*the socket does not exist yet/s)
    await fc.expectNothingLeft(s)
  })

  it('an API that is slow to appear is waited for', async () => {
    const { driver } = await fc.driverWith({ listenDelayMs: 700 })
    const s = fc.spec()
    const vm = fc.track(await driver.start(s))
    expect(vm.timings.readyMs).toBeGreaterThanOrEqual(700)
    await vm.kill()
  })

  it('a boot call the VMM refuses: VmmApiError with its fault_message, the process killed', async () => {
    const { driver, record } = await fc.driverWith({ fail: 'PUT /machine-config=400:Invalid Memory Configuration: MemorySizeTooLarge' })
    const s = fc.spec()
    const err = await driver.start(s).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(VmmApiError)
    expect(err).toMatchObject({
      code: 'vmm_api_error',
      status: 400,
      step: 'firecracker.putMachineConfiguration',
      vmmMessage: 'Invalid Memory Configuration: MemorySizeTooLarge',
    })
    // Nothing was sent after the refused call.
    expect(mutations(await recorded(record)).at(-1)).toMatchObject({ path: '/machine-config' })
    await fc.expectNothingLeft(s)
  })

  it('onSpawn throwing, or an abort while waiting, kills the process', async () => {
    const { driver } = await fc.driverWith({ listenDelayMs: 3000 })
    const s = fc.spec()
    await expect(
      driver.start(s, {
        onSpawn: () => {
          throw new Error('could not persist')
        },
      }),
    ).rejects.toThrow('could not persist')
    await fc.expectNothingLeft(s)
    const ac = new AbortController()
    setTimeout(() => ac.abort(new Error('user gave up')), 300)
    await expect(driver.start(s, { signal: ac.signal })).rejects.toMatchObject({ code: 'aborted' })
    await fc.expectNothingLeft(s)
  })

  it('a second VMM on a runtime dir in use is a conflict', async () => {
    const { driver } = await fc.driverWith()
    const s = fc.spec()
    const vm = fc.track(await driver.start(s))
    await expect(driver.start(s)).rejects.toMatchObject({ code: 'conflict', field: 'runtimeDir' })
    expect(await vm.state()).toBe('running')
  })

  it('bad specs and accelerators are refused before anything is spawned', async () => {
    const { driver, record } = await fc.driverWith()
    const s = fc.spec()
    await expect(driver.start({ ...s, kernel: join(fc.dir, 'missing') })).rejects.toMatchObject({ code: 'invalid_input', field: 'kernel' })
    await expect(driver.start({ ...s, accel: 'tcg' })).rejects.toMatchObject({ code: 'accel_unavailable', field: 'accel' })
    await expect(fc.fresh({ kvmDevice: join(fc.dir, 'no-kvm') }).start(s)).rejects.toMatchObject({ code: 'accel_unavailable' })
    await expect(driver.start({ ...s, channels: [{ name: 'a', backend: { kind: 'file', path: '/tmp/a' } }] })).rejects.toMatchObject({
      code: 'not_supported',
      field: 'channels[0].backend.kind',
    })
    await expect(driver.start({ ...s, nics: [{ tap: 'hm-nonexist0', mac: '02:00:00:00:00:01' }] })).rejects.toMatchObject({ field: 'nics[0].tap' })
    await expect(driver.start({ ...s, vcpus: 40 })).rejects.toMatchObject({ field: 'vcpus' })
    expect(await recorded(record)).toEqual([])
    await fc.expectNothingLeft(s)
  })
})
