import { describe, expect, it } from 'vitest'
import { DestinationGuard, specialRange } from '../src/guard.js'

describe('DestinationGuard', () => {
  it.each([
    ['127.0.0.1', 'loopback'],
    ['10.1.2.3', 'private'],
    ['172.20.0.1', 'private'],
    ['192.168.1.1', 'private'],
    ['169.254.169.254', 'link-local'],
    ['100.64.0.1', 'carrier-grade NAT'],
    ['0.0.0.0', '"this network"'],
    ['224.0.0.1', 'multicast'],
    ['255.255.255.255', 'reserved'],
    ['::1', 'loopback'],
    ['fe80::1', 'link-local'],
    ['fd12::1', 'unique local (private)'],
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:10.0.0.1', 'private'],
    ['64:ff9b::7f00:1', 'NAT64'],
    ['2002:7f00:1::', '6to4'],
  ])('refuses %s (%s)', async (address, label) => {
    expect(specialRange(address)).toBe(label)
    const guard = new DestinationGuard()
    await expect(guard.resolve(address)).rejects.toMatchObject({ code: 'destination_blocked', status: 403, message: expect.stringContaining(label) })
  })

  it.each(['93.184.216.34', '8.8.8.8', '2606:4700::1111', '::ffff:8.8.8.8'])('permits public %s', async (address) => {
    expect(specialRange(address)).toBeUndefined()
    await expect(new DestinationGuard().resolve(address)).resolves.toMatchObject({ address })
  })

  it('permits allowed ranges only', async () => {
    const guard = new DestinationGuard({ allowDestinations: ['127.0.0.0/8', 'fd00::/8'] })
    await expect(guard.resolve('127.0.0.5')).resolves.toMatchObject({ address: '127.0.0.5' })
    await expect(guard.resolve('fd00::1')).resolves.toMatchObject({ address: 'fd00::1' })
    await expect(guard.resolve('10.0.0.1')).rejects.toMatchObject({ code: 'destination_blocked' })
  })

  it('checks the resolved address, and returns that address to dial', async () => {
    const guard = new DestinationGuard({ lookup: async () => [{ address: '10.0.0.7', family: 4 }] })
    await expect(guard.resolve('internal.example')).rejects.toMatchObject({ code: 'destination_blocked', message: expect.stringContaining('10.0.0.7 (resolved from internal.example)') })
  })

  it('dials the first permitted address of a mixed answer', async () => {
    const guard = new DestinationGuard({ lookup: async () => [{ address: '127.0.0.1', family: 4 }, { address: '93.184.216.34', family: 4 }] })
    await expect(guard.resolve('mixed.example')).resolves.toEqual({ address: '93.184.216.34', family: 4 })
  })

  it('resolves once per cache period, so a rebinding answer cannot slip in between check and dial', async () => {
    let calls = 0
    const answers = ['93.184.216.34', '127.0.0.1']
    const guard = new DestinationGuard({ lookup: async () => [{ address: answers[Math.min(calls++, 1)]!, family: 4 }], cacheTtlMs: 60_000 })
    const first = await guard.resolve('rebind.example')
    const again = await guard.resolve('rebind.example')
    expect(first).toEqual(again)
    expect(calls).toBe(1)
    const uncached = new DestinationGuard({ lookup: async () => [{ address: answers[Math.min(calls++, 1)]!, family: 4 }], cacheTtlMs: 0 })
    await expect(uncached.resolve('rebind.example')).rejects.toMatchObject({ code: 'destination_blocked' })
  })

  it('reports resolution failures as dns_failed', async () => {
    const guard = new DestinationGuard({ lookup: async () => Promise.reject(Object.assign(new Error('nope'), { code: 'ENOTFOUND' })) })
    await expect(guard.resolve('missing.example')).rejects.toMatchObject({ code: 'dns_failed', status: 502, message: 'cannot resolve missing.example (ENOTFOUND)' })
  })

  it('validates its allow list', () => {
    expect(() => new DestinationGuard({ allowDestinations: ['10.0.0.1/8'], field: 'allow_destinations' })).toThrow(expect.objectContaining({ field: 'allow_destinations[0]' }))
  })
})
