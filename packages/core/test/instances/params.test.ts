import { describe, expect, it } from 'vitest'
import { NotSupportedError, ValidationError } from '@hypeman-ts/common'
import { validateCreateParams, type SpecDefaults } from '../../src/instances/params.js'

const defaults: SpecDefaults = { size: '1GB', overlaySize: '10GB', vcpus: 2, hypervisor: 'qemu', available: ['qemu'], maxVcpus: 8 }
const base = { image: 'alpine', name: 'my-workload-1' }

function fails(params: Record<string, unknown>): ValidationError | NotSupportedError {
  try {
    validateCreateParams({ ...base, ...params }, defaults)
  } catch (e) {
    return e as ValidationError
  }
  throw new Error('expected a failure')
}

describe('validateCreateParams', () => {
  it('applies the spec defaults and normalises the image', () => {
    const s = validateCreateParams(base, defaults)
    expect(s).toMatchObject({
      image: 'docker.io/library/alpine:latest',
      size: '1GB',
      memoryBytes: 1024 ** 3,
      overlaySize: '10GB',
      overlayBytes: 10 * 1024 ** 3,
      vcpus: 2,
      hypervisor: 'qemu',
      skipGuestAgent: false,
      hotplugBytes: 0,
      diskIoBytesPerSec: null,
      cmd: null,
      entrypoint: null,
    })
  })

  it('parses sizes and rates', () => {
    const s = validateCreateParams({ ...base, size: '512MB', hotplugSize: '1GB', overlaySize: '2G', diskIoBps: '100MB/s', vcpus: 4 }, defaults)
    expect([s.memoryBytes, s.hotplugBytes, s.overlayBytes, s.diskIoBytesPerSec, s.vcpus]).toEqual([512 * 1024 ** 2, 1024 ** 3, 2 * 1024 ** 3, 100e6, 4])
  })

  it.each([
    [{ name: 'My-App' }, 'name'],
    [{ name: '-app' }, 'name'],
    [{ name: 'app-' }, 'name'],
    [{ name: 'a'.repeat(64) }, 'name'],
    [{ name: '' }, 'name'],
    [{ image: '' }, 'image'],
    [{ image: 'Alpine' }, 'image'],
    [{ image: 'docker.io/Upper/case' }, 'image'],
    [{ size: 'lots' }, 'size'],
    [{ size: '1MB' }, 'size'],
    [{ size: '1000000001B' }, 'size'],
    [{ hotplugSize: '100MB' }, 'hotplugSize'],
    [{ overlaySize: '-1GB' }, 'overlaySize'],
    [{ diskIoBps: '100MB' }, 'diskIoBps'],
    [{ vcpus: 0 }, 'vcpus'],
    [{ vcpus: 1.5 }, 'vcpus'],
    [{ vcpus: 99 }, 'vcpus'],
    [{ cmd: 'echo hi' }, 'cmd'],
    [{ entrypoint: [1] }, 'entrypoint'],
    [{ env: { '1BAD': 'x' } }, 'env.1BAD'],
    [{ env: { OK: 5 } }, 'env.OK'],
    [{ tags: { 'no!': 'x' } }, 'tags.no!'],
    [{ hypervisor: 'xen' }, 'hypervisor'],
    [{ skipGuestAgent: 'yes' }, 'skipGuestAgent'],
    [{ platform: 'windows/amd64' }, 'platform'],
    [{ bogus: 1 }, 'bogus'],
    [{ network: { bandwidthUpload: 'fast' } }, 'network.bandwidthUpload'],
    [{ network: { egress: { enforcement: { mode: 'some' } } } }, 'network.egress.enforcement.mode'],
  ])('rejects %j naming %s', (params, field) => {
    const err = fails(params)
    expect(err.field).toBe(field)
    expect(err.message).toContain(field)
  })

  it.each([
    [{ network: { enabled: true } }, 'network.enabled'],
    [{ network: { enabled: false, bandwidthDownload: '1Gbps' } }, 'network.bandwidthDownload'],
    [{ credentials: { KEY: { source: { env: 'REAL' }, inject: [{ as: { header: 'Authorization', format: 'Bearer ${value}' } }] } } }, 'credentials'],
    [{ devices: ['gpu0'] }, 'devices'],
    [{ gpu: { profile: 'L40S-1Q' } }, 'gpu'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/data' }] }, 'volumes'],
    [{ hypervisor: 'firecracker' }, 'hypervisor'],
  ])('refuses %j as not supported yet', (params, field) => {
    const err = fails(params)
    expect(err).toBeInstanceOf(NotSupportedError)
    expect(err.code).toBe('not_supported')
    expect(err.field).toBe(field)
  })

  it('accepts the subsystems when they ask for nothing', () => {
    expect(() => validateCreateParams({ ...base, network: { enabled: false }, devices: [], volumes: [], credentials: {} }, defaults)).not.toThrow()
  })
})
