/**
 * Devices on a fabricated sysfs (support/fake-sysfs.ts): discovery, registration and its
 * refusals (no IOMMU, a shared IOMMU group, names and addresses taken), the exact writes of a move
 * to vfio-pci and back to the original driver, claims (in use, whole groups), and vGPU mdevs.
 * No real device is touched: these machines have no IOMMU.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { DeviceManager, deviceToWire, availableDeviceToWire } from '../../src/index.js'
import { FakeSysfs } from '../support/fake-sysfs.js'

const GPU = '0000:a2:00.0'
const GPU_AUDIO = '0000:a2:00.1'
const NIC = '0000:03:00.0'
const BRIDGE = '0000:00:01.0'
const LONELY = '0000:05:00.0' // on a host without an IOMMU for it

let sys: FakeSysfs
let dir: string
let dm: DeviceManager

beforeEach(async () => {
  sys = await FakeSysfs.create()
  dir = await mkdtemp(join(tmpdir(), 'hm-devices-'))
  await sys.addDriver('vfio-pci')
  await sys.addPci(BRIDGE, { vendor: '8086', device: '1901', class: '0x060400', group: 1, driver: 'pcieport' })
  await sys.addPci(GPU, { vendor: '10de', device: '27b8', class: '0x030200', group: 1, driver: 'nvidia' })
  await sys.addPci(NIC, { vendor: '8086', device: '1533', class: '0x020000', group: 7, driver: 'igb' })
  await sys.addPci(LONELY, { vendor: '1af4', device: '1000', class: '0x020000' })
  const ids = join(dir, 'pci.ids')
  await writeFile(ids, '# comment\n10de  NVIDIA Corporation\n\t27b8  AD104GL [L4]\n\t\t10de 16ca  L4\n8086  Intel Corporation\n\t1533  I210 Gigabit Network Connection\nC 00  Unclassified device\n')
  dm = new DeviceManager({ dir: join(dir, 'devices'), root: sys.root, onWrite: sys.kernel, pciIds: [ids] })
  await dm.init()
})

afterEach(async () => {
  await sys.close()
  await rm(dir, { recursive: true, force: true })
})

describe('discovery', () => {
  it('lists the functions in an IOMMU group with ids, names, group and driver; bridges and IOMMU-less ones left out', async () => {
    const found = await dm.available()
    expect(found).toEqual([
      { pciAddress: NIC, vendorId: '8086', deviceId: '1533', vendorName: 'Intel Corporation', deviceName: 'I210 Gigabit Network Connection', iommuGroup: 7, currentDriver: 'igb' },
      { pciAddress: GPU, vendorId: '10de', deviceId: '27b8', vendorName: 'NVIDIA Corporation', deviceName: 'AD104GL [L4]', iommuGroup: 1, currentDriver: 'nvidia' },
    ])
    expect(availableDeviceToWire(found[1]!)).toEqual({
      pci_address: GPU, vendor_id: '10de', device_id: '27b8', vendor_name: 'NVIDIA Corporation', device_name: 'AD104GL [L4]', iommu_group: 1, current_driver: 'nvidia',
    })
  })

  it('works without a pci.ids file (names left out)', async () => {
    const bare = new DeviceManager({ dir: join(dir, 'devices'), root: sys.root, pciIds: [join(dir, 'none')] })
    expect((await bare.available())[0]).toEqual({ pciAddress: NIC, vendorId: '8086', deviceId: '1533', iommuGroup: 7, currentDriver: 'igb' })
  })
})

describe('registration', () => {
  it('registers a GPU whose group holds only a bridge, with a default name, and finds it by id and name', async () => {
    const d = await dm.create({ pciAddress: GPU.toUpperCase(), tags: { team: 'ml' } })
    expect(d).toMatchObject({ name: 'pci-0000-a2-00-0', type: 'gpu', pciAddress: GPU, vendorId: '10de', deviceId: '27b8', iommuGroup: 1, boundToVfio: false, attachedTo: null })
    expect(await dm.get(d.id)).toEqual(d)
    expect(await dm.get('pci-0000-a2-00-0')).toEqual(d)
    expect(deviceToWire(d)).toMatchObject({ pci_address: GPU, bound_to_vfio: false, attached_to: null, type: 'gpu' })
    const nic = await dm.create({ pciAddress: NIC, name: 'nic0' })
    expect(nic.type).toBe('pci')
    expect((await dm.list({ tags: { team: 'ml' } })).map((x) => x.id)).toEqual([d.id])
    expect((await dm.list()).map((x) => x.name)).toEqual(['pci-0000-a2-00-0', 'nic0'])
    expect(sys.writes).toEqual([]) // registering touches nothing on the host
  })

  it.each([
    [{ pciAddress: 'a2:00.0' }, 'invalid_input', 'pciAddress'],
    [{ pciAddress: '0000:a2:00.9' }, 'invalid_input', 'pciAddress'],
    [{ pciAddress: '' }, 'invalid_input', 'pciAddress'],
    [{ pciAddress: GPU, name: '-x' }, 'invalid_input', 'name'],
    [{ pciAddress: GPU, name: 'a' }, 'invalid_input', 'name'],
    [{ pciAddress: GPU, tags: { 'bad key!': 'x' } }, 'invalid_input', 'tags.bad key!'],
    [{ pciAddress: '0000:0f:00.0' }, 'device_not_found', 'pciAddress'],
    [{ pciAddress: LONELY }, 'iommu_unavailable', 'pciAddress'],
  ])('refuses %j: %s naming %s', async (params, code, field) => {
    await expect(dm.create(params as never)).rejects.toMatchObject({ code, field })
    expect(await dm.list()).toEqual([])
  })

  it('refuses a device whose IOMMU group holds another that is not registered, then takes it once that one is', async () => {
    await sys.addPci(GPU_AUDIO, { vendor: '10de', device: '22bc', class: '0x040300', group: 1, driver: 'snd_hda_intel' })
    const err = await dm.create({ pciAddress: GPU, name: 'l4' }).catch((e) => e)
    expect(err).toMatchObject({ code: 'iommu_group_conflict', field: 'pciAddress', details: { iommuGroup: 1, devices: [GPU_AUDIO] } })
    expect(err.message).toMatch(/register it too/)
    // The way out for a multi-function group: the companion bound to vfio-pci by the operator first.
    await sys.kernel('bus/pci/drivers/snd_hda_intel/unbind', GPU_AUDIO)
    await writeFile(join(sys.root, 'bus/pci/devices', GPU_AUDIO, 'driver_override'), 'vfio-pci')
    await sys.kernel('bus/pci/drivers/vfio-pci/bind', GPU_AUDIO)
    expect((await dm.create({ pciAddress: GPU, name: 'l4' })).iommuGroup).toBe(1)
    await dm.create({ pciAddress: GPU_AUDIO, name: 'l4-audio' }) // its group-mate is registered now
  })

  it('refuses a taken name and an address registered twice, and deletes', async () => {
    const d = await dm.create({ pciAddress: GPU, name: 'l4' })
    await expect(dm.create({ pciAddress: NIC, name: 'l4' })).rejects.toMatchObject({ code: 'device_exists', field: 'name' })
    await expect(dm.create({ pciAddress: GPU, name: 'other' })).rejects.toMatchObject({ code: 'device_exists', field: 'pciAddress' })
    await dm.delete('l4')
    await expect(dm.get(d.id)).rejects.toMatchObject({ code: 'device_not_found', field: 'id' })
    await expect(dm.delete('l4')).rejects.toMatchObject({ code: 'device_not_found' })
  })
})

describe('GPU status without vGPU', () => {
  it('is null with no GPU registered, and counts registered GPUs in passthrough mode', async () => {
    expect(await dm.gpuStatus()).toBeNull()
    await dm.create({ pciAddress: GPU, name: 'l4' })
    await dm.create({ pciAddress: NIC, name: 'nic0' })
    await dm.claim('i', ['l4'])
    expect(await dm.gpuStatus()).toEqual({ mode: 'passthrough', totalSlots: 1, usedSlots: 1, devices: [{ name: 'l4', available: false }] })
  })
})

describe('claims and vfio-pci', () => {
  it('moves a claimed device to vfio-pci with driver_override, unbind, bind — and back to its driver on release', async () => {
    const d = await dm.create({ pciAddress: GPU, name: 'l4' })
    expect(await dm.claim('inst1', ['l4'])).toEqual([d.id])
    expect(sys.writes).toEqual([
      [`bus/pci/devices/${GPU}/driver_override`, 'vfio-pci'],
      ['bus/pci/drivers/nvidia/unbind', GPU],
      ['bus/pci/drivers/vfio-pci/bind', GPU],
    ])
    expect(await sys.driverOf(GPU)).toBe('vfio-pci')
    expect(await dm.get('l4')).toMatchObject({ boundToVfio: true, attachedTo: 'inst1' })
    expect(await dm.passthroughSpecs([d.id])).toEqual([{ sysfsPath: join(sys.root, 'bus/pci/devices', GPU), pciAddress: GPU }])

    // Claimed again by the same instance (a retried step): nothing more is written.
    await dm.claim('inst1', [d.id])
    expect(sys.writes).toHaveLength(3)

    sys.writes.length = 0
    await dm.release('inst1')
    expect(sys.writes).toEqual([
      [`bus/pci/devices/${GPU}/driver_override`, '\n'],
      ['bus/pci/drivers/vfio-pci/unbind', GPU],
      ['bus/pci/drivers/nvidia/bind', GPU],
    ])
    expect(await sys.driverOf(GPU)).toBe('nvidia')
    expect(await dm.get('l4')).toMatchObject({ boundToVfio: false, attachedTo: null })
    sys.writes.length = 0
    await dm.release('inst1') // idempotent
    expect(sys.writes).toEqual([])
  })

  it('refuses a device another instance holds, naming devices[i], and its delete while attached', async () => {
    await dm.create({ pciAddress: GPU, name: 'l4' })
    await dm.create({ pciAddress: NIC, name: 'nic0' })
    await dm.claim('inst1', ['l4'])
    const writes = sys.writes.length
    await expect(dm.claim('inst2', ['nic0', 'l4'])).rejects.toMatchObject({ code: 'device_in_use', field: 'devices[1]', details: { instance: 'inst1' } })
    await expect(dm.claim('inst2', ['nic0', 'nic0'])).rejects.toMatchObject({ code: 'invalid_input', field: 'devices[1]' })
    await expect(dm.claim('inst2', ['nope'])).rejects.toMatchObject({ code: 'device_not_found', field: 'devices[0]' })
    expect(sys.writes).toHaveLength(writes) // refused claims touch nothing, nic0 included
    expect((await dm.get('nic0')).attachedTo).toBeNull()
    await expect(dm.delete('l4')).rejects.toMatchObject({ code: 'device_in_use', field: 'id' })
  })

  it('gives a VM whole IOMMU groups: one function of a registered pair alone is refused, both pass', async () => {
    await sys.addPci(GPU_AUDIO, { vendor: '10de', device: '22bc', class: '0x040300', group: 1, driver: 'snd_hda_intel' })
    // Registered as a pair (the audio function was with vfio-pci when the GPU was registered, then given back).
    await sys.kernel('bus/pci/drivers/snd_hda_intel/unbind', GPU_AUDIO)
    await sys.kernel('bus/pci/drivers/vfio-pci/bind', GPU_AUDIO)
    await dm.create({ pciAddress: GPU, name: 'l4' })
    await dm.create({ pciAddress: GPU_AUDIO, name: 'l4-audio' })
    await sys.kernel('bus/pci/drivers/vfio-pci/unbind', GPU_AUDIO)
    await sys.kernel('bus/pci/drivers/snd_hda_intel/bind', GPU_AUDIO)
    await expect(dm.claim('inst1', ['l4'])).rejects.toMatchObject({ code: 'iommu_group_conflict', field: 'devices[0]', details: { devices: [GPU_AUDIO] } })
    await dm.claim('inst1', ['l4', 'l4-audio'])
    expect([await sys.driverOf(GPU), await sys.driverOf(GPU_AUDIO)]).toEqual(['vfio-pci', 'vfio-pci'])
    await dm.release('inst1')
    expect([await sys.driverOf(GPU), await sys.driverOf(GPU_AUDIO)]).toEqual(['nvidia', 'snd_hda_intel'])
  })

  it('says so when vfio-pci is not loaded, and the claim it wrote is released', async () => {
    await rm(join(sys.root, 'bus/pci/drivers/vfio-pci'), { recursive: true })
    await dm.create({ pciAddress: NIC, name: 'nic0' })
    await expect(dm.claim('inst1', ['nic0'])).rejects.toMatchObject({ code: 'vfio_unavailable' })
    expect(await sys.driverOf(NIC)).toBe('igb')
    await dm.release('inst1')
    expect(await dm.get('nic0')).toMatchObject({ attachedTo: null })
    expect(await sys.driverOf(NIC)).toBe('igb')
  })

  it('reports a bind the kernel refuses as device_bind_failed, and the release puts the device back', async () => {
    await dm.create({ pciAddress: GPU, name: 'l4' })
    const refusing = new DeviceManager({
      dir: join(dir, 'devices'),
      root: sys.root,
      onWrite: async (path, value) => {
        if (path === 'bus/pci/drivers/vfio-pci/bind') throw Object.assign(new Error('EBUSY'), { code: 'EBUSY' })
        await sys.kernel(path, value)
      },
    })
    const err = await refusing.claim('inst1', ['l4']).catch((e) => e)
    expect(err).toMatchObject({ code: 'device_bind_failed' })
    expect(err.message).toMatch(/vfio-pci\/bind failed: EBUSY/)
    expect(await sys.driverOf(GPU)).toBeUndefined() // unbound from nvidia, not with vfio-pci
    await dm.release('inst1')
    expect(await sys.driverOf(GPU)).toBe('nvidia')
  })

  it('gives back a device a crash left half-moved (unbound, not yet with vfio-pci)', async () => {
    await dm.create({ pciAddress: NIC, name: 'nic0' })
    const r = (await dm.store.all())[0]!
    await dm.store.write({ ...r, attachedTo: 'gone', originalDriver: 'igb' })
    await writeFile(join(sys.root, 'bus/pci/devices', NIC, 'driver_override'), 'vfio-pci')
    await sys.kernel('bus/pci/drivers/igb/unbind', NIC)
    sys.writes.length = 0
    expect(await dm.releaseOrphans(async (id) => id !== 'gone')).toEqual(['gone'])
    expect(sys.writes).toEqual([
      [`bus/pci/devices/${NIC}/driver_override`, '\n'],
      ['bus/pci/drivers/igb/bind', NIC],
    ])
    expect(await dm.get('nic0')).toMatchObject({ attachedTo: null, boundToVfio: false })
  })

  it('leaves a device that was with vfio-pci before as it was', async () => {
    await sys.kernel('bus/pci/drivers/igb/unbind', NIC)
    await sys.kernel('bus/pci/drivers/vfio-pci/bind', NIC)
    await dm.create({ pciAddress: NIC, name: 'nic0' })
    sys.writes.length = 0
    await dm.claim('i', ['nic0'])
    await dm.release('i')
    expect(sys.writes).toEqual([])
    expect(await sys.driverOf(NIC)).toBe('vfio-pci')
  })
})

describe('vGPU (mdev)', () => {
  const VF1 = '0000:82:00.4'
  const VF2 = '0000:82:00.5'
  beforeEach(async () => {
    for (const vf of [VF1, VF2]) {
      await sys.addPci(vf, { vendor: '10de', device: '26b9', class: '0x030200', group: vf === VF1 ? 40 : 41, driver: 'nvidia' })
      await sys.addMdevParent(vf, [
        { type: 'nvidia-1145', name: 'NVIDIA L40S-1Q', available: vf === VF1 ? 0 : 1, description: 'num_heads=4, frl_config=60, framebuffer=1024M, max_resolution=5120x2880, max_instance=48' },
        { type: 'nvidia-1146', name: 'NVIDIA L40S-2Q', available: 0 },
      ])
    }
  })

  it('lists profiles with what is left, and the slots in use', async () => {
    expect(await dm.gpuProfiles()).toEqual([
      { name: 'L40S-1Q', framebufferMb: 1024, available: 1 },
      { name: 'L40S-2Q', framebufferMb: 0, available: 0 },
    ])
    expect(await dm.gpuStatus()).toMatchObject({ mode: 'vgpu', totalSlots: 2, usedSlots: 0 })
    const mdev = await dm.createGpu('L40S-1Q', async () => {})
    expect(await dm.gpuStatus()).toMatchObject({ mode: 'vgpu', totalSlots: 2, usedSlots: 1, profiles: [{ name: 'L40S-1Q', available: 0 }, { name: 'L40S-2Q', available: 0 }] })
    await dm.removeGpu(mdev.uuid)
    expect(await dm.gpuStatus()).toMatchObject({ usedSlots: 0 })
  })

  it('creates an mdev by writing a UUID to create on a parent with room, and removes it with 1', async () => {
    const recorded: string[] = []
    const mdev = await dm.createGpu('L40S-1Q', async (m) => void recorded.push(m.uuid))
    expect(mdev).toMatchObject({ profile: 'L40S-1Q', parent: VF2, type: 'nvidia-1145' })
    expect(mdev.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    expect(recorded).toEqual([mdev.uuid]) // recorded before the kernel was asked
    expect(sys.writes).toEqual([[`class/mdev_bus/${VF2}/mdev_supported_types/nvidia-1145/create`, mdev.uuid]])
    expect(dm.gpuPassthrough(mdev.uuid)).toEqual({ sysfsPath: join(sys.root, 'bus/mdev/devices', mdev.uuid) })
    expect(await sys.available(VF2, 'nvidia-1145')).toBe(0)
    await expect(dm.checkGpu('L40S-1Q')).rejects.toMatchObject({ code: 'gpu_profile_exhausted', field: 'gpu.profile' })

    await dm.removeGpu(mdev.uuid)
    expect(sys.writes.at(-1)).toEqual([`bus/mdev/devices/${mdev.uuid}/remove`, '1'])
    expect(await sys.available(VF2, 'nvidia-1145')).toBe(1)
    const n = sys.writes.length
    await dm.removeGpu(mdev.uuid) // gone already: nothing to write
    expect(sys.writes).toHaveLength(n)
  })

  it('matches a profile by its full type name too, and refuses unknown and exhausted ones naming gpu.profile', async () => {
    await dm.checkGpu('NVIDIA L40S-1Q')
    const err = await dm.createGpu('H100-80C', async () => {}).catch((e) => e)
    expect(err).toMatchObject({ code: 'gpu_profile_not_found', field: 'gpu.profile' })
    expect(err.message).toMatch(/L40S-1Q, L40S-2Q/)
    await expect(dm.createGpu('L40S-2Q', async () => {})).rejects.toMatchObject({ code: 'gpu_profile_exhausted', field: 'gpu.profile' })
    expect(sys.writes).toEqual([])
  })
})
