/**
 * What the REST driver tests (firecracker-driver, cloud-hypervisor-driver) share: a scratch dir
 * with fixture files, drivers that spawn our fake VMM and check every call against the API spec
 * before sending it, a spec builder with a fresh runtime dir per VM, and the cleanup that kills
 * whatever a test left running. `restDriverSuite` registers the vitest hooks of the file that
 * calls it, so it must be called at the top level of a test file.
 */
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, expect } from 'vitest'
import type { LiveVm, RestDriverOptions, RestVmmDriver, VmSpec } from '../../src/index.js'
import { Contract, type SpecName } from './contract.js'
import { fakeVmm, fixtureFiles, mutations, processesMentioning, recorded, type FakeVmmKnobs } from './fake-vmm-harness.js'

const MiB = 1024 * 1024

export interface RestDriverSuite<D extends RestVmmDriver> {
  /** The scratch dir of the file (valid once its beforeAll ran). */
  readonly dir: string
  readonly contract: Contract
  readonly files: Awaited<ReturnType<typeof fixtureFiles>>
  /**
   * A VM spec on the fixture files, with its own runtime dir (destroyed after the file). No NICs:
   * a TAP must exist for `checkSpecFiles`, and the fake never opens one anyway.
   */
  spec(extra?: Partial<VmSpec>): VmSpec
  /** A driver whose binary is a fake VMM with these knobs; `record` is where the fake logs requests. */
  driverWith(knobs?: FakeVmmKnobs, opts?: RestDriverOptions): Promise<{ driver: D; record: string }>
  /** A driver on no fake (for attach and destroy, which never spawn). */
  fresh(opts?: RestDriverOptions): D
  /**
   * A running VM on a fresh fake, and the changing calls it was sent after its boot, every request
   * checked valid first: for tests of one operation, where the boot's calls are only noise.
   */
  startRunning(extra?: Partial<VmSpec>): Promise<{ vm: Awaited<ReturnType<D['start']>>; sentSinceBoot(): Promise<ReturnType<typeof mutations>> }>
  /** Kills the VM after the test, whatever the test did. */
  track<T extends LiveVm>(vm: T): T
  /** No process carries the runtime dir's mark, and its sockets and pidfile are gone. */
  expectNothingLeft(s: VmSpec): Promise<void>
}

export function restDriverSuite<D extends RestVmmDriver>(flavor: SpecName, make: (opts: RestDriverOptions) => D): RestDriverSuite<D> {
  const short = flavor === 'firecracker' ? 'fc' : 'ch'
  let dir = ''
  let contract: Contract | undefined
  let files: Awaited<ReturnType<typeof fixtureFiles>> | undefined
  const live: LiveVm[] = []
  const runtimeDirs: string[] = []
  let names = 0
  const ready = <T>(v: T | undefined): T => {
    if (v === undefined) throw new Error('restDriverSuite: used before its beforeAll ran')
    return v
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), `hm-${short}-`))
    contract = await Contract.load(flavor)
    files = await fixtureFiles(join(dir, 'files'))
  })

  afterEach(async () => {
    for (const vm of live.splice(0)) await vm.kill().catch(() => {})
  })

  afterAll(async () => {
    const driver = make({})
    for (const r of runtimeDirs) await driver.destroy({ runtimeDir: r })
    for (const r of runtimeDirs) expect(await processesMentioning(driver.runtime(r).apiSocket)).toEqual([])
    await rm(dir, { recursive: true, force: true })
  })

  const suite: RestDriverSuite<D> = {
    get dir() {
      return ready(dir || undefined)
    },
    get contract() {
      return ready(contract)
    },
    get files() {
      return ready(files)
    },

    spec(extra = {}) {
      const f = suite.files
      const runtimeDir = join(suite.dir, `r${names++}`)
      runtimeDirs.push(runtimeDir)
      return {
        name: `${short}-${names}`,
        kernel: f.kernel,
        initrd: f.initrd,
        cmdline: 'quiet',
        vcpus: 2,
        memoryBytes: 256 * MiB,
        hotplugMemory: { maxBytes: 768 * MiB },
        disks: [
          { path: f.disks[0] as string, serial: 'hm-rootfs', readonly: true },
          { path: f.disks[1] as string, serial: 'hm-overlay', throttle: { bytesPerSec: 50_000_000 } },
        ],
        vsock: { cid: 7, ports: { 'hypeman.agent': 1024 } },
        consoleLog: join(runtimeDir, 'console.log'),
        runtimeDir,
        ...extra,
      }
    },

    async driverWith(knobs = {}, opts = {}) {
      const fake = await fakeVmm(join(suite.dir, 'bin'), flavor, knobs)
      const c = suite.contract
      const driver = make({ binary: fake.binary, kvmDevice: suite.files.kvm, checkCall: (call) => c.assertRequest(call), ...opts })
      return { driver, record: fake.record }
    },

    fresh(opts = {}) {
      return make({ kvmDevice: suite.files.kvm, ...opts })
    },

    async startRunning(extra) {
      const { driver, record } = await suite.driverWith()
      const vm = suite.track((await driver.start(suite.spec(extra))) as Awaited<ReturnType<D['start']>>)
      const booted = (await recorded(record)).length
      return {
        vm,
        async sentSinceBoot() {
          const reqs = await recorded(record)
          expect(reqs.filter((r) => r.errors.length > 0 || r.responseErrors.length > 0)).toEqual([])
          return mutations(reqs.slice(booted))
        },
      }
    },

    track(vm) {
      live.push(vm)
      return vm
    },

    async expectNothingLeft(s) {
      const rt = make({}).runtime(s.runtimeDir)
      expect(await processesMentioning(rt.apiSocket)).toEqual([])
      for (const f of [rt.apiSocket, rt.vsockSocket, rt.pidFile]) expect(existsSync(f), f).toBe(false)
    },
  }
  return suite
}

/** The first `count` lines a socket receives (the fake guest greets, then echoes). */
export function lines(socket: NodeJS.ReadableStream, count: number): Promise<string[]> {
  return new Promise((resolve) => {
    let buf = ''
    const onData = (d: Buffer) => {
      buf += d.toString()
      const got = buf.split('\n').filter((l) => l !== '')
      if (got.length >= count) {
        socket.off('data', onData)
        resolve(got.slice(0, count))
      }
    }
    socket.on('data', onData)
  })
}
