import { describe, expect, it } from 'vitest'
import { NotSupportedError, ValidationError } from '@hypeman-ts/common'
import { validateCreateParams, type SpecDefaults } from '../../src/instances/params.js'

const defaults: SpecDefaults = { size: '1GB', overlaySize: '10GB', vcpus: 2, hypervisor: 'qemu', available: ['qemu'], maxVcpus: 8, networkAvailable: false, skipKernelHeaders: false }
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
      skipKernelHeaders: false,
      hotplugBytes: 0,
      diskIoBytesPerSec: null,
      cmd: null,
      entrypoint: null,
    })
  })

  it('refuses a command line or environment larger than the guest can exec, naming the field', () => {
    const mb = 'x'.repeat(1_000_000)
    expect(fails({ env: { BIG: mb } })).toMatchObject({ code: 'invalid_input', field: 'env.BIG' })
    expect(fails({ cmd: ['echo', mb] })).toMatchObject({ code: 'invalid_input', field: 'cmd[1]' })
    expect(fails({ entrypoint: [mb] })).toMatchObject({ code: 'invalid_input', field: 'entrypoint[0]' })
    const many = Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`V${i}`, 'y'.repeat(120_000)]))
    expect(fails({ env: many })).toMatchObject({ code: 'invalid_input', field: 'env' })
    // Just under the per-string limit (NAME=value plus its NUL is 128 KiB) passes.
    expect(validateCreateParams({ ...base, env: { AB: 'z'.repeat(128 * 1024 - 4) } }, defaults).env.AB).toHaveLength(128 * 1024 - 4)
    expect(fails({ env: { AB: 'z'.repeat(128 * 1024 - 3) } })).toMatchObject({ field: 'env.AB' })
  })

  it('takes skipKernelHeaders from the create, else from the manager default', () => {
    const skipping = { ...defaults, skipKernelHeaders: true }
    expect(validateCreateParams(base, defaults).skipKernelHeaders).toBe(false)
    expect(validateCreateParams(base, skipping).skipKernelHeaders).toBe(true)
    expect(validateCreateParams({ ...base, skipKernelHeaders: null }, skipping).skipKernelHeaders).toBe(true)
    expect(validateCreateParams({ ...base, skipKernelHeaders: false }, skipping).skipKernelHeaders).toBe(false)
    expect(validateCreateParams({ ...base, skipKernelHeaders: true }, defaults).skipKernelHeaders).toBe(true)
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
    [{ skipKernelHeaders: 1 }, 'skipKernelHeaders'],
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
    [{ volumes: {} }, 'volumes'],
    [{ volumes: Array.from({ length: 17 }, (_, i) => ({ volumeId: `v${i}`, mountPath: `/v${i}` })) }, 'volumes'],
    [{ volumes: [{ mountPath: '/data' }] }, 'volumes[0].volumeId'],
    [{ volumes: [{ volumeId: 'v', mountPath: 'data' }] }, 'volumes[0].mountPath'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/' }] }, 'volumes[0].mountPath'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/a/../b' }] }, 'volumes[0].mountPath'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/a/' }] }, 'volumes[0].mountPath'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/proc' }] }, 'volumes[0].mountPath'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/sys/fs' }] }, 'volumes[0].mountPath'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/dev' }] }, 'volumes[0].mountPath'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/etc' }] }, 'volumes[0].mountPath'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/etc/resolv.conf' }] }, 'volumes[0].mountPath'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/a' }, { volumeId: 'w', mountPath: '/a' }] }, 'volumes[1].mountPath'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/a' }, { volumeId: 'v', mountPath: '/b' }] }, 'volumes[1].volumeId'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/a', readonly: 'yes' }] }, 'volumes[0].readonly'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/a', overlay: true, overlaySize: '1GB' }] }, 'volumes[0].overlay'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/a', readonly: true, overlay: true }] }, 'volumes[0].overlaySize'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/a', readonly: true, overlaySize: '1GB' }] }, 'volumes[0].overlaySize'],
    [{ volumes: [{ volumeId: 'v', mountPath: '/a', size: '1GB' }] }, 'volumes[0].size'],
  ])('rejects volumes %j naming %s', (params, field) => {
    const err = fails(params)
    expect(err.code).toBe('invalid_input')
    expect(err.field).toBe(field)
  })

  it('accepts volume mounts, checked and parsed', () => {
    const spec = validateCreateParams({ ...base, volumes: [
      { volumeId: 'v', mountPath: '/data' },
      { volumeId: 'w', mountPath: '/etc/app conf', readonly: true, overlay: true, overlaySize: '64MB' },
    ] }, defaults)
    expect(spec.volumes).toEqual([
      { volumeId: 'v', mountPath: '/data', readonly: false, overlay: false, overlaySize: null, overlayBytes: null },
      { volumeId: 'w', mountPath: '/etc/app conf', readonly: true, overlay: true, overlaySize: '64MB', overlayBytes: 64 * 1024 * 1024 },
    ])
  })

  it.each([
    [{ devices: 'gpu0' }, 'devices'],
    [{ devices: [''] }, 'devices[0]'],
    [{ devices: ['a', 7] }, 'devices[1]'],
    [{ devices: ['a', 'b', 'a'] }, 'devices[2]'],
    [{ devices: Array.from({ length: 17 }, (_, i) => `d${i}`) }, 'devices'],
    [{ gpu: 'L40S-1Q' }, 'gpu'],
    [{ gpu: {} }, 'gpu.profile'],
    [{ gpu: { profile: '' } }, 'gpu.profile'],
    [{ gpu: { profile: 'L40S-1Q', count: 2 } }, 'gpu.count'],
  ])('rejects devices/gpu %j naming %s', (params, field) => {
    const err = fails(params)
    expect(err.code).toBe('invalid_input')
    expect(err.field).toBe(field)
  })

  it('accepts devices and a vGPU profile', () => {
    const spec = validateCreateParams({ ...base, devices: ['l4-gpu', 'nic0'], gpu: { profile: 'L40S-1Q' } }, defaults)
    expect(spec.devices).toEqual(['l4-gpu', 'nic0'])
    expect(spec.gpu).toEqual({ profile: 'L40S-1Q' })
    expect(validateCreateParams(base, defaults)).toMatchObject({ devices: [], gpu: null })
  })

  it.each([
    [{ network: { enabled: true } }, 'network.enabled'],
    [{ hypervisor: 'firecracker' }, 'hypervisor'],
  ])('refuses %j as not supported yet', (params, field) => {
    const err = fails(params)
    expect(err).toBeInstanceOf(NotSupportedError)
    expect(err.code).toBe('not_supported')
    expect(err.field).toBe(field)
  })

  it.each([
    [{ network: { enabled: false, bandwidthDownload: '1Gbps' } }, 'network.bandwidthDownload', /needs network.enabled/],
    [{ network: { egress: { enabled: true } } }, 'network.egress.enabled', /needs network.enabled/],
    [{ credentials: { KEY: { source: { env: 'REAL' }, inject: [{ as: { header: 'Authorization', format: 'Bearer ${value}' } }] } } }, 'credentials', /egress/],
  ])('without a network, %j is refused', (params, field, why) => {
    const err = fails(params)
    expect(err).toBeInstanceOf(ValidationError)
    expect(err.field).toBe(field)
    expect(err.message).toMatch(why)
  })

  describe('with a network', () => {
    const net = { ...defaults, networkAvailable: true }
    const cred = { source: { env: 'OPENAI_REAL' }, inject: [{ hosts: ['api.openai.com'], as: { header: 'Authorization', format: 'Bearer ${value}' } }] }

    it('attaches by default, as the spec says, and parses rates in bits', () => {
      const s = validateCreateParams({ ...base, network: { bandwidthDownload: '125MB/s', bandwidthUpload: '10Mbps' } }, net)
      expect(s.network).toEqual({
        enabled: true,
        bandwidthDownload: '125MB/s',
        downloadBitsPerSec: 1e9,
        bandwidthUpload: '10Mbps',
        uploadBitsPerSec: 1e7,
        egress: { enabled: false, mode: 'all' },
      })
      expect(validateCreateParams({ ...base, network: { enabled: false } }, net).network.enabled).toBe(false)
    })

    it('takes credentials with mediated egress and checks them as the proxy will', () => {
      const s = validateCreateParams(
        { ...base, env: { OPENAI_REAL: 'sk-real' }, network: { egress: { enabled: true, enforcement: { mode: 'http_https_only' } } }, credentials: { OPENAI_API_KEY: cred } },
        net,
      )
      expect(s.network.egress).toEqual({ enabled: true, mode: 'http_https_only' })
      expect(s.credentials.OPENAI_API_KEY).toEqual(cred)
    })

    it.each([
      [{ credentials: { OPENAI_API_KEY: cred } }, 'credentials.OPENAI_API_KEY.source.env'],
      [{ env: { OPENAI_REAL: 'x' }, credentials: { OPENAI_API_KEY: { ...cred, inject: [{ as: { header: 'Authorization', format: 'Bearer' } }] } } }, 'credentials.OPENAI_API_KEY.inject[0].as.format'],
      [{ env: { OPENAI_REAL: 'x' }, credentials: { OPENAI_API_KEY: { ...cred, inject: [{ hosts: ['*.*.com'], as: cred.inject[0]!.as }] } } }, 'credentials.OPENAI_API_KEY.inject[0].hosts'],
    ])('names the bad credential field: %j', (params, field) => {
      let err: ValidationError | undefined
      try {
        validateCreateParams({ ...base, network: { egress: { enabled: true } }, ...params }, net)
      } catch (e) {
        err = e as ValidationError
      }
      expect(err?.field).toMatch(new RegExp(`^${field.replace(/[.[\]*]/g, '\\$&')}`))
      expect(err?.message).not.toContain('sk-real')
    })
  })

  it('accepts the subsystems when they ask for nothing', () => {
    expect(() => validateCreateParams({ ...base, network: { enabled: false }, devices: [], volumes: [], credentials: {} }, defaults)).not.toThrow()
  })
})
