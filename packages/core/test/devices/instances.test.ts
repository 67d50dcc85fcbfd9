/**
 * Devices and a vGPU through instance create, delete and the reconcile after a crash, on a
 * fabricated sysfs and a driver that starts no VMM (QEMU cannot open a VFIO device here: no
 * IOMMU). What the VMM would have been given is checked through the real QEMU argv builder.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { buildQemuArgv } from '@hypeman-ts/vmm-drivers'
import { silentLogger } from '@hypeman-ts/common'
import { Hypeman } from '../../src/index.js'
import { FakeDriver } from '../support/fake-driver.js'
import { FakeSysfs } from '../support/fake-sysfs.js'
import { FIXTURES } from '../support/registry.js'

const BUSYBOX = `oci:${FIXTURES}/small:busybox-amd64`
const GPU = '0000:a2:00.0'
const VF = '0000:82:00.4'

let sys: FakeSysfs
let dataDir: string
let driver: FakeDriver
let hm: Hypeman

const open = () =>
  Hypeman.open({
    dataDir,
    network: false,
    drivers: { qemu: driver },
    devices: { sysfsRoot: sys.root, onSysfsWrite: sys.kernel, pciIds: [] },
    defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' },
    logger: silentLogger,
  })

beforeEach(async () => {
  sys = await FakeSysfs.create()
  await sys.addDriver('vfio-pci')
  await sys.addPci(GPU, { vendor: '10de', device: '27b8', class: '0x030200', group: 3, driver: 'nvidia' })
  await sys.addPci(VF, { vendor: '10de', device: '26b9', class: '0x030200', group: 40, driver: 'nvidia' })
  await sys.addMdevParent(VF, [{ type: 'nvidia-1145', name: 'NVIDIA L40S-1Q', available: 1 }])
  dataDir = await mkdtemp(join(tmpdir(), 'hm-dev-inst-'))
  driver = new FakeDriver()
  hm = await open()
  await hm.devices.create({ pciAddress: GPU, name: 'l4' })
})

afterEach(async () => {
  await hm.close().catch(() => {})
  await rm(dataDir, { recursive: true, force: true })
  await sys.close()
})

const mdevs = async () => (await import('node:fs/promises')).readdir(join(sys.root, 'bus/mdev/devices'))

describe('an instance with a passthrough device and a vGPU', () => {
  it('binds the device, makes the mdev, hands both to the VMM, and gives them back on delete', async () => {
    const inst = await hm.instances.create({ image: BUSYBOX, name: 'gpu-job', devices: ['l4'], gpu: { profile: 'L40S-1Q' } }, { waitForRunning: false })
    const [uuid] = await mdevs()
    expect(inst.gpu).toEqual({ profile: 'L40S-1Q', mdevUuid: uuid })
    expect(inst.devices).toEqual([(await hm.devices.get('l4')).id])
    expect(await hm.devices.get('l4')).toMatchObject({ attachedTo: inst.id, boundToVfio: true })
    expect(sys.writes).toEqual([
      [`bus/pci/devices/${GPU}/driver_override`, 'vfio-pci'],
      ['bus/pci/drivers/nvidia/unbind', GPU],
      ['bus/pci/drivers/vfio-pci/bind', GPU],
      [`class/mdev_bus/${VF}/mdev_supported_types/nvidia-1145/create`, uuid],
    ])

    const spec = driver.starts[0]!
    expect(spec.passthrough).toEqual([
      { sysfsPath: join(sys.root, 'bus/pci/devices', GPU), pciAddress: GPU },
      { sysfsPath: join(sys.root, 'bus/mdev/devices', uuid!) },
    ])
    const argv = buildQemuArgv(spec, { accel: 'tcg', qmpSocket: '/r/qmp.sock', pidFile: '/r/qemu.pid' })
    expect(argv.filter((a) => a.startsWith('vfio-pci'))).toEqual([
      `vfio-pci,id=hostdev0,host=${GPU}`,
      `vfio-pci,id=hostdev1,sysfsdev=${join(sys.root, 'bus/mdev/devices', uuid!)}`,
    ])

    // A second instance cannot have the device, nor a vGPU the parent has no room for; nothing is made.
    await expect(hm.instances.create({ image: BUSYBOX, name: 'second', devices: ['l4'] })).rejects.toMatchObject({ code: 'device_in_use', field: 'devices[0]' })
    await expect(hm.instances.create({ image: BUSYBOX, name: 'second', gpu: { profile: 'L40S-1Q' } })).rejects.toMatchObject({ code: 'gpu_profile_exhausted', field: 'gpu.profile' })
    await expect(hm.instances.create({ image: BUSYBOX, name: 'second', gpu: { profile: 'A100-1C' } })).rejects.toMatchObject({ code: 'gpu_profile_not_found', field: 'gpu.profile' })
    await expect(hm.devices.delete('l4')).rejects.toMatchObject({ code: 'device_in_use' })
    expect((await hm.instances.list()).map((i) => i.name)).toEqual(['gpu-job'])

    sys.writes.length = 0
    await hm.instances.delete(inst.id)
    expect(sys.writes).toEqual([
      [`bus/mdev/devices/${uuid}/remove`, '1'],
      [`bus/pci/devices/${GPU}/driver_override`, '\n'],
      ['bus/pci/drivers/vfio-pci/unbind', GPU],
      ['bus/pci/drivers/nvidia/bind', GPU],
    ])
    expect(await sys.driverOf(GPU)).toBe('nvidia')
    expect(await mdevs()).toEqual([])
    expect(await hm.devices.get('l4')).toMatchObject({ attachedTo: null, boundToVfio: false })
    await hm.devices.delete('l4')
  })

  it('standby and restore boot the VMM with the same devices and vGPU, still bound', async () => {
    const inst = await hm.instances.create({ image: BUSYBOX, name: 'sleeper', devices: ['l4'], gpu: { profile: 'L40S-1Q' } })
    expect((await hm.instances.standby(inst.id)).state).toBe('Standby')
    expect(await sys.driverOf(GPU)).toBe('vfio-pci') // the claim outlives the VMM
    expect(await mdevs()).toEqual([inst.gpu!.mdevUuid])
    await hm.instances.restore(inst.id)
    const [cold, restored] = driver.starts
    expect(restored!.restoreFrom).toBeDefined()
    expect(restored!.passthrough).toEqual(cold!.passthrough)
    await hm.instances.delete(inst.id)
    expect(await sys.driverOf(GPU)).toBe('nvidia')
  })

  it('a create that fails after the devices step gives them back', async () => {
    const err = await hm.instances.create({ image: `${BUSYBOX}-nonexistent`, name: 'bad-image', devices: ['l4'], gpu: { profile: 'L40S-1Q' } }).catch((e) => e)
    expect(err.step).toBe('image')
    expect(await sys.driverOf(GPU)).toBe('nvidia')
    expect(await mdevs()).toEqual([])
    expect(await hm.devices.get('l4')).toMatchObject({ attachedTo: null })
    expect(await hm.instances.list()).toEqual([])
  })

  it('the reconcile after a crash mid-create gives the device back and removes the mdev', async () => {
    const inst = await hm.instances.create({ image: BUSYBOX, name: 'crashed', devices: ['l4'], gpu: { profile: 'L40S-1Q' } }, { waitForRunning: false })
    await hm.close()
    // What a kill -9 during the create leaves: the record still `creating`, its steps recorded.
    const recordPath = join(dataDir, 'instances', inst.id, 'instance.json')
    const record = JSON.parse(await readFile(recordPath, 'utf8'))
    expect(record.steps).toEqual(expect.arrayContaining(['devices', 'gpu', 'vmm']))
    await writeFile(recordPath, JSON.stringify({ ...record, phase: 'creating' }))
    hm = await open()
    expect(await hm.instances.list()).toEqual([])
    expect(await sys.driverOf(GPU)).toBe('nvidia')
    expect(await mdevs()).toEqual([])
    expect(await hm.devices.get('l4')).toMatchObject({ attachedTo: null, boundToVfio: false })
    expect(driver.running.size).toBe(0)
  })

  it('a claim whose instance is gone is released at open', async () => {
    const inst = await hm.instances.create({ image: BUSYBOX, name: 'vanished', devices: ['l4'] }, { waitForRunning: false })
    await hm.close()
    await rm(join(dataDir, 'instances', inst.id), { recursive: true })
    hm = await open()
    expect(await sys.driverOf(GPU)).toBe('nvidia')
    expect(await hm.devices.get('l4')).toMatchObject({ attachedTo: null })
  })

  it('refuses devices on a hypervisor without VFIO, naming the field', async () => {
    await hm.close()
    driver = Object.assign(new FakeDriver(), { capabilities: { ...new FakeDriver().capabilities, passthrough: false } })
    hm = await open()
    await expect(hm.instances.create({ image: BUSYBOX, name: 'no-vfio', devices: ['l4'] })).rejects.toMatchObject({ code: 'not_supported', field: 'devices' })
    await expect(hm.instances.create({ image: BUSYBOX, name: 'no-vfio', gpu: { profile: 'L40S-1Q' } })).rejects.toMatchObject({ code: 'not_supported', field: 'gpu' })
    expect(sys.writes).toEqual([])
  })
})
