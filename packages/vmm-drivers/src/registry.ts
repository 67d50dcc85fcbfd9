/**
 * Which drivers exist, what each can do, and how far each was verified: one place to ask before
 * choosing a hypervisor. vz (Apple Virtualization.framework) is macOS only and not implemented:
 * it is listed so a caller learns that from data, and `create('vz')` is a not_supported error.
 */
import { NotSupportedError, ValidationError } from '@hypeman-ts/common'
import { CloudHypervisorDriver } from './cloud-hypervisor/driver.js'
import { CLOUD_HYPERVISOR_CAPABILITIES } from './cloud-hypervisor/plan.js'
import { FirecrackerDriver } from './firecracker/driver.js'
import { FIRECRACKER_CAPABILITIES } from './firecracker/plan.js'
import { QEMU_CAPABILITIES, QemuDriver, type QemuDriverOptions } from './qemu/driver.js'
import type { RestDriverOptions } from './rest/driver.js'
import type { DriverCapabilities, DriverName, VmmDriver } from './types.js'

export interface DriverInfo {
  name: DriverName
  /** The driver is in this package. */
  implemented: boolean
  /** The host OS it runs on. */
  platform: 'linux' | 'darwin'
  /** Present when implemented. */
  capabilities?: DriverCapabilities
  /** What it was checked against: a real VMM, or the API spec and a fake VMM only. */
  verifiedAgainst: 'real-vmm' | 'api-spec-and-fake-vmm' | 'nothing'
  note: string
}

export const DRIVERS: readonly DriverInfo[] = Object.freeze([
  {
    name: 'qemu',
    implemented: true,
    platform: 'linux',
    capabilities: QEMU_CAPABILITIES,
    verifiedAgainst: 'real-vmm',
    note: 'QEMU 7.2 under TCG on Debian 12 (KVM exercised only as absent or broken: the probe falls back to TCG)',
  },
  {
    name: 'cloud-hypervisor',
    implemented: true,
    platform: 'linux',
    capabilities: CLOUD_HYPERVISOR_CAPABILITIES,
    verifiedAgainst: 'api-spec-and-fake-vmm',
    note: 'never run against a real Cloud Hypervisor: requests validated against specs/cloud-hypervisor-openapi.yaml and a fake VMM',
  },
  {
    name: 'firecracker',
    implemented: true,
    platform: 'linux',
    capabilities: FIRECRACKER_CAPABILITIES,
    verifiedAgainst: 'api-spec-and-fake-vmm',
    note: 'never run against a real Firecracker: requests validated against specs/firecracker-swagger.yaml and a fake VMM; needs a kernel with virtio-mmio cmdline devices built in',
  },
  {
    name: 'vz',
    implemented: false,
    platform: 'darwin',
    verifiedAgainst: 'nothing',
    note: 'macOS only (Virtualization.framework through a helper process); not implemented',
  },
])

export function driverInfo(name: DriverName): DriverInfo {
  const info = DRIVERS.find((d) => d.name === name)
  if (!info) throw new ValidationError('driver', `unknown driver "${String(name)}" (known: ${DRIVERS.map((d) => d.name).join(', ')})`)
  return info
}

/** The capabilities of every implemented driver, by name; unimplemented ones are absent. */
export function driverCapabilities(): Partial<Record<DriverName, DriverCapabilities>> {
  return Object.fromEntries(DRIVERS.filter((d) => d.capabilities).map((d) => [d.name, d.capabilities]))
}

export type CreateDriverOptions = QemuDriverOptions & RestDriverOptions

/** A driver by name; `vz` (and anything unknown) is refused. */
export function createDriver(name: DriverName, opts: CreateDriverOptions = {}): VmmDriver {
  const info = driverInfo(name)
  switch (info.name) {
    case 'qemu':
      return new QemuDriver(opts)
    case 'cloud-hypervisor':
      return new CloudHypervisorDriver(opts)
    case 'firecracker':
      return new FirecrackerDriver(opts)
    default:
      throw new NotSupportedError(`the ${info.name} driver does not exist: ${info.note}`, { field: 'driver' })
  }
}
