/**
 * hm.capabilities(): hypervisors from the drivers this build has and the manager holds, their
 * features from the drivers' capability flags, the network from the options (nothing created).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { CLOUD_HYPERVISOR_CAPABILITIES, FIRECRACKER_CAPABILITIES, QEMU_CAPABILITIES } from '@hypeman-ts/vmm-drivers'
import { describeCapabilities, Hypeman, hypervisorFeatures } from '../src/index.js'

const dirs: string[] = []
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true })
})

describe('hypervisorFeatures', () => {
  it('names only what core offers of each driver', () => {
    expect(hypervisorFeatures(QEMU_CAPABILITIES)).toEqual(['standby', 'fork', 'pause', 'disk-io-limit', 'gpu-passthrough'])
    expect(hypervisorFeatures(CLOUD_HYPERVISOR_CAPABILITIES)).toEqual(expect.arrayContaining(['vsock']))
    expect(hypervisorFeatures(FIRECRACKER_CAPABILITIES)).toEqual(expect.arrayContaining(['vsock']))
    expect(hypervisorFeatures({ ...QEMU_CAPABILITIES, snapshot: false, pause: false, diskThrottle: false, passthrough: false })).toEqual(['fork'])
  })
})

describe('describeCapabilities', () => {
  it('lists the Linux hypervisors by name, available when the manager has the driver', () => {
    const c = describeCapabilities({ drivers: ['qemu', 'firecracker'], defaultHypervisor: 'cloud-hypervisor', defaultPlatform: 'linux/arm64' })
    expect(c.hypervisors.map((h) => [h.name, h.available])).toEqual([
      ['cloud-hypervisor', false],
      ['firecracker', true],
      ['qemu', true],
    ])
    expect(c.defaultHypervisor).toEqual({ name: 'cloud-hypervisor', available: false })
    expect(c.network).toEqual({ model: 'bridge', guestToGuest: false })
    expect(c.images.defaultPlatform).toBe('linux/arm64')
  })
})

describe('Hypeman.capabilities', () => {
  it('tells the network the options configure without creating it', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'hm-caps-'))
    dirs.push(dataDir)
    const hm = await Hypeman.open({ dataDir, network: { subnet: '10.77.0.0/24', isolate: false }, images: { defaultPlatform: 'linux/amd64' } })
    try {
      const c = hm.capabilities()
      expect(c.network).toEqual({ model: 'bridge', guestToGuest: true, gateway: '10.77.0.1', subnet: '10.77.0.0/24' })
      expect(c.defaultHypervisor).toEqual({ name: 'qemu', available: true })
      expect(c.images).toEqual({ platforms: [expect.stringMatching(/^linux\//)], defaultPlatform: 'linux/amd64' })
      expect(existsSync(join(dataDir, 'network', 'network.json'))).toBe(false)
    } finally {
      await hm.close()
    }
  })
})
