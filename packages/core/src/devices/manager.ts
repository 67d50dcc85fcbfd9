/**
 * `hm.devices`: host PCI devices registered for passthrough, and the vGPUs (mdevs) instances
 * get. Instances claim registered devices at create (instances/create.ts, step `devices`), which
 * records the claim here and moves each device to vfio-pci; their delete (or the reconcile after
 * a crashed create) gives each back to the driver it had. One instance per device at a time.
 */
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { createId } from '@paralleldrive/cuid2'
import { errorMessage, silentLogger, ValidationError, type Logger } from '@hypeman-ts/common'
import type { PassthroughDeviceSpec } from '@hypeman-ts/vmm-drivers'
import { DeviceError } from '../errors.js'
import { findByIdOrName, matchesTags, validateTags } from '../validate.js'
import { createMdev, gpuProfiles, mdevDir, mdevParentsInUse, newMdevUuid, pickMdevType, removeMdev, type GpuProfile, type MdevRecord } from './mdev.js'
import {
  bindToVfio,
  checkPciAddress,
  groupBlockers,
  isPassthroughCandidate,
  listPciFunctions,
  pciDir,
  PciNames,
  readPciFunction,
  restoreDriver,
  VFIO_DRIVER,
  type AvailableDevice,
  type PciFunction,
} from './pci.js'
import { DeviceStore, type DeviceRecord } from './store.js'
import { Sysfs, type SysfsOptions } from './sysfs.js'

/** A registered device as callers see it (the spec's Device, camelCase). */
export interface Device {
  id: string
  name: string
  type: DeviceRecord['type']
  tags: Record<string, string>
  pciAddress: string
  vendorId: string
  deviceId: string
  iommuGroup: number
  /** Read from sysfs at each call. */
  boundToVfio: boolean
  attachedTo: string | null
  createdAt: string
}

export interface CreateDeviceParams {
  pciAddress: string
  /** Default `pci-<address with - for : and .>`, e.g. `pci-0000-a2-00-0`. */
  name?: string
  tags?: Record<string, string>
}

export interface DeviceManagerOptions extends SysfsOptions {
  dir: string
  /** pci.ids files to read names from (first found wins); `[]` for none. Default: pciutils' and hwdata's. */
  pciIds?: readonly string[]
  /** An instance's name for messages (device records know instances by id). */
  instanceName?: (id: string) => Promise<string | undefined>
  logger?: Logger
}

/** The spec's pattern for device names. */
const NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]+$/

/** The host's GPUs as hypeman's GET /resources reports them: vGPU slots, or whole GPUs registered for passthrough. */
export interface GpuStatus {
  mode: 'vgpu' | 'passthrough'
  /** vGPU: parent devices (VFs); passthrough: registered GPUs. */
  totalSlots: number
  usedSlots: number
  profiles?: GpuProfile[]
  devices?: { name: string; available: boolean }[]
}

/** The spec's GPUResourceStatus schema. */
export function gpuStatusToWire(s: GpuStatus) {
  return {
    mode: s.mode,
    total_slots: s.totalSlots,
    used_slots: s.usedSlots,
    ...(s.profiles ? { profiles: s.profiles.map((p) => ({ name: p.name, framebuffer_mb: p.framebufferMb, available: p.available })) } : {}),
    ...(s.devices ? { devices: s.devices } : {}),
  }
}

/** The spec's Device schema. */
export function deviceToWire(d: Device) {
  return {
    id: d.id,
    name: d.name,
    type: d.type,
    tags: d.tags,
    pci_address: d.pciAddress,
    vendor_id: d.vendorId,
    device_id: d.deviceId,
    iommu_group: d.iommuGroup,
    bound_to_vfio: d.boundToVfio,
    attached_to: d.attachedTo,
    created_at: d.createdAt,
  }
}

/** The spec's AvailableDevice schema. */
export function availableDeviceToWire(d: AvailableDevice) {
  return {
    pci_address: d.pciAddress,
    vendor_id: d.vendorId,
    device_id: d.deviceId,
    ...(d.vendorName ? { vendor_name: d.vendorName } : {}),
    ...(d.deviceName ? { device_name: d.deviceName } : {}),
    iommu_group: d.iommuGroup,
    current_driver: d.currentDriver,
  }
}

export class DeviceManager {
  readonly sysfs: Sysfs
  readonly store: DeviceStore
  readonly #names: PciNames
  readonly #logger: Logger

  constructor(private readonly opts: DeviceManagerOptions) {
    this.sysfs = new Sysfs(opts)
    this.store = new DeviceStore(opts.dir)
    this.#names = new PciNames(opts.pciIds)
    this.#logger = opts.logger ?? silentLogger
  }

  async init(): Promise<void> {
    await mkdir(this.store.root, { recursive: true, mode: 0o700 })
  }

  /** PCI functions a VM could be given: in an IOMMU group, bridges left out (hypeman's discovery). */
  async available(): Promise<AvailableDevice[]> {
    return (await listPciFunctions(this.sysfs, this.#names)).filter(isPassthroughCandidate).map(({ classCode: _c, type: _t, ...d }) => d)
  }

  /**
   * Registers a PCI function for passthrough. Refused: a malformed address, one the host does
   * not have, one without an IOMMU group, one whose group holds another device that is neither
   * registered, nor a bridge, nor already with vfio-pci (a VM gets the whole group), a name or an
   * address already registered.
   */
  async create(params: CreateDeviceParams): Promise<Device> {
    if (!params || typeof params !== 'object') throw new ValidationError('params', 'must be an object')
    const addr = checkPciAddress(params.pciAddress, 'pciAddress')
    const name = params.name ?? `pci-${addr.replace(/[:.]/g, '-')}`
    if (typeof name !== 'string' || !NAME.test(name) || name.length > 128) {
      throw new ValidationError('name', 'must be 2-128 letters, digits, "_", "." and "-", starting with a letter or digit')
    }
    const tags = validateTags(params.tags, 'tags')
    const f = await readPciFunction(this.sysfs, addr)
    if (!f) throw new DeviceError('device_not_found', `this host has no PCI device ${addr}`, { field: 'pciAddress' })
    const grouped = inGroup(f, 'pciAddress')
    return this.store.withLock(async () => {
      const all = await this.store.all()
      if (all.some((r) => r.name === name)) throw new DeviceError('device_exists', `a device named "${name}" is already registered`, { field: 'name' })
      const same = all.find((r) => r.pciAddress === addr)
      if (same) throw new DeviceError('device_exists', `${addr} is already registered as "${same.name}"`, { field: 'pciAddress' })
      const registered = new Set(all.map((r) => r.pciAddress))
      const blockers = await groupBlockers(this.sysfs, grouped, (a) => registered.has(a))
      if (blockers.length) {
        throw new DeviceError(
          'iommu_group_conflict',
          `IOMMU group ${grouped.iommuGroup} of ${addr} also holds ${blockers.join(', ')}, which a VM would get with it: register ${blockers.length > 1 ? 'them' : 'it'} too (or bind ${blockers.length > 1 ? 'them' : 'it'} to ${VFIO_DRIVER})`,
          { field: 'pciAddress', details: { iommuGroup: grouped.iommuGroup, devices: blockers } },
        )
      }
      const record: DeviceRecord = {
        version: 1,
        id: createId(),
        name,
        type: f.type,
        pciAddress: addr,
        vendorId: f.vendorId,
        deviceId: f.deviceId,
        iommuGroup: grouped.iommuGroup,
        tags,
        createdAt: new Date().toISOString(),
        attachedTo: null,
        originalDriver: null,
      }
      await this.store.write(record)
      return this.toDevice(record)
    })
  }

  async get(idOrName: string): Promise<Device> {
    return this.toDevice(await this.find(idOrName, 'id'))
  }

  async list(filter: { tags?: Record<string, string> } = {}): Promise<Device[]> {
    const records = (await this.store.all()).filter((r) => matchesTags(r.tags, filter.tags))
    return Promise.all(records.map((r) => this.toDevice(r)))
  }

  /** Unregisters; refused with `device_in_use` while an instance holds it. The device stays with the driver it has. */
  async delete(idOrName: string): Promise<void> {
    await this.store.withLock(async () => {
      const r = await this.find(idOrName, 'id')
      if (r.attachedTo) {
        throw new DeviceError('device_in_use', `device ${r.name} is attached to ${await this.describe(r.attachedTo)}: delete that instance first`, {
          field: 'id',
          details: { instance: r.attachedTo },
        })
      }
      await rm(join(this.store.root, `${r.id}.json`), { force: true })
    })
  }

  /**
   * Claims the devices (ids or names, `devices[i]` in errors) for `instanceId` and moves each to
   * vfio-pci; returns their ids. `dryRun` only checks (create's up-front validation). Claims are
   * written before any bind, so `release` undoes a half-done claim too; claiming what the
   * instance already holds is a no-op, so a retried step is harmless.
   */
  async claim(instanceId: string, refs: readonly string[], opts: { dryRun?: boolean } = {}): Promise<string[]> {
    if (refs.length === 0) return []
    const apply = async () => {
      const records: DeviceRecord[] = []
      for (const [i, ref] of refs.entries()) {
        const field = `devices[${i}]`
        const r = await this.find(ref, field)
        const twice = records.findIndex((o) => o.id === r.id)
        if (twice >= 0) throw new ValidationError(field, `device "${ref}" is the same device as devices[${twice}] ("${refs[twice]}")`)
        if (r.attachedTo && r.attachedTo !== instanceId) {
          throw new DeviceError('device_in_use', `device ${r.name} is attached to ${await this.describe(r.attachedTo)}`, { field, details: { device: r.id, instance: r.attachedTo } })
        }
        records.push(r)
      }
      // The kernel gives a VM whole IOMMU groups: the rest of each group must go with it (or be a bridge, or with vfio-pci already).
      const going = new Set(records.map((r) => r.pciAddress))
      for (const [i, r] of records.entries()) {
        const f = await readPciFunction(this.sysfs, r.pciAddress)
        if (!f) throw new DeviceError('device_not_found', `device ${r.name} (${r.pciAddress}) is no longer on this host`, { field: `devices[${i}]` })
        const blockers = await groupBlockers(this.sysfs, inGroup(f, `devices[${i}]`), (a) => going.has(a))
        if (blockers.length) {
          throw new DeviceError('iommu_group_conflict', `device ${r.name} (${r.pciAddress}) shares IOMMU group ${f.iommuGroup} with ${blockers.join(', ')}: pass those to the instance too`, {
            field: `devices[${i}]`,
            details: { iommuGroup: f.iommuGroup, devices: blockers },
          })
        }
      }
      if (opts.dryRun) return records.map((r) => r.id)
      for (const r of records) {
        if (r.attachedTo === instanceId) continue
        r.attachedTo = instanceId
        r.originalDriver = (await this.sysfs.linkName(`${pciDir(r.pciAddress)}/driver`)) ?? null
        await this.store.write(r)
      }
      for (const r of records) await bindToVfio(this.sysfs, r.pciAddress)
      return records.map((r) => r.id)
    }
    return opts.dryRun ? apply() : this.store.withLock(apply)
  }

  /**
   * Gives `instanceId`'s devices back to the drivers they had, and drops its claims. Idempotent.
   * A device that cannot be given back keeps its claim (the next open tries again) and the error
   * is thrown once the others are done.
   */
  async release(instanceId: string): Promise<void> {
    await this.releaseWhere((id) => id === instanceId)
  }

  /** Releases claims of instances that no longer exist (run at open, after the instances' reconcile). */
  async releaseOrphans(instanceExists: (id: string) => Promise<boolean>): Promise<string[]> {
    const gone = new Set<string>()
    for (const r of await this.store.all()) if (r.attachedTo && !(await instanceExists(r.attachedTo))) gone.add(r.attachedTo)
    if (gone.size) await this.releaseWhere((id) => gone.has(id))
    return [...gone]
  }

  /** What the VMM is given for these devices, in order. */
  async passthroughSpecs(ids: readonly string[]): Promise<PassthroughDeviceSpec[]> {
    return Promise.all(
      ids.map(async (id) => {
        const r = await this.store.read(id)
        if (!r) throw new DeviceError('device_not_found', `device ${id} is no longer registered`, { field: 'devices' })
        return { sysfsPath: this.sysfs.path(pciDir(r.pciAddress)), pciAddress: r.pciAddress }
      }),
    )
  }

  /** The vGPU profiles the host offers, with how many more of each its parents can make. */
  gpuProfiles(): Promise<GpuProfile[]> {
    return gpuProfiles(this.sysfs)
  }

  /** vGPU mode when the host has mdev parents, else passthrough mode when GPUs are registered, else null. */
  async gpuStatus(): Promise<GpuStatus | null> {
    const parents = await this.sysfs.list('class/mdev_bus')
    if (parents.length) {
      return { mode: 'vgpu', totalSlots: parents.length, usedSlots: (await mdevParentsInUse(this.sysfs)).size, profiles: await this.gpuProfiles() }
    }
    const gpus = (await this.store.all()).filter((r) => r.type === 'gpu')
    if (!gpus.length) return null
    return {
      mode: 'passthrough',
      totalSlots: gpus.length,
      usedSlots: gpus.filter((g) => g.attachedTo).length,
      devices: gpus.map((g) => ({ name: g.name, available: !g.attachedTo })),
    }
  }

  /** Checks that one more vGPU of `profile` can be made (create's up-front validation). */
  async checkGpu(profile: string): Promise<void> {
    await pickMdevType(this.sysfs, profile)
  }

  /**
   * Makes an mdev of `profile`. `record` is called with its UUID and parent before the kernel is
   * asked, so the caller persists it and can remove it whatever happens next.
   */
  async createGpu(profile: string, record: (mdev: MdevRecord) => Promise<void>): Promise<MdevRecord> {
    // Under the lock: two creates must not both pick the last free slot of one parent.
    return this.store.withLock(async () => {
      const t = await pickMdevType(this.sysfs, profile)
      const mdev: MdevRecord = { profile, uuid: newMdevUuid(), parent: t.parent, type: t.type }
      await record(mdev)
      await createMdev(this.sysfs, t, mdev.uuid)
      return mdev
    })
  }

  removeGpu(uuid: string): Promise<void> {
    return removeMdev(this.sysfs, uuid)
  }

  gpuPassthrough(uuid: string): PassthroughDeviceSpec {
    return { sysfsPath: this.sysfs.path(mdevDir(uuid)) }
  }

  private async releaseWhere(holds: (instanceId: string) => boolean): Promise<void> {
    await this.store.withLock(async () => {
      const failures: unknown[] = []
      for (const r of await this.store.all()) {
        if (!r.attachedTo || !holds(r.attachedTo)) continue
        try {
          await restoreDriver(this.sysfs, r.pciAddress, r.originalDriver)
        } catch (err) {
          this.#logger.warn('giving a device back to its driver failed; the next open tries again', { device: r.id, pciAddress: r.pciAddress, error: errorMessage(err) })
          failures.push(err)
          continue
        }
        r.attachedTo = null
        r.originalDriver = null
        await this.store.write(r)
      }
      if (failures.length) throw failures[0]
    })
  }

  private async toDevice(r: DeviceRecord): Promise<Device> {
    const driver = await this.sysfs.linkName(`${pciDir(r.pciAddress)}/driver`)
    return {
      id: r.id,
      name: r.name,
      type: r.type,
      tags: { ...r.tags },
      pciAddress: r.pciAddress,
      vendorId: r.vendorId,
      deviceId: r.deviceId,
      iommuGroup: r.iommuGroup,
      boundToVfio: driver === VFIO_DRIVER,
      attachedTo: r.attachedTo,
      createdAt: r.createdAt,
    }
  }

  private find(idOrName: string, field: string): Promise<DeviceRecord> {
    return findByIdOrName(this.store, idOrName, field, (ref) => new DeviceError('device_not_found', `no device with id or name "${ref}"`, { field }))
  }

  private async describe(instanceId: string): Promise<string> {
    const name = await this.opts.instanceName?.(instanceId).catch(() => undefined)
    return name ? `instance ${name} (${instanceId})` : `instance ${instanceId}`
  }
}

/** The function's group, or the refusal a host without an IOMMU gets. */
function inGroup(f: PciFunction, field: string): PciFunction & { iommuGroup: number } {
  if (f.iommuGroup === null) {
    throw new DeviceError('iommu_unavailable', `${f.pciAddress} is in no IOMMU group: turn the IOMMU on (VT-d/AMD-Vi in firmware, intel_iommu=on or amd_iommu=on on the kernel command line)`, { field })
  }
  return f as PciFunction & { iommuGroup: number }
}
