/**
 * /devices and /devices/available through the official SDK against a real server whose manager
 * reads a fabricated sysfs (core's test support: a fake kernel acts on the writes), and an
 * instance created with a device and a vGPU over the API on a driver that starts no VMM (QEMU
 * cannot open VFIO devices here: no IOMMU). Every body is checked against the spec's schemas.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BadRequestError, ConflictError, NotFoundError } from '@onkernel/hypeman'
import { silentLogger } from '@hypeman-ts/common'
import { FakeDriver } from '../../core/test/support/fake-driver.js'
import { FakeSysfs } from '../../core/test/support/fake-sysfs.js'
import { BUSYBOX, specValidator, startServer, type TestServer } from './support/server.js'

const GPU = '0000:a2:00.0'
const NIC = '0000:03:00.0'
const VF = '0000:82:00.4'
let t: TestServer
let sys: FakeSysfs
const valid = specValidator()

beforeAll(async () => {
  sys = await FakeSysfs.create()
  await sys.addDriver('vfio-pci')
  await sys.addPci(GPU, { vendor: '10de', device: '27b8', class: '0x030200', group: 3, driver: 'nvidia' })
  await sys.addPci(NIC, { vendor: '8086', device: '1533', class: '0x020000', group: 7, driver: 'igb' })
  await sys.addPci('0000:05:00.0', { vendor: '1af4', device: '1000', class: '0x020000' })
  await sys.addPci(VF, { vendor: '10de', device: '26b9', class: '0x030200', group: 40, driver: 'nvidia' })
  await sys.addMdevParent(VF, [{ type: 'nvidia-1145', name: 'NVIDIA L40S-1Q', available: 2 }])
  t = await startServer({ drivers: { qemu: new FakeDriver() }, devices: { sysfsRoot: sys.root, onSysfsWrite: sys.kernel, pciIds: [] }, logger: silentLogger })
})
afterAll(async () => {
  await t?.close()
  await sys?.close()
})

describe('devices over the API', () => {
  it('lists the available devices', async () => {
    const found = await t.client.devices.listAvailable()
    for (const d of found) valid('AvailableDevice', d)
    expect(found.map((d) => [d.pci_address, d.iommu_group, d.current_driver])).toEqual([
      [NIC, 7, 'igb'],
      [VF, 40, 'nvidia'],
      [GPU, 3, 'nvidia'],
    ])
  })

  it('registers, lists by tags, gets by name, refuses bad and duplicate requests, deletes', async () => {
    const d = await t.client.devices.create({ pci_address: NIC, name: 'nic0', tags: { team: 'net' } })
    valid('Device', d)
    expect(d).toMatchObject({ name: 'nic0', type: 'pci', pci_address: NIC, vendor_id: '8086', device_id: '1533', iommu_group: 7, bound_to_vfio: false, attached_to: null })
    expect((await t.client.devices.list({ tags: { team: 'net' } })).map((x) => x.id)).toEqual([d.id])
    expect(await t.client.devices.retrieve('nic0')).toMatchObject({ id: d.id })

    const bad = await t.client.devices.create({ pci_address: 'a2:00.0' }).catch((e) => e)
    expect(bad).toBeInstanceOf(BadRequestError)
    expect(bad.error).toMatchObject({ code: 'invalid_input', details: [{ code: 'field', message: 'pci_address' }] })
    await expect(t.client.devices.create({ pci_address: '0000:0f:00.0' })).rejects.toBeInstanceOf(NotFoundError)
    await expect(t.client.devices.create({ pci_address: '0000:05:00.0' })).rejects.toMatchObject({ status: 400, error: { code: 'iommu_unavailable' } })
    await expect(t.client.devices.create({ pci_address: NIC, name: 'again' })).rejects.toBeInstanceOf(ConflictError)

    await t.client.devices.delete('nic0')
    await expect(t.client.devices.retrieve(d.id)).rejects.toBeInstanceOf(NotFoundError)
  })

  it('creates an instance with a device and a vGPU, reports the mdev, refuses the device to another and its delete while attached', async () => {
    const dev = await t.client.devices.create({ pci_address: GPU, name: 'l4' })
    const inst = await t.client.instances.create({ name: 'gpu-job', image: BUSYBOX, devices: ['l4'], gpu: { profile: 'L40S-1Q' }, network: { enabled: false } })
    valid('Instance', inst)
    expect(inst.gpu).toEqual({ profile: 'L40S-1Q', mdev_uuid: expect.stringMatching(/^[0-9a-f-]{36}$/) })
    expect(await t.client.devices.retrieve('l4')).toMatchObject({ attached_to: inst.id, bound_to_vfio: true })
    await expect(t.client.devices.delete('l4')).rejects.toMatchObject({ status: 409, error: { code: 'device_in_use' } })
    const taken = await t.client.instances.create({ name: 'second', image: BUSYBOX, devices: [dev.id], network: { enabled: false } }).catch((e) => e)
    expect(taken).toBeInstanceOf(ConflictError)
    expect(taken.error).toMatchObject({ code: 'device_in_use', details: [{ code: 'field', message: 'devices[0]' }] })
    const unknown = await t.client.instances.create({ name: 'second', image: BUSYBOX, gpu: { profile: 'H100-80C' }, network: { enabled: false } }).catch((e) => e)
    expect(unknown).toBeInstanceOf(BadRequestError)
    expect(unknown.error).toMatchObject({ code: 'gpu_profile_not_found', details: [{ code: 'field', message: 'gpu.profile' }] })

    const resources = await t.client.resources.get()
    expect(resources.gpu).toEqual({ mode: 'vgpu', total_slots: 1, used_slots: 1, profiles: [{ name: 'L40S-1Q', framebuffer_mb: 0, available: 1 }] })

    await t.client.instances.delete(inst.id)
    expect(await t.client.devices.retrieve('l4')).toMatchObject({ attached_to: null, bound_to_vfio: false })
    expect(await sys.driverOf(GPU)).toBe('nvidia')
  })
})
