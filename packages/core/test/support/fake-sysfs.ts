/**
 * A fabricated sysfs in a temporary directory, laid out as the kernel lays it out: functions under
 * `devices/pci0000:00/<addr>` with `bus/pci/devices/<addr>` links to them, `iommu_group` and
 * `driver` links, `kernel/iommu_groups/<n>/devices/*`, drivers with `bind`/`unbind` files,
 * mdev parents under `class/mdev_bus/` with their `mdev_supported_types/*`. Nothing acts on a
 * write to a plain directory, so `kernel` (passed as the sysfs's onWrite) plays the kernel: it
 * records every write in order and does what the kernel would (moves `driver` links, makes and
 * removes mdevs, counts `available_instances`).
 */
import { mkdir, mkdtemp, readFile, readlink, rm, symlink, unlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'

export interface FakePci {
  vendor: string
  device: string
  /** e.g. 0x030200 (3D controller), 0x020000 (Ethernet), 0x060400 (PCI bridge). */
  class: string
  /** undefined: no IOMMU. */
  group?: number
  driver?: string
}

export interface FakeMdevType {
  type: string
  name: string
  available: number
  description?: string
}

export class FakeSysfs {
  readonly writes: [path: string, value: string][] = []
  /** Each function's driver when it was added: what `drivers_probe` picks without an override. */
  readonly #native = new Map<string, string | undefined>()

  private constructor(readonly root: string) {}

  static async create(): Promise<FakeSysfs> {
    const s = new FakeSysfs(await mkdtemp(join(tmpdir(), 'hm-sysfs-')))
    await mkdir(join(s.root, 'bus/pci/devices'), { recursive: true })
    await mkdir(join(s.root, 'bus/mdev/devices'), { recursive: true })
    await mkdir(join(s.root, 'class/mdev_bus'), { recursive: true })
    await writeFile(join(s.root, 'bus/pci/drivers_probe'), '')
    return s
  }

  async addDriver(name: string): Promise<void> {
    const dir = join(this.root, 'bus/pci/drivers', name)
    await mkdir(dir, { recursive: true })
    for (const f of ['bind', 'unbind', 'new_id']) await writeFile(join(dir, f), '')
  }

  async addPci(addr: string, d: FakePci): Promise<void> {
    const dir = join(this.root, 'devices/pci0000:00', addr)
    await mkdir(dir, { recursive: true })
    await writeFile(join(dir, 'vendor'), `0x${d.vendor}\n`)
    await writeFile(join(dir, 'device'), `0x${d.device}\n`)
    await writeFile(join(dir, 'class'), `${d.class}\n`)
    await writeFile(join(dir, 'driver_override'), '(null)\n')
    await symlink(`../../../devices/pci0000:00/${addr}`, join(this.root, 'bus/pci/devices', addr))
    if (d.group !== undefined) {
      const members = join(this.root, 'kernel/iommu_groups', String(d.group), 'devices')
      await mkdir(members, { recursive: true })
      await symlink(`../../../../devices/pci0000:00/${addr}`, join(members, addr))
      await symlink(`../../../kernel/iommu_groups/${d.group}`, join(dir, 'iommu_group'))
    }
    if (d.driver) {
      await this.addDriver(d.driver)
      await this.link(addr, d.driver)
    }
    this.#native.set(addr, d.driver)
  }

  async addMdevParent(addr: string, types: FakeMdevType[]): Promise<void> {
    await symlink(`../../devices/pci0000:00/${addr}`, join(this.root, 'class/mdev_bus', addr))
    for (const t of types) {
      const dir = join(this.root, 'devices/pci0000:00', addr, 'mdev_supported_types', t.type)
      await mkdir(join(dir, 'devices'), { recursive: true })
      await writeFile(join(dir, 'name'), `${t.name}\n`)
      await writeFile(join(dir, 'available_instances'), `${t.available}\n`)
      await writeFile(join(dir, 'create'), '')
      if (t.description) await writeFile(join(dir, 'description'), `${t.description}\n`)
    }
  }

  /** The driver a function is with now (its `driver` link), or undefined. */
  async driverOf(addr: string): Promise<string | undefined> {
    return readlink(join(this.root, 'bus/pci/devices', addr, 'driver')).then(basename, () => undefined)
  }

  async available(parent: string, type: string): Promise<number> {
    return Number(await readFile(join(this.root, 'class/mdev_bus', parent, 'mdev_supported_types', type, 'available_instances'), 'utf8'))
  }

  /** The kernel's side of a write (the sysfs layer's onWrite hook). */
  readonly kernel = async (path: string, value: string): Promise<void> => {
    this.writes.push([path, value])
    let m: RegExpExecArray | null
    if ((m = /^bus\/pci\/drivers\/([^/]+)\/unbind$/.exec(path))) {
      if ((await this.driverOf(value)) === m[1]) await unlink(join(this.root, 'bus/pci/devices', value, 'driver'))
    } else if ((m = /^bus\/pci\/drivers\/([^/]+)\/bind$/.exec(path))) {
      // The kernel refuses a bind against the override, and a bind of a device some driver holds.
      const override = await this.override(value)
      if ((override && override !== m[1]) || (await this.driverOf(value))) throw Object.assign(new Error(`bind ${value} to ${m[1]}: EBUSY`), { code: 'EBUSY' })
      await this.link(value, m[1]!)
    } else if (path === 'bus/pci/drivers_probe') {
      const driver = (await this.override(value)) ?? this.#native.get(value)
      if (driver && !(await this.driverOf(value))) await this.link(value, driver)
    } else if ((m = /^class\/mdev_bus\/([^/]+)\/mdev_supported_types\/([^/]+)\/create$/.exec(path))) {
      const left = await this.available(m[1]!, m[2]!)
      if (left < 1) throw Object.assign(new Error('create: EDQUOT'), { code: 'EDQUOT' })
      const dir = join(this.root, 'bus/mdev/devices', value)
      await mkdir(dir)
      await writeFile(join(dir, 'remove'), '')
      await writeFile(join(dir, 'parent'), `${m[1]} ${m[2]}`)
      await mkdir(join(this.root, 'class/mdev_bus', m[1]!, 'mdev_supported_types', m[2]!, 'devices', value))
      await this.setAvailable(m[1]!, m[2]!, left - 1)
    } else if ((m = /^bus\/mdev\/devices\/([^/]+)\/remove$/.exec(path)) && value === '1') {
      const dir = join(this.root, 'bus/mdev/devices', m[1]!)
      const [parent, type] = (await readFile(join(dir, 'parent'), 'utf8')).split(' ') as [string, string]
      await rm(dir, { recursive: true })
      await rm(join(this.root, 'class/mdev_bus', parent, 'mdev_supported_types', type, 'devices', m[1]!), { recursive: true })
      await this.setAvailable(parent, type, (await this.available(parent, type)) + 1)
    }
  }

  async close(): Promise<void> {
    await rm(this.root, { recursive: true, force: true })
  }

  private async override(addr: string): Promise<string | undefined> {
    const v = (await readFile(join(this.root, 'bus/pci/devices', addr, 'driver_override'), 'utf8')).trim()
    return v && v !== '(null)' ? v : undefined
  }

  private async link(addr: string, driver: string): Promise<void> {
    await symlink(`../../../bus/pci/drivers/${driver}`, join(this.root, 'devices/pci0000:00', addr, 'driver'))
  }

  private async setAvailable(parent: string, type: string, n: number): Promise<void> {
    await writeFile(join(this.root, 'class/mdev_bus', parent, 'mdev_supported_types', type, 'available_instances'), `${n}\n`)
  }
}
