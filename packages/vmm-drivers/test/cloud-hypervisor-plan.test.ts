/**
 * Cloud Hypervisor's planned API calls against the vendored spec
 * (specs/cloud-hypervisor-openapi.yaml): every call of every lifecycle operation validates (with
 * unknown fields refused), in the documented order. No Cloud Hypervisor runs here.
 */
import { describe, expect, it } from 'vitest'
import { cloudHypervisorDialect as ch, CLOUD_HYPERVISOR_MACHINE_CMDLINE, type ApiCall, type VmSpec } from '../src/index.js'
import { dialectPlanTest } from './support/dialect-plan.js'
import { fullSpec, minimalSpec, MiB, specTable } from './support/specs.js'

const plan = dialectPlanTest(ch)
const { rt, expectValid } = plan
/** Cloud Hypervisor has no slot count; the shared table's slotted spec is checked apart. */
const table = specTable.filter(([, s]) => s.hotplugMemory?.slots === undefined)

const templates = (calls: ApiCall[]) => calls.map((c) => `${c.method} ${c.path}`)

describe('the contract checker itself', () => {
  it('knows the API base path and refuses misspelt fields, wrong types and unknown paths', () => {
    expect(plan.contract.basePath).toBe('/api/v1')
    const ok: ApiCall = { op: 'x', method: 'PUT', path: '/vm.resize', body: { desired_ram: 1024 } }
    expect(plan.contract.checkRequest(ok).ok).toBe(true)
    expect(plan.contract.checkRequest({ ...ok, body: { desired_memory: 1024 } }).errors.join()).toMatch(/desired_memory/)
    expect(plan.contract.checkRequest({ ...ok, body: { desired_ram: '1G' } }).ok).toBe(false)
    expect(plan.contract.checkRequest({ ...ok, path: '/vm.grow' }).ok).toBe(false)
    expect(plan.contract.checkRequest({ method: 'PUT', path: '/vm.create', body: { cpus: { boot_vcpus: 1, max_vcpus: 1 } } }).errors.join()).toMatch(/payload/)
    expect(plan.contract.checkRequest({ method: 'PUT', path: '/vm.boot', body: {} }).errors.join()).toMatch(/takes no request body/)
    const badDisk = { payload: { kernel: '/k' }, disks: [{ path: '/a', image_type: 'raw' }] }
    expect(plan.contract.checkRequest({ method: 'PUT', path: '/vm.create', body: badDisk }).ok).toBe(false)
  })
})

describe('boot plan', () => {
  it.each(table)('%s: vm.create with the whole config, then vm.boot, both valid', (_name, spec) => {
    const calls = plan.validBoot(spec)
    expect(templates(calls)).toEqual(['PUT /vm.create', 'PUT /vm.boot'])
    const config = calls[0]?.body as Record<string, unknown[]>
    expect(config.disks?.length ?? 0).toBe(spec.disks?.length ?? 0)
    expect(config.net?.length ?? 0).toBe(spec.nics?.length ?? 0)
    expect('vsock' in config).toBe(spec.vsock !== undefined)
  })

  it('maps the full spec field by field', () => {
    const [create] = ch.planBoot(fullSpec, rt(fullSpec))
    expect(create?.body).toEqual({
      cpus: { boot_vcpus: 2, max_vcpus: 2 },
      memory: { size: 512 * MiB, hotplug_size: 512 * MiB, hotplug_method: 'Acpi' },
      payload: {
        kernel: '/k/vmlinux',
        initramfs: '/k/initrd.cpio',
        cmdline: `${CLOUD_HYPERVISOR_MACHINE_CMDLINE.replace('console=ttyS0 ', '')} console=hvc0 quiet hm.x="a b"`,
      },
      disks: [
        { path: '/d/rootfs.ext4', readonly: true, serial: 'hm-rootfs', id: 'disk0', image_type: 'Raw' },
        { path: '/d/overlay.ext4', readonly: false, serial: 'hm-overlay', id: 'disk1', image_type: 'Raw', rate_limiter_config: { bandwidth: { size: 100_000_000, refill_time: 1000 } } },
        {
          path: '/d/config.ext4',
          readonly: true,
          serial: 'hm-config',
          id: 'disk2',
          image_type: 'Raw',
          rate_limiter_config: { bandwidth: { size: 1_000_000, refill_time: 1000 }, ops: { size: 500, refill_time: 1000 } },
        },
      ],
      net: [
        { tap: 'hm-abc', mac: '02:00:0a:00:00:05', id: 'net0' },
        { tap: 'hm-def', mac: '02:00:0a:00:00:06', id: 'net1' },
      ],
      serial: { mode: 'File', file: '/i/console.log' },
      console: { mode: 'Off' },
      vsock: { cid: 42, socket: '/r/full/vsock.sock', id: 'vsock0' },
    })
  })

  it('names qcow2 images explicitly instead of letting the VMM probe', () => {
    const spec: VmSpec = { ...minimalSpec, disks: [{ path: '/d/a.qcow2', serial: 'q', format: 'qcow2' }] }
    const [create] = ch.planBoot(spec, rt(spec))
    expectValid([create as ApiCall])
    expect((create?.body as { disks: unknown[] }).disks[0]).toMatchObject({ image_type: 'Qcow2' })
  })

  it('passes PCI functions and mdevs as devices by their sysfs dirs, valid against the spec', () => {
    const spec: VmSpec = {
      ...minimalSpec,
      passthrough: [{ sysfsPath: '/sys/bus/pci/devices/0000:01:00.0', pciAddress: '0000:01:00.0' }, { sysfsPath: '/sys/bus/mdev/devices/u-1' }],
    }
    const [create] = ch.planBoot(spec, rt(spec))
    expectValid([create as ApiCall])
    expect((create?.body as { devices: unknown[] }).devices).toEqual([
      { path: '/sys/bus/pci/devices/0000:01:00.0', id: 'hostdev0' },
      { path: '/sys/bus/mdev/devices/u-1', id: 'hostdev1' },
    ])
    expect(ch.pinnedPaths(spec, rt(spec))).toMatchObject({ 'passthrough[1].sysfsPath': '/sys/bus/mdev/devices/u-1' })
  })

  it('puts the API socket on the command line as its key=value form', () => {
    expect(ch.argv(fullSpec, rt(fullSpec))).toEqual(['--api-socket', 'path=/r/full/ch.sock'])
  })
})

describe('what Cloud Hypervisor cannot do is refused, naming the field', () => {
  it.each([
    ['hotplug slots', { hotplugMemory: { maxBytes: 1024 * MiB, slots: 4 } }, 'hotplugMemory.slots', 'not_supported'],
    ['a hotplug region off 128 MiB', { hotplugMemory: { maxBytes: 128 * MiB + 64 * MiB } }, 'hotplugMemory.maxBytes', 'invalid_input'],
    ['a comma in the runtime dir', { runtimeDir: '/r/a,b' }, 'runtimeDir', 'invalid_input'],
  ] as [string, Partial<VmSpec>, string, string][])('%s', (_name, patch, field, code) => {
    const spec = { ...minimalSpec, ...patch }
    expect(() => ch.checkSpec(spec, rt(spec))).toThrow(expect.objectContaining({ field, code }))
  })
})

describe('lifecycle plans', () => {
  it('pause, resume, snapshot, power button, quit, resize and restore validate, in the documented order', () => {
    expect(templates(ch.planPause())).toEqual(['PUT /vm.pause'])
    expect(templates(ch.planResume())).toEqual(['PUT /vm.resume'])
    const lifecycle = [
      ...ch.planPause(),
      ...ch.planResume(),
      ...ch.planSnapshot('/s/x'),
      ...ch.planQuit(),
      ...ch.planGracefulShutdown(),
      ...ch.planResizeMemory(fullSpec, 768 * MiB),
      ...ch.planRestore(fullSpec, rt(fullSpec), '/s/x'),
      ch.stateCall,
      ch.memoryCall,
      ch.readiness,
    ]
    expectValid(lifecycle)
    expect(ch.planSnapshot('/s/x')).toEqual([{ op: 'vm.snapshot', method: 'PUT', path: '/vm.snapshot', body: { destination_url: 'file:///s/x' } }])
    expect(templates(ch.planQuit())).toEqual(['PUT /vmm.shutdown'])
    expect(templates(ch.planGracefulShutdown())).toEqual(['PUT /vm.power-button'])
    expect(ch.planResizeMemory(fullSpec, 768 * MiB)[0]?.body).toEqual({ desired_ram: 768 * MiB })
    // A restored VM comes back paused: restore, then resume.
    expect(ch.planRestore(fullSpec, rt(fullSpec), '/s/x')).toEqual([
      { op: 'vm.restore', method: 'PUT', path: '/vm.restore', body: { source_url: 'file:///s/x' } },
      { op: 'resumeVM', method: 'PUT', path: '/vm.resume' },
    ])
  })

  it('reads state and memory from bodies shaped as the spec says', () => {
    const config = ch.planBoot(fullSpec, rt(fullSpec))[0]?.body
    for (const [state, ours] of [
      ['Running', 'running'],
      ['Paused', 'paused'],
      ['Created', 'paused'],
      ['Shutdown', 'shutdown'],
    ] as const) {
      const info = { config, state }
      expect(plan.contract.checkResponse('GET', '/vm.info', 200, info).errors).toEqual([])
      expect(ch.parseState(info)).toBe(ours)
    }
    expect(() => ch.parseState({ state: 'Gone' })).toThrow(/unknown state/)
    const grown = { config: { ...(config as object), memory: { size: 768 * MiB, hotplug_size: 512 * MiB } }, state: 'Running' }
    expect(ch.parseMemory(grown, fullSpec)).toBe(768 * MiB)
    expect(ch.parseMemory({ config: { memory: { size: 512 * MiB, hotplugged_size: 128 * MiB } } }, fullSpec)).toBe(640 * MiB)
  })

  it('pins the paths a restore reopens from the saved config', () => {
    expect(ch.pinnedPaths(fullSpec, rt(fullSpec))).toEqual({
      consoleLog: '/i/console.log',
      'disks[0].path': '/d/rootfs.ext4',
      'disks[1].path': '/d/overlay.ext4',
      'disks[2].path': '/d/config.ext4',
      'nics[0].tap': 'hm-abc',
      'nics[1].tap': 'hm-def',
      'vsock socket (runtimeDir)': '/r/full/vsock.sock',
    })
  })

  it('reads an exit nobody asked for: a clean exit is a guest poweroff', () => {
    expect(ch.unrequestedExit({ code: 0, signal: null })).toEqual({ reason: 'poweroff' })
    expect(ch.unrequestedExit({ code: 1, signal: null })).toEqual({ reason: 'killed' })
  })
})
