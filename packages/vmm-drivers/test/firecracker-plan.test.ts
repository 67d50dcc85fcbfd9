/**
 * Firecracker's planned API calls against the vendored spec (specs/firecracker-swagger.yaml):
 * every call of every lifecycle operation validates (with unknown fields refused), and the boot
 * sequence is the one Firecracker documents. No Firecracker runs here.
 */
import { describe, expect, it } from 'vitest'
import { firecrackerDialect as fc, FIRECRACKER_MACHINE_CMDLINE, validateVmSpec, type ApiCall, type VmSpec } from '../src/index.js'
import { dialectPlanTest } from './support/dialect-plan.js'
import { fullSpec, minimalSpec, MiB, specTable } from './support/specs.js'

const plan = dialectPlanTest(fc)
const { rt, expectValid } = plan

/** Firecracker's documented pre-boot order; the hotplug region and serial sit after vsock, before the start. */
const BOOT_ORDER = ['/boot-source', '/drives/{drive_id}', '/machine-config', '/network-interfaces/{iface_id}', '/vsock', '/hotplug/memory', '/serial', '/actions']

describe('the contract checker itself', () => {
  it('refuses misspelt fields, wrong types, unknown paths and wrong methods', () => {
    const ok: ApiCall = { op: 'x', method: 'PUT', path: '/drives/disk0', body: { drive_id: 'disk0', is_root_device: false, path_on_host: '/a', is_read_only: true } }
    expect(plan.contract.checkRequest(ok).ok).toBe(true)
    expect(plan.contract.checkRequest({ ...ok, body: { drive_id: 'disk0', is_root_device: false, is_readonly: true } }).errors.join()).toMatch(/is_readonly/)
    expect(plan.contract.checkRequest({ ...ok, body: { drive_id: 'disk0', is_root_device: 'no' } }).ok).toBe(false)
    expect(plan.contract.checkRequest({ ...ok, body: { is_root_device: false } }).ok).toBe(false)
    expect(plan.contract.checkRequest({ ...ok, body: undefined }).errors).toEqual(['a request body is required'])
    expect(plan.contract.checkRequest({ ...ok, path: '/drive/disk0' }).ok).toBe(false)
    expect(plan.contract.checkRequest({ ...ok, method: 'GET' }).errors.join()).toMatch(/only PUT, PATCH/)
    expect(plan.contract.checkRequest({ method: 'PUT', path: '/machine-config', body: { vcpu_count: 33, mem_size_mib: 128 } }).ok).toBe(false)
    expect(plan.contract.checkRequest({ method: 'PUT', path: '/actions', body: { action_type: 'Reboot' } }).ok).toBe(false)
    // Integer formats are ranges: int64 refuses what JSON cannot carry exactly.
    expect(plan.contract.checkRequest({ method: 'PUT', path: '/vsock', body: { guest_cid: 3.5, uds_path: '/v' } }).ok).toBe(false)
  })

  it('checks responses against their documented schema', () => {
    expect(plan.contract.checkResponse('GET', '/', 200, { app_name: 'Firecracker', id: 'x', state: 'Running', vmm_version: '1.0' }).ok).toBe(true)
    expect(plan.contract.checkResponse('GET', '/', 200, { id: 'x', state: 'Running' }).ok).toBe(false)
    expect(plan.contract.checkResponse('PUT', '/actions', 204, undefined).ok).toBe(true)
    expect(plan.contract.checkResponse('PUT', '/actions', 400, { fault_message: 'bad' }).ok).toBe(true)
  })
})

describe('boot plan', () => {
  it.each(specTable)('%s: every call validates, in the documented order, ending with InstanceStart', (_name, spec) => {
    const calls = plan.validBoot(spec)
    const templates = calls.map((c) => plan.contract.find(c.method, c.path)?.op.template as string)
    const ranks = templates.map((t) => BOOT_ORDER.indexOf(t))
    expect(ranks.every((r) => r >= 0)).toBe(true)
    expect(ranks).toEqual([...ranks].sort((a, b) => a - b))
    expect(templates[0]).toBe('/boot-source')
    expect(calls.at(-1)).toEqual({ op: 'createSyncAction', method: 'PUT', path: '/actions', body: { action_type: 'InstanceStart' } })
    expect(templates.filter((t) => t === '/drives/{drive_id}')).toHaveLength(spec.disks?.length ?? 0)
    expect(templates.filter((t) => t === '/network-interfaces/{iface_id}')).toHaveLength(spec.nics?.length ?? 0)
    expect(templates.includes('/vsock')).toBe(spec.vsock !== undefined)
    expect(templates.includes('/hotplug/memory')).toBe(spec.hotplugMemory !== undefined)
  })

  it('maps the full spec field by field', () => {
    const calls = fc.planBoot(fullSpec, rt(fullSpec))
    const byPath = (p: string) => calls.filter((c) => c.path === p).map((c) => c.body)
    expect(byPath('/boot-source')).toEqual([
      {
        kernel_image_path: '/k/vmlinux',
        initrd_path: '/k/initrd.cpio',
        // The caller's console= replaces the machine's; the rest of the machine part stays in front.
        boot_args: `${FIRECRACKER_MACHINE_CMDLINE.replace('console=ttyS0 ', '')} console=hvc0 quiet hm.x="a b"`,
      },
    ])
    expect(calls.filter((c) => c.path.startsWith('/drives/')).map((c) => [c.path, c.body])).toEqual([
      ['/drives/disk0', { drive_id: 'disk0', path_on_host: '/d/rootfs.ext4', is_root_device: false, is_read_only: true }],
      [
        '/drives/disk1',
        { drive_id: 'disk1', path_on_host: '/d/overlay.ext4', is_root_device: false, is_read_only: false, rate_limiter: { bandwidth: { size: 100_000_000, refill_time: 1000 } } },
      ],
      [
        '/drives/disk2',
        {
          drive_id: 'disk2',
          path_on_host: '/d/config.ext4',
          is_root_device: false,
          is_read_only: true,
          rate_limiter: { bandwidth: { size: 1_000_000, refill_time: 1000 }, ops: { size: 500, refill_time: 1000 } },
        },
      ],
    ])
    expect(byPath('/machine-config')).toEqual([{ vcpu_count: 2, mem_size_mib: 512, smt: false }])
    expect(byPath('/network-interfaces/eth0')).toEqual([{ iface_id: 'eth0', host_dev_name: 'hm-abc', guest_mac: '02:00:0a:00:00:05' }])
    expect(byPath('/network-interfaces/eth1')).toEqual([{ iface_id: 'eth1', host_dev_name: 'hm-def', guest_mac: '02:00:0a:00:00:06' }])
    expect(byPath('/vsock')).toEqual([{ guest_cid: 42, uds_path: '/r/full/vsock.sock' }])
    expect(byPath('/hotplug/memory')).toEqual([{ total_size_mib: 512, slot_size_mib: 128, block_size_mib: 2 }])
    expect(byPath('/serial')).toEqual([{ serial_out_path: '/i/console.log' }])
  })

  it('splits the hotplug region into the requested number of slots', () => {
    const spec = { ...minimalSpec, hotplugMemory: { maxBytes: 128 * MiB + 1024 * MiB, slots: 4 } }
    expect(fc.planBoot(spec, rt(spec)).find((c) => c.path === '/hotplug/memory')?.body).toEqual({ total_size_mib: 1024, slot_size_mib: 256, block_size_mib: 2 })
  })

  it('puts the API socket and a Firecracker-safe id on the command line', () => {
    expect(fc.argv(fullSpec, rt(fullSpec))).toEqual(['--api-sock', '/r/full/firecracker.sock', '--id', 'inst-full-1'])
    expect(fc.argv(minimalSpec, rt(minimalSpec))).toEqual(['--api-sock', '/r/a/firecracker.sock'])
  })
})

describe('what Firecracker cannot do is refused, naming the field', () => {
  const cases: [string, Partial<VmSpec>, string, string][] = [
    ['33 vCPUs', { vcpus: 33 }, 'vcpus', 'invalid_input'],
    ['a qcow2 drive', { disks: [{ path: '/a', serial: 's', format: 'qcow2' }] }, 'disks[0].format', 'not_supported'],
    ['a hotplug region off the 128 MiB slot size', { hotplugMemory: { maxBytes: 128 * MiB + 100 * MiB } }, 'hotplugMemory.maxBytes', 'invalid_input'],
    ['slots smaller than 128 MiB', { hotplugMemory: { maxBytes: 128 * MiB + 256 * MiB, slots: 4 } }, 'hotplugMemory.slots', 'invalid_input'],
  ]
  it.each(cases)('%s', (_name, patch, field, code) => {
    const spec = { ...minimalSpec, ...patch }
    expect(() => fc.checkSpec(spec, rt(spec))).toThrow(expect.objectContaining({ field, code }))
  })

  it('has no VFIO: passthrough devices are refused by the shared validation with its capabilities', () => {
    const spec: VmSpec = { ...minimalSpec, passthrough: [{ sysfsPath: '/sys/bus/pci/devices/0000:01:00.0', pciAddress: '0000:01:00.0' }] }
    expect(fc.capabilities.passthrough).toBe(false)
    expect(() => validateVmSpec(spec, [], { vsock: true, passthrough: fc.capabilities.passthrough })).toThrow(expect.objectContaining({ code: 'not_supported', field: 'passthrough' }))
  })

  it('has no named channels: channels are refused by the shared validation with its capabilities', () => {
    const spec: VmSpec = { ...minimalSpec, channels: [{ name: 'a', backend: { kind: 'socket', path: '/a.sock' } }] }
    expect(() => validateVmSpec(spec, [], { vsock: true, channelBackends: fc.capabilities.channelBackends })).toThrow(
      expect.objectContaining({ code: 'not_supported', field: 'channels[0].backend.kind' }),
    )
  })
})

describe('lifecycle plans', () => {
  it('pause, resume, snapshot, graceful stop and memory resize validate', () => {
    expectValid(fc.planPause())
    expectValid(fc.planResume())
    expect(fc.planPause()[0]?.body).toEqual({ state: 'Paused' })
    expect(fc.planResume()[0]?.body).toEqual({ state: 'Resumed' })
    const snap = fc.planSnapshot('/s/x')
    expectValid(snap)
    expect(snap).toEqual([
      { op: 'createSnapshot', method: 'PUT', path: '/snapshot/create', body: { snapshot_type: 'Full', snapshot_path: '/s/x/vmstate', mem_file_path: '/s/x/memory' } },
    ])
    expectValid(fc.planGracefulShutdown())
    expect(fc.planGracefulShutdown()[0]?.body).toEqual({ action_type: 'SendCtrlAltDel' })
    expect(fc.planQuit()).toEqual([])
    const resize = fc.planResizeMemory(fullSpec, 768 * MiB)
    expectValid(resize)
    expect(resize[0]?.body).toEqual({ requested_size_mib: 256 })
    expectValid([fc.stateCall, fc.memoryCall, fc.readiness])
  })

  it.each(specTable)('%s: restore is one snapshot/load that validates, with TAP and vsock overrides', (_name, spec) => {
    const calls = fc.planRestore(spec, rt(spec), '/s/x')
    expectValid(calls)
    expect(calls).toHaveLength(1)
    const body = calls[0]?.body as Record<string, unknown>
    expect(body).toMatchObject({ snapshot_path: '/s/x/vmstate', mem_backend: { backend_type: 'File', backend_path: '/s/x/memory' }, resume_vm: true })
    expect(body.network_overrides).toEqual(spec.nics?.map((n, i) => ({ iface_id: `eth${i}`, host_dev_name: n.tap })))
    expect(body.vsock_override).toEqual(spec.vsock ? { uds_path: `${spec.runtimeDir}/vsock.sock` } : undefined)
  })

  it('reads state and memory from bodies shaped as the spec says', () => {
    const info = (state: string) => ({ app_name: 'Firecracker', id: 'a', state, vmm_version: '1.17.0' })
    for (const [state, ours] of [
      ['Running', 'running'],
      ['Paused', 'paused'],
      ['Not started', 'paused'],
    ] as const) {
      expect(plan.contract.checkResponse('GET', '/', 200, info(state)).ok).toBe(true)
      expect(fc.parseState(info(state))).toBe(ours)
    }
    expect(() => fc.parseState({ state: 'Exploded' })).toThrow(/unknown state/)
    const mem = { total_size_mib: 512, slot_size_mib: 128, block_size_mib: 2, plugged_size_mib: 256, requested_size_mib: 256 }
    expect(plan.contract.checkResponse('GET', '/hotplug/memory', 200, mem).ok).toBe(true)
    expect(fc.parseMemory(mem, fullSpec)).toBe(768 * MiB)
  })

  it('reads an exit nobody asked for: a clean exit is a guest reset', () => {
    expect(fc.unrequestedExit({ code: 0, signal: null })).toEqual({ reason: 'reboot', vmmReason: 'guest-reset' })
    expect(fc.unrequestedExit({ code: null, signal: 'SIGKILL' })).toEqual({ reason: 'killed' })
    expect(fc.unrequestedExit({ code: null, signal: null })).toEqual({ reason: 'killed' })
  })
})
