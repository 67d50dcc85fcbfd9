/**
 * What this manager can run, for hypeman's GET /capabilities: the host, each hypervisor this
 * build has for the host's OS (available when the manager has its driver, whose programs the
 * open checked), the features each one's driver really gives core, the network model, and the
 * image platforms. Read from the configuration and the drivers' capability flags: nothing on
 * the host is created or probed to answer.
 */
import { arch, platform } from 'node:os'
import { DRIVERS, type DriverCapabilities } from '@hypeman-ts/vmm-drivers'
import type { Hypervisor } from './instances/params.js'

export interface HypervisorCapabilities {
  name: Hypervisor
  available: boolean
  /** hypeman's runtime feature ids that core offers on this hypervisor (see `hypervisorFeatures`). */
  features: string[]
}

export interface Capabilities {
  /** As OCI names them: `linux`, `amd64`/`arm64`. */
  host: { os: string; arch: string }
  defaultHypervisor: { name: Hypervisor; available: boolean }
  /** Sorted by name. */
  hypervisors: HypervisorCapabilities[]
  /** `gateway`/`subnet` when the manager has a host network (not opened with `network: false`). */
  network: { model: 'bridge'; guestToGuest: boolean; gateway?: string; subnet?: string }
  images: { platforms: string[]; defaultPlatform: string }
}

export interface CapabilitiesInput {
  drivers: readonly Hypervisor[]
  defaultHypervisor: Hypervisor
  network?: { gateway: string; subnet: string; isolate: boolean }
  defaultPlatform: string
}

const OCI_ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' }

/**
 * hypeman's runtime feature ids, only where core uses the driver's flag: `standby` (snapshot and
 * restore), `pause`, `disk-io-limit`, `vsock` (the agent's transport), `gpu-passthrough` (create's
 * `devices` and `gpu`), and `fork` (of a Stopped source with any driver; of a Standby or Running
 * one where `standby` is listed too, as the spec says). Not `snapshots`, `hotplug-memory`,
 * `balloon-control` or `disk-resize`: core has no operation for them yet, whatever the VMM could do.
 */
export function hypervisorFeatures(c: DriverCapabilities): string[] {
  return [
    ...(c.snapshot ? ['standby'] : []),
    'fork',
    ...(c.pause ? ['pause'] : []),
    ...(c.diskThrottle ? ['disk-io-limit'] : []),
    ...(c.agentTransport === 'vsock' ? ['vsock'] : []),
    ...(c.passthrough ? ['gpu-passthrough'] : []),
  ]
}

export function describeCapabilities(input: CapabilitiesInput): Capabilities {
  const os = platform()
  const hostArch = OCI_ARCH[arch()] ?? arch()
  const hypervisors = DRIVERS.filter((d) => d.capabilities && d.platform === os)
    .map((d) => ({ name: d.name as Hypervisor, available: input.drivers.includes(d.name as Hypervisor), features: hypervisorFeatures(d.capabilities!) }))
    .sort((a, b) => a.name.localeCompare(b.name))
  return {
    host: { os, arch: hostArch },
    defaultHypervisor: { name: input.defaultHypervisor, available: hypervisors.some((h) => h.name === input.defaultHypervisor && h.available) },
    hypervisors,
    network: {
      model: 'bridge',
      // Isolation (netsetup's default) drops guest-to-guest traffic on the bridge.
      guestToGuest: input.network ? !input.network.isolate : false,
      ...(input.network ? { gateway: input.network.gateway, subnet: input.network.subnet } : {}),
    },
    // Guests run the host's architecture (the guest init and kernel are built for it).
    images: { platforms: [`linux/${hostArch}`], defaultPlatform: input.defaultPlatform },
  }
}
