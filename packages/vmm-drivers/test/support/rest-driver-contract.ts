/**
 * The behaviour every REST driver (Cloud Hypervisor, Firecracker) owes its callers, checked end
 * to end against the driver's fake VMM. Supervision, readiness, attach, standby bookkeeping and
 * the failed-start cleanup live in the shared rest/ code, so one set of cases serves both; what a
 * VMM says on the wire and how its exits read is spelt out by each driver's test file, literally,
 * so that a wrong dialect cannot pass by agreeing with itself.
 */
import { readFile, truncate } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { VmmApiError, type DriverName, type ExitInfo, type LiveVm, type PersistedVm, type RestDialect, type RestVmmDriver, type VmEvent, type VmSpec } from '../../src/index.js'
import { restRuntime } from '../../src/testing.js'
import { mutations, recorded, type RecordedRequest } from './fake-vmm-harness.js'
import { lines, type RestDriverSuite } from './rest-driver-suite.js'

const MiB = 1024 * 1024

/** A request as the fake records it, without its verdicts. */
export interface WireCall {
  method: string
  path: string
  body?: unknown
}

/** A call the fake is told to refuse, and the step the driver must blame. */
export interface RefusedCall {
  method: string
  path: string
  status: number
  message: string
  step: string
}

export interface RestDriverContract<D extends RestVmmDriver> {
  suite: RestDriverSuite<D>
  dialect: RestDialect
  apiSocket: {
    /** The socket's file name in the runtime dir. */
    file: string
    /** How the VMM's command line names it. */
    argv(path: string): string[]
  }
  /** The GET that proves the API is up, and the one that reads the VM's state. */
  readiness: WireCall
  stateQuery: WireCall
  /** The paths a boot of the suite's spec sends, in order. */
  bootPaths: string[]
  calls: {
    pause: WireCall[]
    resume: WireCall[]
    gracefulStop: WireCall[]
    /** Empty where the VMM has no quit call and only a signal ends it. */
    quit: WireCall[]
    snapshot(dir: string): WireCall[]
    restore(dir: string, spec: VmSpec): WireCall[]
    /** Guest memory set to `totalBytes` on a VM of the suite's spec. */
    resize(totalBytes: number): WireCall
  }
  exits: {
    graceful: Partial<ExitInfo>
    afterStandby: Partial<ExitInfo>
    /** A guest that ignored the graceful stop. */
    forced: Partial<ExitInfo>
    /** The guest ended by itself. */
    unrequested: Partial<ExitInfo>
  }
  snapshot: {
    files: string[]
    /** Pinned besides the first disk, which every VMM reopens. */
    pinnedPaths(spec: VmSpec): Record<string, string>
    /** A file whose truncation must be noticed before spawning. */
    damaged: string
    /** Changes to a restore spec only this VMM refuses, besides moved disks and another shape. */
    refusedChanges(spec: VmSpec, dir: string): [Partial<VmSpec>, Record<string, unknown>][]
  }
  refusedBootCall: RefusedCall
  refusedRestoreCall: RefusedCall
  /** Specs only this VMM refuses, each before spawning anything. */
  refusedSpecs(dir: string): [Partial<VmSpec>, Record<string, unknown>][]
}

const ALL_DRIVERS: DriverName[] = ['qemu', 'cloud-hypervisor', 'firecracker', 'vz']

const invalid = (reqs: RecordedRequest[]) => reqs.filter((r) => r.errors.length > 0 || r.responseErrors.length > 0)
const failKnob = (c: RefusedCall) => `${c.method} ${c.path}=${c.status}:${c.message}`
const asWire = ({ method, path, body }: WireCall): WireCall => ({ method, path, ...(body !== undefined ? { body } : {}) })

/** Registers the shared cases under describes named after `name` (e.g. `FirecrackerDriver`). */
export function describeRestDriverContract<D extends RestVmmDriver>(name: string, c: RestDriverContract<D>): void {
  const { suite: t, dialect: d, calls } = c
  const swappedDisks = (s: VmSpec) => [s.disks?.[1], s.disks?.[0]].map((disk, i) => ({ ...disk, serial: i ? 'hm-rootfs' : 'hm-overlay' })) as VmSpec['disks']

  describe(`${name} against the fake ${d.label}: the REST driver contract`, { timeout: 60_000 }, () => {
    it('boots with exactly the planned calls, each valid, then vsock, pause/resume and a graceful stop', async () => {
      const { driver, record } = await t.driverWith()
      const s = t.spec()
      let spawned: PersistedVm | undefined
      const vm = t.track(await driver.start(s, { onSpawn: (p) => void (spawned = p) }))
      expect(vm.phase).toBe('running')
      expect(vm.driver).toBe(d.name)
      expect(spawned).toEqual(vm.persisted)
      const apiSocket = join(s.runtimeDir, c.apiSocket.file)
      expect(vm.persisted).toMatchObject({ driver: d.name, accel: 'kvm', controlSocket: apiSocket })
      expect(driver.isAlive(vm.persisted)).toBe(true)
      expect((await readFile(join(s.runtimeDir, 'vmm.pid'), 'utf8')).trim()).toBe(String(vm.pid))
      const argv = (await readFile(`/proc/${vm.pid}/cmdline`, 'utf8')).split('\0')
      const expectedArgv = c.apiSocket.argv(apiSocket)
      const at = argv.indexOf(expectedArgv[0] as string)
      expect(argv.slice(at, at + expectedArgv.length)).toEqual(expectedArgv)

      const reqs = await recorded(record)
      expect(invalid(reqs)).toEqual([])
      const planned = d.planBoot(s, restRuntime(s.runtimeDir, d.apiSocketName)).map(asWire)
      expect(mutations(reqs)).toEqual(planned)
      expect(planned.map((p) => p.path)).toEqual(c.bootPaths)
      expect(reqs[0]).toMatchObject({ ...c.readiness, status: 200 })
      // The start ends by asking the VMM itself whether the guest runs.
      expect(reqs.at(-1)).toMatchObject({ ...c.stateQuery, status: 200 })
      expect(await readFile(s.consoleLog, 'utf8')).toContain(`fake ${d.name}: guest booted`)

      const events: VmEvent[] = []
      vm.onEvent((e) => events.push(e))
      const agent = await vm.connectChannel('hypeman.agent')
      const greeting = lines(agent, 2)
      agent.write('hello\n')
      expect(await greeting).toEqual([`guest port 1024 on fake ${d.name}`, 'echo:hello'])
      agent.destroy()
      await expect(vm.connectChannel('hypeman.app')).rejects.toMatchObject({ code: 'invalid_input', field: 'name' })

      const paused = await vm.pause()
      expect(paused.phase).toBe('paused')
      expect(await paused.state()).toBe('paused')
      const running = await paused.resume()
      expect(await running.state()).toBe('running')

      const exit = await running.shutdown({ timeoutMs: 10_000 })
      expect(exit).toMatchObject(c.exits.graceful)
      expect(exit.forced).toBeUndefined()
      expect(events.map((e) => (e.type === 'state' ? e.state : e.type))).toEqual(['paused', 'running', 'exit'])
      const after = await recorded(record)
      expect(invalid(after)).toEqual([])
      expect(mutations(after).slice(planned.length)).toEqual([...calls.pause, ...calls.resume, ...calls.gracefulStop])
      expect(driver.isAlive(vm.persisted)).toBe(false)
      await t.expectNothingLeft(s)
      await expect(vm.state()).resolves.toBe('exited')
      await expect(vm.pause()).rejects.toMatchObject({ code: 'vmm_not_running' })
    })

    it('stands by into a directory and restores from it, the hotplugged memory with it', async () => {
      const { driver, record } = await t.driverWith()
      const s = t.spec()
      const vm = t.track(await driver.start(s))
      await vm.resizeMemory(512 * MiB)
      const snapDir = join(t.dir, `snap-${d.name}`)
      const snap = await vm.standby(snapDir)
      expect(snap.exit).toMatchObject(c.exits.afterStandby)
      expect(snap.bytes).toBeGreaterThanOrEqual(512 * MiB)
      const meta = JSON.parse(await readFile(join(snapDir, 'snapshot.json'), 'utf8'))
      expect(meta).toMatchObject({
        driver: d.name,
        format: 'hypeman-ts/rest-snapshot/1',
        pinnedPaths: { 'disks[0].path': t.files.disks[0], ...c.snapshot.pinnedPaths(s) },
      })
      expect(Object.keys(meta.files).sort()).toEqual(c.snapshot.files)
      const standbyCalls = [...calls.pause, ...calls.snapshot(snapDir), ...calls.quit]
      expect(mutations(await recorded(record)).slice(-standbyCalls.length)).toEqual(standbyCalls)
      await t.expectNothingLeft(s)

      const again = await t.driverWith()
      const restored = t.track(await again.driver.start({ ...s, restoreFrom: snapDir }))
      expect(restored.timings.restoreMs).toBeGreaterThan(0)
      expect(await restored.state()).toBe('running')
      // Growing to what came back with the snapshot sends nothing.
      expect(await restored.resizeMemory(512 * MiB)).toEqual({ memoryBytes: 512 * MiB })
      expect(await restored.resizeMemory(640 * MiB)).toEqual({ memoryBytes: 640 * MiB })
      const reqs = await recorded(again.record)
      expect(invalid(reqs)).toEqual([])
      expect(mutations(reqs)).toEqual([...calls.restore(snapDir, s), calls.resize(640 * MiB)])
      const agent = await restored.connectChannel('hypeman.agent')
      expect(await lines(agent, 1)).toEqual([`guest port 1024 on fake ${d.name}`])
      agent.destroy()
      await restored.kill()
    })

    it('stands by a paused VM without resuming it', async () => {
      const { driver, record } = await t.driverWith()
      const s = t.spec()
      const paused = await t.track(await driver.start(s)).pause()
      const snapDir = join(t.dir, `snap-${d.name}-paused`)
      expect((await paused.standby(snapDir)).exit).toMatchObject({ reason: 'standby' })
      const expected = [...calls.pause, ...calls.snapshot(snapDir), ...calls.quit]
      expect(mutations(await recorded(record)).slice(-expected.length)).toEqual(expected)
      await t.expectNothingLeft(s)
    })

    it('refuses a restore whose disks or shape moved, or whose snapshot is damaged, before spawning anything', async () => {
      const { driver, record } = await t.driverWith()
      const s = t.spec()
      const snapDir = join(t.dir, `snap-${d.name}-refused`)
      await t.track(await driver.start(s)).standby(snapDir)
      const before = (await recorded(record)).length
      const from = { ...s, restoreFrom: snapDir }
      await expect(driver.start({ ...from, disks: swappedDisks(s) })).rejects.toMatchObject({ code: 'invalid_input', field: 'restoreFrom' })
      for (const [change, refusal] of c.snapshot.refusedChanges(s, t.dir)) {
        await expect(driver.start({ ...from, ...change })).rejects.toMatchObject(refusal)
      }
      await expect(driver.start({ ...from, vcpus: 1 })).rejects.toMatchObject({ code: 'invalid_input', field: 'restoreFrom' })
      await truncate(join(snapDir, c.snapshot.damaged), 3)
      await expect(driver.start(from)).rejects.toMatchObject({ code: 'restore_failed', field: 'restoreFrom' })
      await expect(driver.start({ ...s, restoreFrom: join(t.dir, 'files') })).rejects.toMatchObject({ code: 'invalid_input', field: 'restoreFrom' })
      expect(await recorded(record)).toHaveLength(before)
      await t.expectNothingLeft(s)
    })

    it('attaches from a fresh driver in either state, and sees a SIGKILL from outside as killed', async () => {
      const { driver, record } = await t.driverWith()
      const s = t.spec()
      const first = await driver.start(s)
      const persisted = first.persisted
      await first.detach()
      await expect(first.state()).rejects.toMatchObject({ code: 'invalid_state' })

      const other = t.fresh()
      const vm = await other.attach(persisted)
      expect(vm.phase).toBe('running')
      const paused = await (vm as Extract<LiveVm, { phase: 'running' }>).pause()
      await paused.detach()
      const back = t.track(await other.attach(persisted))
      expect(back.phase).toBe('paused')
      expect(await back.state()).toBe('paused')

      process.kill(persisted.pid, 'SIGKILL')
      const exit = await back.waitForExit({ timeoutMs: 10_000 })
      // Not our child: the status is unknowable, and nobody here asked for the end.
      expect(exit).toMatchObject({ reason: 'killed', code: null })
      expect(other.isAlive(persisted)).toBe(false)
      await expect(other.attach(persisted)).rejects.toMatchObject({ code: 'vmm_not_running' })
      for (const foreign of ALL_DRIVERS.filter((n) => n !== d.name)) {
        await expect(other.attach({ ...persisted, driver: foreign })).rejects.toMatchObject({ code: 'invalid_input', field: 'driver' })
      }
      await other.destroy(persisted)
      await other.destroy(persisted)
      await t.expectNothingLeft(s)
      expect(invalid(await recorded(record))).toEqual([])
    })

    it('destroys by runtime dir a VMM that was never recorded', async () => {
      const { driver } = await t.driverWith()
      const s = t.spec()
      const vm = await driver.start(s)
      const pid = vm.pid
      await vm.detach()
      await t.fresh().destroy({ runtimeDir: s.runtimeDir })
      // Gone, or at most a zombie our test process has not reaped yet: never still running.
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
      expect(stat === '' || stat.includes(') Z')).toBe(true)
      await t.expectNothingLeft(s)
    })

    it('asks a paused guest to stop only after resuming it', async () => {
      const { driver, record } = await t.driverWith()
      const s = t.spec()
      const paused = await t.track(await driver.start(s)).pause()
      const exit = await paused.shutdown({ timeoutMs: 10_000 })
      expect(exit).toMatchObject(c.exits.graceful)
      expect(exit.forced).toBeUndefined()
      const expected = [...calls.pause, ...calls.resume, ...calls.gracefulStop]
      expect(mutations(await recorded(record)).slice(-expected.length)).toEqual(expected)
      await t.expectNothingLeft(s)
    })

    it('forces a guest that ignores the request to stop, and reads an exit the guest made by itself', async () => {
      const stubborn = await t.driverWith({ ignoreStop: true })
      const s = t.spec()
      const vm = t.track(await stubborn.driver.start(s))
      expect(await vm.shutdown({ timeoutMs: 500 })).toMatchObject({ ...c.exits.forced, forced: true })
      const asked = [...calls.gracefulStop, ...calls.quit]
      expect(mutations(await recorded(stubborn.record)).slice(-asked.length)).toEqual(asked)
      await t.expectNothingLeft(s)

      const byItself = await t.driverWith({ guestExitMs: 300 })
      const s2 = t.spec()
      const vm2 = t.track(await byItself.driver.start(s2))
      const exit2 = await vm2.waitForExit({ timeoutMs: 10_000 })
      expect(exit2).toMatchObject(c.exits.unrequested)
      expect(exit2.forced).toBeUndefined()
      await t.expectNothingLeft(s2)
    })
  })

  describe(`${name}: failed starts leave nothing behind`, { timeout: 60_000 }, () => {
    it('a VMM that dies at once: vmm_start_failed with its last words', async () => {
      const { driver } = await t.driverWith({ mode: 'exit-at-start' })
      const s = t.spec()
      const err = await driver.start(s).catch((e: unknown) => e)
      expect(err).toMatchObject({ code: 'vmm_start_failed' })
      expect((err as Error).message).toContain(`${d.label} exited with code 3`)
      expect((err as { details: { output: string } }).details.output).toMatch(/this fake was told to fail at start/)
      await t.expectNothingLeft(s)
    })

    it('a VMM that never serves its API: killed at the readiness deadline', async () => {
      const { driver } = await t.driverWith({ mode: 'never-listen' }, { readyTimeoutMs: 2500 })
      const s = t.spec()
      const err = await driver.start(s).catch((e: unknown) => e)
      expect(err).toMatchObject({ code: 'vmm_start_failed', step: 'api.ready' })
      expect((err as Error).message).toMatch(/not ready within 2500 ms.*the socket does not exist yet/s)
      await t.expectNothingLeft(s)
    })

    it('an API that is slow to appear is waited for', async () => {
      const { driver } = await t.driverWith({ listenDelayMs: 700 })
      const s = t.spec()
      const vm = t.track(await driver.start(s))
      expect(vm.timings.readyMs).toBeGreaterThanOrEqual(700)
      await vm.kill()
    })

    it("a boot call the VMM refuses: VmmApiError with the VMM's message, the process killed", async () => {
      const refused = c.refusedBootCall
      const { driver, record } = await t.driverWith({ fail: failKnob(refused) })
      const s = t.spec()
      const err = await driver.start(s).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(VmmApiError)
      const { message, ...where } = refused
      expect(err).toMatchObject({ code: 'vmm_api_error', ...where, vmmMessage: message })
      // Nothing was sent after the refused call.
      const sent = mutations(await recorded(record)).map((m) => m.path)
      expect(sent).toEqual(c.bootPaths.slice(0, c.bootPaths.indexOf(refused.path) + 1))
      await t.expectNothingLeft(s)
    })

    it('a restore the VMM refuses: VmmApiError, the process killed, the snapshot kept', async () => {
      const refused = c.refusedRestoreCall
      const { driver } = await t.driverWith()
      const s = t.spec()
      const snapDir = join(t.dir, `snap-${d.name}-restore-refused`)
      await t.track(await driver.start(s)).standby(snapDir)
      const refusing = await t.driverWith({ fail: failKnob(refused) })
      const err = await refusing.driver.start({ ...s, restoreFrom: snapDir }).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(VmmApiError)
      const { message, ...where } = refused
      expect(err).toMatchObject({ code: 'vmm_api_error', ...where, vmmMessage: message })
      const restorePaths = calls.restore(snapDir, s).map((m) => m.path)
      expect(mutations(await recorded(refusing.record)).map((m) => m.path)).toEqual(restorePaths.slice(0, restorePaths.indexOf(refused.path) + 1))
      await t.expectNothingLeft(s)
      // Untouched: a second attempt can still use it.
      const restored = t.track(await driver.start({ ...s, restoreFrom: snapDir }))
      expect(await restored.state()).toBe('running')
    })

    it('onSpawn throwing, or an abort while waiting, kills the process', async () => {
      const { driver } = await t.driverWith({ listenDelayMs: 3000 })
      const s = t.spec()
      await expect(
        driver.start(s, {
          onSpawn: () => {
            throw new Error('could not persist')
          },
        }),
      ).rejects.toThrow('could not persist')
      await t.expectNothingLeft(s)
      const ac = new AbortController()
      setTimeout(() => ac.abort(new Error('user gave up')), 300)
      await expect(driver.start(s, { signal: ac.signal })).rejects.toMatchObject({ code: 'aborted' })
      await t.expectNothingLeft(s)
    })

    it('a second VMM on a runtime dir in use is a conflict', async () => {
      const { driver } = await t.driverWith()
      const s = t.spec()
      const vm = t.track(await driver.start(s))
      await expect(driver.start(s)).rejects.toMatchObject({ code: 'conflict', field: 'runtimeDir' })
      expect(await vm.state()).toBe('running')
    })

    it('bad specs and accelerators are refused before anything is spawned', async () => {
      const { driver, record } = await t.driverWith()
      const s = t.spec()
      await expect(driver.start({ ...s, kernel: join(t.dir, 'missing') })).rejects.toMatchObject({ code: 'invalid_input', field: 'kernel' })
      await expect(driver.start({ ...s, accel: 'tcg' })).rejects.toMatchObject({ code: 'accel_unavailable', field: 'accel' })
      await expect(t.fresh({ kvmDevice: join(t.dir, 'no-kvm') }).start(s)).rejects.toMatchObject({ code: 'accel_unavailable' })
      await expect(driver.start({ ...s, channels: [{ name: 'a', backend: { kind: 'file', path: '/tmp/a' } }] })).rejects.toMatchObject({
        code: 'not_supported',
        field: 'channels[0].backend.kind',
      })
      await expect(driver.start({ ...s, nics: [{ tap: 'hm-nonexist0', mac: '02:00:00:00:00:01' }] })).rejects.toMatchObject({ field: 'nics[0].tap' })
      for (const [change, refusal] of c.refusedSpecs(t.dir)) {
        await expect(driver.start({ ...s, ...change })).rejects.toMatchObject(refusal)
      }
      expect(await recorded(record)).toEqual([])
      await t.expectNothingLeft(s)
    })
  })
}
