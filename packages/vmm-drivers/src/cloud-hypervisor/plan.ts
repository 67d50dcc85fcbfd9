/**
 * Cloud Hypervisor as data: its command line and, for each lifecycle operation, the ordered API
 * calls (`specs/cloud-hypervisor-openapi.yaml`, served under `/api/v1`). Pure functions, so the
 * contract tests check every call against the spec and the order against the documented
 * sequence: `vm.create` (the whole VmConfig at once), then `vm.boot`. A restore is `vm.restore`
 * on a fresh process (the VM comes back paused) then `vm.resume`; a standby is `vm.pause`,
 * `vm.snapshot`, `vmm.shutdown`.
 *
 * What the guest sees: virtio-pci devices; disks carry `DiskSpec.serial` (virtio-blk serial, as
 * with QEMU), the console is ttyS0, the vsock device is virtio-vsock.
 */
import { NotSupportedError, ValidationError } from '@hypeman-ts/common'
import { composeCmdline } from '../cmdline.js'
import type { ProcessExit } from '../process.js'
import type { DriverCapabilities, VmSpec, VmState } from '../types.js'
import type { ApiCall } from '../rest/client.js'
import type { RestDialect, RestRuntime } from '../rest/dialect.js'

const MiB = 1024 * 1024

export const CLOUD_HYPERVISOR_CAPABILITIES: DriverCapabilities = Object.freeze({
  pause: true,
  snapshot: true,
  hotplugMemory: true,
  memoryFile: false,
  diskThrottle: true,
  diskSerial: true,
  namedChannels: false,
  channelBackends: Object.freeze([] as const),
  agentTransport: 'vsock',
  accels: Object.freeze(['kvm'] as const),
  gracefulShutdown: 'acpi-power-button',
  memoryShrink: false,
  passthrough: true,
  diskHotplug: false,
})

/**
 * Cloud Hypervisor reboots a guest that resets inside the same process (it has no -no-reboot),
 * and nothing on its REST API says it happened. A panic must therefore not turn into a reset
 * (the workload would silently start again): `panic=0` leaves a panicked guest stopped. A
 * caller that prefers a reboot overrides `panic=`.
 */
export const CLOUD_HYPERVISOR_MACHINE_CMDLINE = ['console=ttyS0', 'panic=0'].join(' ')

/** ACPI memory hotplug adds whole 128 MiB sections. */
export const CLOUD_HYPERVISOR_MEMORY_STEP = 128 * MiB

/** What `vm.snapshot` writes into its destination directory. */
export const CLOUD_HYPERVISOR_SNAPSHOT_FILES = Object.freeze(['config.json', 'state.json', 'memory-ranges'])

export const diskId = (i: number) => `disk${i}`
export const netId = (i: number) => `net${i}`
export const hostdevId = (i: number) => `hostdev${i}`

function rateLimiterConfig(t: { bytesPerSec?: number; iopsPerSec?: number } | undefined): Record<string, unknown> | undefined {
  if (!t || (t.bytesPerSec === undefined && t.iopsPerSec === undefined)) return undefined
  // A token bucket refilled every second holds one second's worth.
  return {
    ...(t.bytesPerSec !== undefined ? { bandwidth: { size: t.bytesPerSec, refill_time: 1000 } } : {}),
    ...(t.iopsPerSec !== undefined ? { ops: { size: t.iopsPerSec, refill_time: 1000 } } : {}),
  }
}

/** The VmConfig of `vm.create`. */
export function cloudHypervisorVmConfig(spec: VmSpec, rt: RestRuntime): Record<string, unknown> {
  const hp = spec.hotplugMemory
  const disks = (spec.disks ?? []).map((d, i) => {
    const limiter = rateLimiterConfig(d.throttle)
    return {
      path: d.path,
      readonly: d.readonly === true,
      serial: d.serial,
      id: diskId(i),
      // Explicit, never probed: a raw image whose guest wrote a qcow2 header must stay raw.
      image_type: d.format === 'qcow2' ? 'Qcow2' : 'Raw',
      ...(limiter ? { rate_limiter_config: limiter } : {}),
    }
  })
  const net = (spec.nics ?? []).map((n, i) => ({ tap: n.tap, mac: n.mac.toLowerCase(), id: netId(i) }))
  // Cloud Hypervisor takes PCI functions and mdevs alike by their sysfs directory.
  const devices = (spec.passthrough ?? []).map((d, i) => ({ path: d.sysfsPath, id: hostdevId(i) }))
  return {
    cpus: { boot_vcpus: spec.vcpus, max_vcpus: spec.vcpus },
    memory: {
      size: spec.memoryBytes,
      ...(hp ? { hotplug_size: hp.maxBytes - spec.memoryBytes, hotplug_method: 'Acpi' } : {}),
    },
    payload: {
      kernel: spec.kernel,
      cmdline: composeCmdline(CLOUD_HYPERVISOR_MACHINE_CMDLINE, spec.cmdline ?? ''),
      ...(spec.initrd ? { initramfs: spec.initrd } : {}),
    },
    ...(disks.length > 0 ? { disks } : {}),
    ...(net.length > 0 ? { net } : {}),
    ...(devices.length > 0 ? { devices } : {}),
    serial: { mode: 'File', file: spec.consoleLog },
    console: { mode: 'Off' },
    ...(spec.vsock ? { vsock: { cid: spec.vsock.cid ?? 3, socket: rt.vsockSocket, id: 'vsock0' } } : {}),
  }
}

const put = (op: string, path: string, body?: unknown): ApiCall => ({ op, method: 'PUT', path, ...(body !== undefined ? { body } : {}) })

export const cloudHypervisorDialect: RestDialect = {
  name: 'cloud-hypervisor',
  label: 'Cloud Hypervisor',
  binary: 'cloud-hypervisor',
  capabilities: CLOUD_HYPERVISOR_CAPABILITIES,
  machineCmdline: CLOUD_HYPERVISOR_MACHINE_CMDLINE,
  basePath: '/api/v1',
  apiSocketName: 'ch.sock',

  checkSpec(spec: VmSpec, rt: RestRuntime): void {
    // --api-socket is a key=value list: a comma would end the path.
    if (rt.apiSocket.includes(',')) throw new ValidationError('runtimeDir', 'Cloud Hypervisor cannot take a comma in its API socket path')
    if (spec.hotplugMemory?.slots !== undefined) {
      throw new NotSupportedError('Cloud Hypervisor ACPI memory hotplug has no slot count to set', { field: 'hotplugMemory.slots' })
    }
    const hp = spec.hotplugMemory
    if (hp && (hp.maxBytes - spec.memoryBytes) % CLOUD_HYPERVISOR_MEMORY_STEP !== 0) {
      throw new ValidationError('hotplugMemory.maxBytes', 'the hotplug region (maxBytes - memoryBytes) must be a multiple of 128 MiB')
    }
  },

  argv: (_spec: VmSpec, rt: RestRuntime) => ['--api-socket', `path=${rt.apiSocket}`],

  readiness: { op: 'vmm.ping', method: 'GET', path: '/vmm.ping' },

  planBoot: (spec: VmSpec, rt: RestRuntime) => [put('createVM', '/vm.create', cloudHypervisorVmConfig(spec, rt)), put('bootVM', '/vm.boot')],

  // Cloud Hypervisor takes a path, not a URL-encoded one, after file://.
  planRestore: (_spec: VmSpec, _rt: RestRuntime, dir: string) => [put('vm.restore', '/vm.restore', { source_url: `file://${dir}` }), put('resumeVM', '/vm.resume')],

  planPause: () => [put('pauseVM', '/vm.pause')],
  planResume: () => [put('resumeVM', '/vm.resume')],
  planSnapshot: (dir: string) => [put('vm.snapshot', '/vm.snapshot', { destination_url: `file://${dir}` })],
  snapshotFileNames: CLOUD_HYPERVISOR_SNAPSHOT_FILES,
  planQuit: () => [put('shutdownVMM', '/vmm.shutdown')],
  planGracefulShutdown: () => [put('power-buttonVM', '/vm.power-button')],
  planResizeMemory: (_spec: VmSpec, totalBytes: number) => [put('vm.resize', '/vm.resize', { desired_ram: totalBytes })],

  stateCall: { op: 'vm.info', method: 'GET', path: '/vm.info' },
  parseState(body: unknown): VmState {
    const state = (body as { state?: unknown })?.state
    switch (state) {
      case 'Running':
        return 'running'
      case 'Paused':
      case 'Created':
        return 'paused'
      case 'Shutdown':
        return 'shutdown'
      default:
        throw new TypeError(`Cloud Hypervisor reported an unknown state ${JSON.stringify(state)}`)
    }
  },

  memoryCall: { op: 'vm.info', method: 'GET', path: '/vm.info' },
  parseMemory(body: unknown, spec: VmSpec): number {
    // ACPI hotplug grows `memory.size` in the live config; virtio-mem would count in hotplugged_size.
    const mem = (body as { config?: { memory?: { size?: unknown; hotplugged_size?: unknown } } })?.config?.memory
    const size = typeof mem?.size === 'number' ? mem.size : spec.memoryBytes
    return size + (typeof mem?.hotplugged_size === 'number' ? mem.hotplugged_size : 0)
  },
  memoryStep: CLOUD_HYPERVISOR_MEMORY_STEP,

  pinnedPaths(spec: VmSpec, rt: RestRuntime): Record<string, string> {
    // A restore recreates every device from the saved config, by the same host paths and names.
    const pinned: Record<string, string> = { consoleLog: spec.consoleLog }
    for (const [i, d] of (spec.disks ?? []).entries()) pinned[`disks[${i}].path`] = d.path
    for (const [i, n] of (spec.nics ?? []).entries()) pinned[`nics[${i}].tap`] = n.tap
    if (spec.vsock) pinned['vsock socket (runtimeDir)'] = rt.vsockSocket
    for (const [i, d] of (spec.passthrough ?? []).entries()) pinned[`passthrough[${i}].sysfsPath`] = d.sysfsPath
    return pinned
  },

  unrequestedExit(exit: ProcessExit) {
    // The process ends when the guest powers off (a reset reboots in place instead).
    if (exit.code === 0) return { reason: 'poweroff' as const }
    return { reason: 'killed' as const }
  },
}
