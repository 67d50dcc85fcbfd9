/**
 * Firecracker as data: its command line and, for each lifecycle operation, the ordered API calls
 * (`specs/firecracker-swagger.yaml`). Pure functions, so the contract tests can check every call
 * against the spec and its order against Firecracker's documented boot sequence: boot-source,
 * drives, machine-config, network-interfaces, vsock, (hotplug memory, serial), then
 * `InstanceStart`. A restore is `snapshot/load` alone, on a fresh process, since Firecracker
 * accepts nothing else before it (logger and metrics aside).
 *
 * What the guest sees: virtio-mmio devices announced on the kernel command line (Firecracker
 * appends `virtio_mmio.device=` parameters), so the kernel needs CONFIG_VIRTIO_MMIO=y and
 * CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y built in. Drives have no serial: the guest sees them as
 * /dev/vda, vdb, ... in `disks` order. The console is ttyS0.
 */
import { NotSupportedError, ValidationError } from '@hypeman-ts/common'
import { composeCmdline } from '../cmdline.js'
import type { ProcessExit } from '../process.js'
import type { DriverCapabilities, VmSpec, VmState } from '../types.js'
import type { ApiCall } from '../rest/client.js'
import type { RestDialect, RestRuntime } from '../rest/dialect.js'

const MiB = 1024 * 1024

export const FIRECRACKER_CAPABILITIES: DriverCapabilities = Object.freeze({
  pause: true,
  snapshot: true,
  hotplugMemory: true,
  memoryFile: false,
  diskThrottle: true,
  diskSerial: false,
  namedChannels: false,
  channelBackends: Object.freeze([] as const),
  agentTransport: 'vsock',
  accels: Object.freeze(['kvm'] as const),
  gracefulShutdown: 'ctrl-alt-del',
  memoryShrink: true,
  // Firecracker has no VFIO device in its API.
  passthrough: false,
  diskHotplug: false,
})

/**
 * Firecracker's recommended x86 line: the keyboard controller stays (Ctrl+Alt+Del is how the
 * host asks for a stop) but without probing, `reboot=k` resets through it, which ends
 * Firecracker, and `panic=1` turns a panic into that reset. `pci=off`: devices are virtio-mmio.
 */
export const FIRECRACKER_MACHINE_CMDLINE = [
  'console=ttyS0',
  'reboot=k',
  'panic=1',
  'pci=off',
  'i8042.noaux',
  'i8042.nomux',
  'i8042.nopnp',
  'i8042.dumbkbd',
  '8250.nr_uarts=1',
].join(' ')

/** Firecracker's vCPU limit (MachineConfiguration.vcpu_count maximum). */
export const FIRECRACKER_MAX_VCPUS = 32
/** virtio-mem: memory is plugged in slots (128 MiB by default) of 2 MiB blocks. */
export const FIRECRACKER_HOTPLUG_SLOT_MIB = 128
export const FIRECRACKER_HOTPLUG_BLOCK_MIB = 2

/** The files of a Firecracker snapshot (names are ours; Firecracker writes what it is told). */
export const FIRECRACKER_SNAPSHOT_FILES = { state: 'vmstate', memory: 'memory' } as const

/** Firecracker resource ids are alphanumeric (and `_`): ours are positional. */
export const driveId = (i: number) => `disk${i}`
export const ifaceId = (i: number) => `eth${i}`

/** A token bucket refilled every second: `size` tokens per second. */
function perSecond(size: number): { size: number; refill_time: number } {
  return { size, refill_time: 1000 }
}

function rateLimiter(t: { bytesPerSec?: number; iopsPerSec?: number } | undefined): Record<string, unknown> | undefined {
  if (!t || (t.bytesPerSec === undefined && t.iopsPerSec === undefined)) return undefined
  return {
    ...(t.bytesPerSec !== undefined ? { bandwidth: perSecond(t.bytesPerSec) } : {}),
    ...(t.iopsPerSec !== undefined ? { ops: perSecond(t.iopsPerSec) } : {}),
  }
}

/** The hotplug region: its size and slot size in MiB, from `hotplugMemory`. */
export function hotplugLayout(spec: VmSpec): { totalMib: number; slotMib: number } | undefined {
  const hp = spec.hotplugMemory
  if (!hp) return undefined
  const totalMib = (hp.maxBytes - spec.memoryBytes) / MiB
  if (hp.slots === undefined) {
    if (totalMib % FIRECRACKER_HOTPLUG_SLOT_MIB !== 0) {
      throw new ValidationError(
        'hotplugMemory.maxBytes',
        `the hotplug region (maxBytes - memoryBytes = ${totalMib} MiB) must be a multiple of ${FIRECRACKER_HOTPLUG_SLOT_MIB} MiB for Firecracker's virtio-mem`,
      )
    }
    return { totalMib, slotMib: FIRECRACKER_HOTPLUG_SLOT_MIB }
  }
  const slotMib = totalMib / hp.slots
  if (!Number.isInteger(slotMib) || slotMib < FIRECRACKER_HOTPLUG_SLOT_MIB || slotMib % FIRECRACKER_HOTPLUG_BLOCK_MIB !== 0) {
    throw new ValidationError(
      'hotplugMemory.slots',
      `${hp.slots} slots over ${totalMib} MiB make slots of ${slotMib} MiB; Firecracker wants whole slots of at least ${FIRECRACKER_HOTPLUG_SLOT_MIB} MiB`,
    )
  }
  return { totalMib, slotMib }
}

export const firecrackerDialect: RestDialect = {
  name: 'firecracker',
  label: 'Firecracker',
  binary: 'firecracker',
  capabilities: FIRECRACKER_CAPABILITIES,
  machineCmdline: FIRECRACKER_MACHINE_CMDLINE,
  basePath: '',
  apiSocketName: 'firecracker.sock',

  checkSpec(spec: VmSpec): void {
    if (spec.vcpus > FIRECRACKER_MAX_VCPUS) {
      throw new ValidationError('vcpus', `Firecracker runs at most ${FIRECRACKER_MAX_VCPUS} vCPUs, got ${spec.vcpus}`)
    }
    for (const [i, d] of (spec.disks ?? []).entries()) {
      if ((d.format ?? 'raw') !== 'raw') throw new NotSupportedError('Firecracker drives are raw images only', { field: `disks[${i}].format` })
    }
    hotplugLayout(spec)
  },

  argv(spec: VmSpec, rt: RestRuntime): string[] {
    const argv = ['--api-sock', rt.apiSocket]
    // --id takes letters, digits and dashes; it only names the VM in Firecracker's logs.
    if (spec.name) argv.push('--id', spec.name.replace(/[^A-Za-z0-9-]/g, '-'))
    return argv
  },

  readiness: { op: 'describeInstance', method: 'GET', path: '/' },

  planBoot(spec: VmSpec, rt: RestRuntime): ApiCall[] {
    const calls: ApiCall[] = []
    calls.push({
      op: 'putGuestBootSource',
      method: 'PUT',
      path: '/boot-source',
      body: {
        kernel_image_path: spec.kernel,
        boot_args: composeCmdline(FIRECRACKER_MACHINE_CMDLINE, spec.cmdline ?? ''),
        ...(spec.initrd ? { initrd_path: spec.initrd } : {}),
      },
    })
    for (const [i, d] of (spec.disks ?? []).entries()) {
      const limiter = rateLimiter(d.throttle)
      calls.push({
        op: 'putGuestDriveByID',
        method: 'PUT',
        path: `/drives/${driveId(i)}`,
        body: {
          drive_id: driveId(i),
          path_on_host: d.path,
          // The guest boots from the initrd; a root device would also be moved to the front.
          is_root_device: false,
          is_read_only: d.readonly === true,
          ...(limiter ? { rate_limiter: limiter } : {}),
        },
      })
    }
    calls.push({
      op: 'putMachineConfiguration',
      method: 'PUT',
      path: '/machine-config',
      body: { vcpu_count: spec.vcpus, mem_size_mib: spec.memoryBytes / MiB, smt: false },
    })
    for (const [i, n] of (spec.nics ?? []).entries()) {
      calls.push({
        op: 'putGuestNetworkInterfaceByID',
        method: 'PUT',
        path: `/network-interfaces/${ifaceId(i)}`,
        body: { iface_id: ifaceId(i), host_dev_name: n.tap, guest_mac: n.mac.toLowerCase() },
      })
    }
    if (spec.vsock) {
      calls.push({ op: 'putGuestVsock', method: 'PUT', path: '/vsock', body: { guest_cid: spec.vsock.cid ?? 3, uds_path: rt.vsockSocket } })
    }
    const hp = hotplugLayout(spec)
    if (hp) {
      calls.push({
        op: 'putMemoryHotplug',
        method: 'PUT',
        path: '/hotplug/memory',
        body: { total_size_mib: hp.totalMib, slot_size_mib: hp.slotMib, block_size_mib: FIRECRACKER_HOTPLUG_BLOCK_MIB },
      })
    }
    calls.push({ op: 'putSerialDevice', method: 'PUT', path: '/serial', body: { serial_out_path: spec.consoleLog } })
    calls.push({ op: 'createSyncAction', method: 'PUT', path: '/actions', body: { action_type: 'InstanceStart' } })
    return calls
  },

  planRestore(spec: VmSpec, rt: RestRuntime, dir: string): ApiCall[] {
    const nics = spec.nics ?? []
    return [
      {
        op: 'loadSnapshot',
        method: 'PUT',
        path: '/snapshot/load',
        body: {
          snapshot_path: `${dir}/${FIRECRACKER_SNAPSHOT_FILES.state}`,
          mem_backend: { backend_type: 'File', backend_path: `${dir}/${FIRECRACKER_SNAPSHOT_FILES.memory}` },
          resume_vm: true,
          // TAP names and the vsock socket may differ from the snapshot's (disk paths may not).
          ...(nics.length > 0 ? { network_overrides: nics.map((n, i) => ({ iface_id: ifaceId(i), host_dev_name: n.tap })) } : {}),
          ...(spec.vsock ? { vsock_override: { uds_path: rt.vsockSocket } } : {}),
        },
      },
    ]
  },

  planPause: () => [{ op: 'patchVm', method: 'PATCH', path: '/vm', body: { state: 'Paused' } }],
  planResume: () => [{ op: 'patchVm', method: 'PATCH', path: '/vm', body: { state: 'Resumed' } }],

  planSnapshot: (dir: string) => [
    {
      op: 'createSnapshot',
      method: 'PUT',
      path: '/snapshot/create',
      body: {
        snapshot_type: 'Full',
        snapshot_path: `${dir}/${FIRECRACKER_SNAPSHOT_FILES.state}`,
        mem_file_path: `${dir}/${FIRECRACKER_SNAPSHOT_FILES.memory}`,
      },
    },
  ],

  snapshotFileNames: Object.values(FIRECRACKER_SNAPSHOT_FILES),
  // Firecracker has no "quit" call: the process is ended by a signal.
  planQuit: () => [],
  planGracefulShutdown: () => [{ op: 'createSyncAction', method: 'PUT', path: '/actions', body: { action_type: 'SendCtrlAltDel' } }],

  planResizeMemory(spec: VmSpec, totalBytes: number): ApiCall[] {
    return [{ op: 'patchMemoryHotplug', method: 'PATCH', path: '/hotplug/memory', body: { requested_size_mib: (totalBytes - spec.memoryBytes) / MiB } }]
  },

  stateCall: { op: 'describeInstance', method: 'GET', path: '/' },
  parseState(body: unknown): VmState {
    const state = (body as { state?: unknown })?.state
    if (state === 'Running') return 'running'
    if (state === 'Paused' || state === 'Not started') return 'paused'
    throw new TypeError(`Firecracker reported an unknown state ${JSON.stringify(state)}`)
  },

  memoryCall: { op: 'getMemoryHotplug', method: 'GET', path: '/hotplug/memory' },
  parseMemory(body: unknown, spec: VmSpec): number {
    const requested = (body as { requested_size_mib?: unknown })?.requested_size_mib
    return spec.memoryBytes + (typeof requested === 'number' ? requested * MiB : 0)
  },
  memoryStep: FIRECRACKER_HOTPLUG_BLOCK_MIB * MiB,

  pinnedPaths(spec: VmSpec): Record<string, string> {
    return Object.fromEntries((spec.disks ?? []).map((d, i) => [`disks[${i}].path`, d.path]))
  },

  unrequestedExit(exit: ProcessExit) {
    // Firecracker ends when the guest resets (reboot, or a panic with panic=1) and exits 0.
    if (exit.code === 0) return { reason: 'reboot' as const, vmmReason: 'guest-reset' }
    return { reason: 'killed' as const }
  },
}
