/**
 * PCI functions as sysfs shows them (`bus/pci/devices/<addr>`): ids, class, IOMMU group and the
 * driver that holds them, and the moves between that driver and vfio-pci. The kernel's rules
 * this follows: a VM can only be given a whole IOMMU group (the devices in it can reach each
 * other's memory), the group is usable once every device in it is with vfio-pci or no driver
 * (bridges excepted), and `driver_override` makes the next probe pick vfio-pci whatever the ids.
 */
import { readFile } from 'node:fs/promises'
import { PCI_ADDRESS_RE } from '@hypeman-ts/vmm-drivers'
import { ValidationError } from '@hypeman-ts/common'
import { DeviceError } from '../errors.js'
import type { Sysfs } from './sysfs.js'

export const VFIO_DRIVER = 'vfio-pci'

const bindFailed = (message: string, cause: unknown) => new DeviceError('device_bind_failed', message, { cause })

export type DeviceType = 'gpu' | 'pci'

/** A PCI function found on the host (the spec's AvailableDevice, camelCase). */
export interface AvailableDevice {
  pciAddress: string
  vendorId: string
  deviceId: string
  vendorName?: string
  deviceName?: string
  iommuGroup: number
  /** null when no driver holds it. */
  currentDriver: string | null
}

export interface PciFunction extends Omit<AvailableDevice, 'iommuGroup'> {
  /** null when the host has no IOMMU (or it is off). */
  iommuGroup: number | null
  /** The 24-bit class code, e.g. `030200` (3D controller). */
  classCode: string
  type: DeviceType
}

export const pciDir = (addr: string) => `bus/pci/devices/${addr}`

/** A PCI address as sysfs spells it (lowercase); anything else names the field. */
export function checkPciAddress(value: unknown, field: string): string {
  if (typeof value !== 'string' || value === '') throw new ValidationError(field, 'is required')
  const addr = value.toLowerCase()
  if (!PCI_ADDRESS_RE.test(addr)) throw new ValidationError(field, `"${value}" is not a PCI address like "0000:a2:00.0" (domain:bus:slot.function)`)
  return addr
}

const hex = (v: string | undefined) => v?.replace(/^0x/i, '').toLowerCase()

/** Display (03) VGA (00) or 3D (02) controllers are GPUs; everything else is a plain PCI device. */
function typeOf(classCode: string): DeviceType {
  return classCode.startsWith('0300') || classCode.startsWith('0302') ? 'gpu' : 'pci'
}

/** Class 06 is a bridge: it stays with the host, and the kernel lets it share a group with a VM's devices. */
const isBridgeClass = (classCode: string) => classCode.startsWith('06')

export async function readPciFunction(sysfs: Sysfs, addr: string, names?: PciNames): Promise<PciFunction | undefined> {
  const dir = pciDir(addr)
  const vendorId = hex(await sysfs.read(`${dir}/vendor`))
  const deviceId = hex(await sysfs.read(`${dir}/device`))
  if (!vendorId || !deviceId) return undefined
  const classCode = hex(await sysfs.read(`${dir}/class`)) ?? ''
  const group = await sysfs.linkName(`${dir}/iommu_group`)
  const named = await names?.lookup(vendorId, deviceId)
  return {
    pciAddress: addr,
    vendorId,
    deviceId,
    ...(named?.vendor ? { vendorName: named.vendor } : {}),
    ...(named?.device ? { deviceName: named.device } : {}),
    iommuGroup: group !== undefined && /^\d+$/.test(group) ? Number(group) : null,
    currentDriver: (await sysfs.linkName(`${dir}/driver`)) ?? null,
    classCode,
    type: typeOf(classCode),
  }
}

/** Every PCI function the host has, in address order. */
export async function listPciFunctions(sysfs: Sysfs, names?: PciNames): Promise<PciFunction[]> {
  const out: PciFunction[] = []
  for (const addr of await sysfs.list('bus/pci/devices')) {
    if (!PCI_ADDRESS_RE.test(addr)) continue
    const f = await readPciFunction(sysfs, addr, names)
    if (f) out.push(f)
  }
  return out
}

/** What a VM could be given: functions in an IOMMU group, bridges left out. */
export function isPassthroughCandidate(f: PciFunction): f is PciFunction & { iommuGroup: number } {
  return f.iommuGroup !== null && !isBridgeClass(f.classCode)
}

/**
 * The other devices of `addr`'s IOMMU group that stand in the way of giving it to a VM: neither a
 * bridge, nor already with vfio-pci, nor accepted by `ok` (registered, or going to the same VM).
 */
export async function groupBlockers(sysfs: Sysfs, f: PciFunction & { iommuGroup: number }, ok: (addr: string) => boolean): Promise<string[]> {
  const blockers: string[] = []
  for (const other of await sysfs.list(`kernel/iommu_groups/${f.iommuGroup}/devices`)) {
    if (other === f.pciAddress || ok(other)) continue
    const o = await readPciFunction(sysfs, other)
    if (o && (isBridgeClass(o.classCode) || o.currentDriver === VFIO_DRIVER)) continue
    blockers.push(other)
  }
  return blockers
}

/**
 * Moves the device to vfio-pci: `driver_override` first (so no other driver's probe takes it in
 * between), unbind from its driver, bind to vfio-pci. The caller recorded the driver it had.
 */
export async function bindToVfio(sysfs: Sysfs, addr: string): Promise<void> {
  const dir = pciDir(addr)
  const current = (await sysfs.linkName(`${dir}/driver`)) ?? null
  if (current === VFIO_DRIVER) return
  if (!(await sysfs.exists(`bus/pci/drivers/${VFIO_DRIVER}`))) {
    throw new DeviceError('vfio_unavailable', `the ${VFIO_DRIVER} driver is not loaded on this host (modprobe vfio-pci)`, { field: 'devices' })
  }
  await sysfs.write(`${dir}/driver_override`, VFIO_DRIVER, bindFailed)
  if (current) await sysfs.write(`bus/pci/drivers/${current}/unbind`, addr, bindFailed)
  await sysfs.write(`bus/pci/drivers/${VFIO_DRIVER}/bind`, addr, bindFailed)
  const now = (await sysfs.linkName(`${dir}/driver`)) ?? null
  if (now !== VFIO_DRIVER) throw new DeviceError('device_bind_failed', `${addr} is with ${now ?? 'no driver'} after the bind to ${VFIO_DRIVER}`)
}

/**
 * Gives the device back to the driver it had before (`original`), from wherever a bind — or a
 * crash in the middle of one — left it. Idempotent. A device that was with vfio-pci already, or
 * with no driver, is left so.
 */
export async function restoreDriver(sysfs: Sysfs, addr: string, original: string | null): Promise<void> {
  if (original === VFIO_DRIVER) return
  const dir = pciDir(addr)
  if (!(await sysfs.exists(dir))) return // unplugged: nothing to give back
  // An empty override (a newline) lets ids pick the driver again.
  await sysfs.write(`${dir}/driver_override`, '\n', bindFailed)
  const current = (await sysfs.linkName(`${dir}/driver`)) ?? null
  if (current === VFIO_DRIVER) await sysfs.write(`bus/pci/drivers/${VFIO_DRIVER}/unbind`, addr, bindFailed)
  if (!original || current === original) return
  // Its module may have been unloaded meanwhile: then the kernel chooses.
  const bind = (await sysfs.exists(`bus/pci/drivers/${original}/bind`)) ? `bus/pci/drivers/${original}/bind` : 'bus/pci/drivers_probe'
  await sysfs.write(bind, addr, bindFailed)
  const now = (await sysfs.linkName(`${dir}/driver`)) ?? null
  if (now !== original) throw new DeviceError('device_bind_failed', `${addr} is with ${now ?? 'no driver'}, not back with ${original}`)
}

/**
 * Vendor and device names from the pci.ids database, when the host has one (pciutils or hwdata);
 * read once, on first use. Names are a nicety: without the file they are left out.
 */
export class PciNames {
  #table?: Promise<Map<string, string>>

  constructor(private readonly paths: readonly string[] = ['/usr/share/misc/pci.ids', '/usr/share/hwdata/pci.ids']) {}

  async lookup(vendorId: string, deviceId: string): Promise<{ vendor?: string; device?: string }> {
    this.#table ??= this.load()
    const t = await this.#table
    const vendor = t.get(vendorId)
    const device = t.get(`${vendorId}:${deviceId}`)
    return { ...(vendor ? { vendor } : {}), ...(device ? { device } : {}) }
  }

  private async load(): Promise<Map<string, string>> {
    const table = new Map<string, string>()
    for (const p of this.paths) {
      const text = await readFile(p, 'utf8').catch(() => undefined)
      if (text === undefined) continue
      let vendor: string | undefined
      for (const line of text.split('\n')) {
        if (line.startsWith('C ')) break // the class section: no more vendors
        const v = /^([0-9a-f]{4})\s+(.+)$/.exec(line)
        if (v) {
          vendor = v[1]!
          table.set(vendor, v[2]!.trim())
          continue
        }
        const d = /^\t([0-9a-f]{4})\s+(.+)$/.exec(line)
        if (d && vendor) table.set(`${vendor}:${d[1]}`, d[2]!.trim())
      }
      break
    }
    return table
  }
}
