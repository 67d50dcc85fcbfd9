import { describe, expect, it } from 'vitest'
import { networkInterfaces } from 'node:os'
import { DestinationGuard, type HostAddress, specialRange } from '../src/guard.js'

describe('DestinationGuard', () => {
  // Loopback and the unspecified address are the proxy's own host: a rule of their own, below.
  it.each([
    ['127.0.0.1', 'loopback', 'host_address_blocked'],
    ['10.1.2.3', 'private', 'destination_blocked'],
    ['172.20.0.1', 'private', 'destination_blocked'],
    ['192.168.1.1', 'private', 'destination_blocked'],
    ['169.254.169.254', 'link-local', 'destination_blocked'],
    ['100.64.0.1', 'carrier-grade NAT', 'destination_blocked'],
    ['0.0.0.0', '"this network"', 'host_address_blocked'],
    ['0.1.2.3', '"this network"', 'host_address_blocked'],
    ['224.0.0.1', 'multicast', 'destination_blocked'],
    ['255.255.255.255', 'reserved', 'destination_blocked'],
    ['::1', 'loopback', 'host_address_blocked'],
    ['fe80::1', 'link-local', 'destination_blocked'],
    ['fd12::1', 'unique local (private)', 'destination_blocked'],
    ['::ffff:127.0.0.1', 'loopback', 'host_address_blocked'],
    ['::ffff:10.0.0.1', 'private', 'destination_blocked'],
    ['64:ff9b::7f00:1', 'NAT64', 'host_address_blocked'],
    ['64:ff9b::a00:1', 'NAT64', 'destination_blocked'],
    ['2002:7f00:1::', '6to4', 'host_address_blocked'],
    ['2002:a00:1::', '6to4', 'destination_blocked'],
  ])('refuses %s (%s)', async (address, label, code) => {
    expect(specialRange(address)).toBe(label)
    const guard = new DestinationGuard({ hostAddresses: () => [] })
    await expect(guard.resolve(address, 443)).rejects.toMatchObject({ code, status: 403 })
    if (code === 'destination_blocked') await expect(guard.resolve(address, 443)).rejects.toMatchObject({ message: expect.stringContaining(label) })
  })

  it.each(['93.184.216.34', '8.8.8.8', '2606:4700::1111', '::ffff:8.8.8.8'])('permits public %s', async (address) => {
    expect(specialRange(address)).toBeUndefined()
    await expect(new DestinationGuard().resolve(address, 443)).resolves.toMatchObject({ address })
  })

  it('permits allowed ranges only', async () => {
    const guard = new DestinationGuard({ allowDestinations: ['10.0.0.0/8', 'fd00::/8'], hostAddresses: () => [] })
    await expect(guard.resolve('10.0.0.5', 443)).resolves.toMatchObject({ address: '10.0.0.5' })
    await expect(guard.resolve('fd00::1', 443)).resolves.toMatchObject({ address: 'fd00::1' })
    await expect(guard.resolve('192.168.0.1', 443)).rejects.toMatchObject({ code: 'destination_blocked' })
  })

  it('checks the resolved address, and returns that address to dial', async () => {
    const guard = new DestinationGuard({ lookup: async () => [{ address: '10.0.0.7', family: 4 }] })
    await expect(guard.resolve('internal.example', 443)).rejects.toMatchObject({ code: 'destination_blocked', message: expect.stringContaining('10.0.0.7 (resolved from internal.example)') })
  })

  it('dials the first permitted address of a mixed answer', async () => {
    const guard = new DestinationGuard({ lookup: async () => [{ address: '127.0.0.1', family: 4 }, { address: '93.184.216.34', family: 4 }] })
    await expect(guard.resolve('mixed.example', 443)).resolves.toEqual({ address: '93.184.216.34', family: 4 })
  })

  it('resolves once per cache period, so a rebinding answer cannot slip in between check and dial', async () => {
    let calls = 0
    const answers = ['93.184.216.34', '127.0.0.1']
    const guard = new DestinationGuard({ lookup: async () => [{ address: answers[Math.min(calls++, 1)]!, family: 4 }], cacheTtlMs: 60_000 })
    const first = await guard.resolve('rebind.example', 443)
    const again = await guard.resolve('rebind.example', 443)
    expect(first).toEqual(again)
    expect(calls).toBe(1)
    const uncached = new DestinationGuard({ lookup: async () => [{ address: answers[Math.min(calls++, 1)]!, family: 4 }], cacheTtlMs: 0 })
    await expect(uncached.resolve('rebind.example', 443)).rejects.toMatchObject({ code: 'host_address_blocked' })
  })

  it('reports resolution failures as dns_failed', async () => {
    const guard = new DestinationGuard({ lookup: async () => Promise.reject(Object.assign(new Error('nope'), { code: 'ENOTFOUND' })) })
    await expect(guard.resolve('missing.example', 443)).rejects.toMatchObject({ code: 'dns_failed', status: 502, message: 'cannot resolve missing.example (ENOTFOUND)' })
  })

  it('validates its allow list', () => {
    expect(() => new DestinationGuard({ allowDestinations: ['10.0.0.1/8'], field: 'allow_destinations' })).toThrow(expect.objectContaining({ field: 'allow_destinations[0]' }))
  })
})

/** Every address: only the host rule and the port rule can refuse. */
const EVERYWHERE = ['0.0.0.0/0', '::/0']

describe('DestinationGuard: the proxy\'s own host', () => {
  it('refuses every address of every interface of its namespace, whatever allowDestinations says', async () => {
    const guard = new DestinationGuard({ allowDestinations: EVERYWHERE })
    const addresses = Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((a) => a.address.split('%')[0]!))
    expect(addresses.filter((a) => !a.startsWith('127.') && a !== '::1').length).toBeGreaterThan(0)
    for (const address of addresses) {
      await expect(guard.resolve(address, 443), address).rejects.toMatchObject({ code: 'host_address_blocked', status: 403 })
      if (!address.includes(':')) {
        await expect(guard.resolve(`::ffff:${address}`, 80), address).rejects.toMatchObject({ code: 'host_address_blocked' })
      }
    }
  })

  it.each([
    '127.0.0.1', '127.1.2.3', '::1', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1', '::ffff:7f00:1', '0.0.0.0', '::',
    '::127.0.0.1', '64:ff9b::7f00:1', '2002:7f00:1::', '64:ff9b::198.18.0.1', '::ffff:198.18.0.1', '2002:c612:1::',
  ])('refuses %s however allowDestinations reads (loopback, unspecified, or the host in an IPv6 spelling)', async (address) => {
    const guard = new DestinationGuard({ allowDestinations: EVERYWHERE, hostAddresses: () => [{ address: '198.18.0.1', name: 'uplink0' }] })
    await expect(guard.resolve(address, 80)).rejects.toMatchObject({ code: 'host_address_blocked', status: 403 })
  })

  it('checks a name\'s answer, names the interface, and dials another address of a mixed answer', async () => {
    const hostAddresses = () => [{ address: '198.18.0.1', name: 'uplink0' }]
    const only = new DestinationGuard({ allowDestinations: EVERYWHERE, hostAddresses, lookup: async () => [{ address: '198.18.0.1', family: 4 }] })
    await expect(only.resolve('host.example', 443)).rejects.toMatchObject({
      code: 'host_address_blocked',
      message: expect.stringMatching(/198\.18\.0\.1:443 \(resolved from host\.example\) is on the proxy's own host \(uplink0\).*allowHostServices names "198\.18\.0\.1:443"/),
      details: { host: 'host.example', address: '198.18.0.1', port: 443 },
    })
    const mixed = new DestinationGuard({ allowDestinations: EVERYWHERE, hostAddresses, lookup: async () => [{ address: '198.18.0.1', family: 4 }, { address: '198.18.0.2', family: 4 }] })
    await expect(mixed.resolve('mixed.example', 443)).resolves.toEqual({ address: '198.18.0.2', family: 4 })
  })

  it('reads the host\'s addresses at every check, so one added after the start is refused too', async () => {
    const addresses: HostAddress[] = []
    const guard = new DestinationGuard({ allowDestinations: EVERYWHERE, hostAddresses: () => addresses })
    await expect(guard.resolve('10.123.0.1', 443)).resolves.toMatchObject({ address: '10.123.0.1' })
    addresses.push({ address: '10.123.0.1', name: 'hmbr0' })
    await expect(guard.resolve('10.123.0.1', 443)).rejects.toMatchObject({ code: 'host_address_blocked', message: expect.stringContaining('hmbr0') })
  })

  it('dials a host service allowHostServices names, at exactly that address and port', async () => {
    const guard = new DestinationGuard({
      allowHostServices: ['198.18.0.1:7777', '[::1]:9000', '127.0.0.1:443'],
      hostAddresses: () => [{ address: '198.18.0.1', name: 'uplink0' }, { address: '198.18.0.9', name: 'uplink0' }],
    })
    await expect(guard.resolve('198.18.0.1', 7777)).resolves.toMatchObject({ address: '198.18.0.1' })
    await expect(guard.resolve('::ffff:198.18.0.1', 7777)).resolves.toMatchObject({ address: '::ffff:198.18.0.1' })
    await expect(guard.resolve('::1', 9000)).resolves.toMatchObject({ address: '::1' })
    await expect(guard.resolve('127.0.0.1', 443)).resolves.toMatchObject({ address: '127.0.0.1' })
    // Same address, another port (allowed or not); another address of the host, same port.
    await expect(guard.resolve('198.18.0.1', 7778)).rejects.toMatchObject({ code: 'port_blocked' })
    await expect(guard.resolve('198.18.0.1', 443)).rejects.toMatchObject({ code: 'host_address_blocked' })
    await expect(guard.resolve('198.18.0.9', 7777)).rejects.toMatchObject({ code: 'port_blocked' })
    await expect(guard.resolve('127.0.0.1', 9000)).rejects.toMatchObject({ code: 'port_blocked' })
    await expect(guard.resolve('127.0.0.2', 443)).rejects.toMatchObject({ code: 'host_address_blocked' })
  })

  it('never dials its own listeners, even where allowHostServices names them', async () => {
    const guard = new DestinationGuard({ allowHostServices: ['127.0.0.1:18080', '198.18.0.1:18443'], hostAddresses: () => [{ address: '198.18.0.1', name: 'uplink0' }] })
    guard.addListener({ host: '127.0.0.1', port: 18080 })
    guard.addListener({ host: '0.0.0.0', port: 18443 })
    await expect(guard.resolve('127.0.0.1', 18080)).rejects.toMatchObject({ code: 'host_address_blocked', message: expect.stringContaining('refusing to connect to itself') })
    await expect(guard.resolve('198.18.0.1', 18443)).rejects.toMatchObject({ code: 'host_address_blocked', message: expect.stringContaining('refusing to connect to itself') })
    await expect(guard.resolve('::ffff:127.0.0.1', 18080)).rejects.toMatchObject({ code: 'host_address_blocked' })
  })
})

describe('DestinationGuard: ports', () => {
  it('dials ports 80 and 443 only by default, and refuses others before any lookup', async () => {
    let lookups = 0
    const guard = new DestinationGuard({ lookup: async () => (lookups++, [{ address: '93.184.216.34', family: 4 }]) })
    await expect(guard.resolve('93.184.216.34', 80)).resolves.toMatchObject({ address: '93.184.216.34' })
    await expect(guard.resolve('[2606:4700::1111]'.slice(1, -1), 443)).resolves.toMatchObject({ address: '2606:4700::1111' })
    for (const port of [22, 25, 8080, 8443, 6379]) {
      await expect(guard.resolve('public.example', port)).rejects.toMatchObject({
        code: 'port_blocked',
        status: 403,
        message: `public.example:${port}: the proxy connects to ports 80, 443 only; allowPorts names the others it may use`,
        details: { host: 'public.example', port },
      })
    }
    expect(lookups).toBe(0)
  })

  it('allowPorts is the whole list of ports', async () => {
    const guard = new DestinationGuard({ allowPorts: [443, 8443] })
    await expect(guard.resolve('93.184.216.34', 8443)).resolves.toMatchObject({ address: '93.184.216.34' })
    await expect(guard.resolve('93.184.216.34', 443)).resolves.toMatchObject({ address: '93.184.216.34' })
    await expect(guard.resolve('93.184.216.34', 80)).rejects.toMatchObject({ code: 'port_blocked' })
  })

  it.each([
    [{ allowPorts: 443 }, 'allowPorts', 'list of ports'],
    [{ allowPorts: [443, 0] }, 'allowPorts[1]', 'not a port'],
    [{ allowPorts: [443, '8443'] }, 'allowPorts[1]', 'not a port'],
    [{ allowHostServices: '127.0.0.1:80' }, 'allowHostServices', 'list'],
    [{ allowHostServices: ['127.0.0.1'] }, 'allowHostServices[0]', 'exact address and port'],
    [{ allowHostServices: ['127.0.0.1:80', 'api.example:443'] }, 'allowHostServices[1]', 'exact address and port'],
    [{ allowHostServices: ['[::1]:0'] }, 'allowHostServices[0]', 'exact address and port'],
  ])('validates %j naming the field', (options, field, words) => {
    expect(() => new DestinationGuard(options as never)).toThrow(expect.objectContaining({ code: 'invalid_input', field, message: expect.stringContaining(words) }))
  })
})
