/**
 * The pure parts, as tables: names, addresses, options, default rates, and the command lines and
 * nft documents the kernel-facing code sends. The nft documents are also checked by nft itself
 * (`nft -c`, which validates without applying) inside a namespace this file creates.
 */
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { defaultRate, egressProxyEnv } from '../src/index.js'
import { buildRuleset, buildTeardown, htbQuantum, linkNames, macForAddress, netnsArgv, nextFreeAddress, orphanLinks, parseLinkName, parseLinks, parseResolvConf, parseSubnet, planDeleteLinks, planGuestLinks, planShaping, type LinkState, type RulesetSpec } from '../src/testing.js'
import { resolveAttachOptions, resolveNetworkOptions } from '../src/options.js'
import { requireRoot } from './support/lab.js'

describe('names', () => {
  it('derives 15-character link names from the instance id, the same every time', () => {
    const a = linkNames('tz4a98xxat96iws9zmbrgj3a')
    expect(a).toEqual(linkNames('tz4a98xxat96iws9zmbrgj3a'))
    expect(a.tap).toMatch(/^hmt[0-9a-f]{12}$/)
    expect(a.ifb).toBe(`hmi${a.short}`)
    expect(a.peer).toBe(`hmp${a.short}`)
    for (const n of [a.tap, a.ifb, a.peer]) expect(n.length).toBe(15)
    expect(linkNames('another-id').short).not.toBe(a.short)
  })

  it.each([
    ['hmt0123456789ab', { role: 'tap', short: '0123456789ab' }],
    ['hmi0123456789ab', { role: 'ifb', short: '0123456789ab' }],
    ['hmp0123456789ab', { role: 'peer', short: '0123456789ab' }],
    ['hmw0123456789ab', { role: 'spare', short: '0123456789ab' }],
    ['hmbr0', undefined],
    ['hmx0123456789ab', undefined],
    ['hmt0123456789AB', undefined],
    ['eth0', undefined],
  ])('parseLinkName(%s)', (name, expected) => {
    expect(parseLinkName(name)).toEqual(expected)
  })
})

describe('addresses', () => {
  it('parses a subnet: gateway first, guests after it, broadcast excluded', () => {
    const s = parseSubnet('10.100.0.0/16')
    expect(s).toMatchObject({ cidr: '10.100.0.0/16', network: '10.100.0.0', prefixLength: 16, netmask: '255.255.0.0', gateway: '10.100.0.1' })
    expect(nextFreeAddress(s, new Set())).toBe('10.100.0.2')
  })

  it.each([
    ['10.100.0.1/16', 'not a network address'],
    ['10.100.0.0', 'not an IPv4 CIDR'],
    ['fd00::/64', 'not an IPv4 CIDR'],
    ['10.0.0.0/31', 'outside'],
    ['10.0.0.0/7', 'outside'],
  ])('rejects subnet %s naming the field', (cidr, msg) => {
    expect(() => parseSubnet(cidr)).toThrow(expect.objectContaining({ code: 'invalid_input', field: 'subnet', message: expect.stringContaining(msg) }))
  })

  it('hands out addresses after the cursor, wraps around, and says when none is left', () => {
    const s = parseSubnet('192.168.7.0/29') // guests .2 .. .6
    expect(nextFreeAddress(s, new Set(), null)).toBe('192.168.7.2')
    expect(nextFreeAddress(s, new Set(['192.168.7.2']), '192.168.7.2')).toBe('192.168.7.3')
    // a freed low address is not reused while higher ones are free
    expect(nextFreeAddress(s, new Set(['192.168.7.4']), '192.168.7.4')).toBe('192.168.7.5')
    expect(nextFreeAddress(s, new Set(['192.168.7.3', '192.168.7.4', '192.168.7.5']), '192.168.7.6')).toBe('192.168.7.2')
    expect(nextFreeAddress(s, new Set(['192.168.7.2', '192.168.7.3', '192.168.7.4', '192.168.7.5', '192.168.7.6']), '192.168.7.3')).toBeUndefined()
    // the gateway and the broadcast address are never handed out
    const all = new Set<string>()
    for (let i = 0; i < 10; i++) {
      const ip = nextFreeAddress(s, all, [...all].at(-1))
      if (!ip) break
      all.add(ip)
    }
    expect([...all].sort()).toEqual(['192.168.7.2', '192.168.7.3', '192.168.7.4', '192.168.7.5', '192.168.7.6'])
  })

  it('derives a locally administered unicast MAC from the address', () => {
    expect(macForAddress('10.100.0.2')).toBe('02:68:0a:64:00:02')
    expect(macForAddress('192.168.255.254')).toBe('02:68:c0:a8:ff:fe')
  })
})

describe('options', () => {
  const base = { stateDir: '/var/lib/x' }
  it('fills in defaults', () => {
    const c = resolveNetworkOptions({ ...base, hostCpus: 4 })
    expect(c).toMatchObject({ bridge: 'hmbr0', table: 'hypeman', isolate: true, hostCpus: 4, capacity: { downloadBitsPerSec: 1e9, uploadBitsPerSec: 1e9 } })
    expect(c.subnet.cidr).toBe('10.100.0.0/16')
    expect(c.netns).toBeUndefined()
  })

  it.each([
    [{ stateDir: 'relative' }, 'stateDir'],
    [{ ...base, bridge: 'a-very-long-bridge-name' }, 'bridge'],
    [{ ...base, bridge: 'hmt0123456789ab' }, 'bridge'],
    [{ ...base, subnet: '10.1.2.3/8' }, 'subnet'],
    [{ ...base, netns: '../etc' }, 'netns'],
    [{ ...base, uplink: 'bad name' }, 'uplink'],
    [{ ...base, dns: ['1.1.1'] }, 'dns[0]'],
    [{ ...base, dns: [] }, 'dns'],
    [{ ...base, capacity: { downloadBitsPerSec: 0 } }, 'capacity.downloadBitsPerSec'],
    [{ ...base, capacity: { uploadBitsPerSec: 1.5e6 + 0.5 } }, 'capacity.uploadBitsPerSec'],
    [{ ...base, hostCpus: 0 }, 'hostCpus'],
    [{ ...base, table: 'no-dashes' }, 'table'],
  ])('rejects %j naming %s', (opts, field) => {
    expect(() => resolveNetworkOptions(opts as never)).toThrow(expect.objectContaining({ code: 'invalid_input', field }))
  })

  const proxy = { httpPort: 3128, httpsPort: 3129 }
  it('resolves egress: mode defaults to all, proxy address to the gateway', () => {
    expect(resolveAttachOptions({ vcpus: 2, egress: { enabled: true, proxy } }, '10.100.0.1')).toEqual({
      vcpus: 2,
      device: 'tap',
      egress: { mode: 'all', proxy: { address: '10.100.0.1', httpPort: 3128, httpsPort: 3129 } },
    })
    expect(resolveAttachOptions({ vcpus: 1, egress: { enabled: false } }, '10.100.0.1').egress).toBeNull()
  })

  it.each([
    [{ vcpus: 0 }, 'vcpus'],
    [{ vcpus: 1, bandwidthDownloadBitsPerSec: 5 }, 'bandwidthDownloadBitsPerSec'],
    [{ vcpus: 1, bandwidthUploadBitsPerSec: 2e12 }, 'bandwidthUploadBitsPerSec'],
    [{ vcpus: 1, device: 'tun' }, 'device'],
    [{ vcpus: 1, egress: { enabled: 'yes' } }, 'egress.enabled'],
    [{ vcpus: 1, egress: { enabled: true } }, 'egress.proxy'],
    [{ vcpus: 1, egress: { enabled: true, mode: 'some', proxy } }, 'egress.mode'],
    [{ vcpus: 1, egress: { enabled: true, proxy: { ...proxy, httpPort: 0 } } }, 'egress.proxy.httpPort'],
    [{ vcpus: 1, egress: { enabled: true, proxy: { ...proxy, httpsPort: 70000 } } }, 'egress.proxy.httpsPort'],
    [{ vcpus: 1, egress: { enabled: true, proxy: { ...proxy, address: 'proxy.local' } } }, 'egress.proxy.address'],
    [{ vcpus: 1, egress: { enabled: true, proxy: { ...proxy, explicitPort: -1 } } }, 'egress.proxy.explicitPort'],
  ])('rejects attach options %j naming %s', (opts, field) => {
    expect(() => resolveAttachOptions(opts as never, '10.100.0.1')).toThrow(expect.objectContaining({ code: 'invalid_input', field }))
  })
})

describe('default rates', () => {
  it.each([
    [1, 4, 1e9, 250e6],
    [2, 4, 1e9, 500e6],
    [4, 4, 1e9, 1e9],
    [8, 4, 1e9, 1e9], // never more than the capacity
    [1, 3, 100e6, 33_333_333],
    [1, 4096, 1e6, 10_000], // never below the minimum
  ])('%i vCPUs of %i host CPUs of %d bit/s → %d', (vcpus, cpus, cap, expected) => {
    expect(defaultRate(vcpus, cpus, cap)).toBe(expected)
  })
})

describe('commands', () => {
  it('runs through nsenter only with a namespace', () => {
    expect(netnsArgv(undefined, 'ip', ['-j', 'link'])).toEqual(['ip', ['-j', 'link']])
    expect(netnsArgv('tenant-a', 'nft', ['-j', '-f', '/tmp/x'])).toEqual(['nsenter', ['--net=/run/netns/tenant-a', '--', 'nft', '-j', '-f', '/tmp/x']])
  })

  const spec = { device: 'tap' as const, tap: 'hmt0123456789ab', ifb: 'hmi0123456789ab', peer: 'hmp0123456789ab', mac: '02:68:0a:64:00:02', alias: 'hypeman:hmbr0:abc', bridge: 'hmbr0', isolate: true }
  const complete: LinkState[] = [
    { name: spec.tap, kind: 'tap', master: 'hmbr0', alias: spec.alias, up: true, isolated: true },
    { name: spec.ifb, kind: 'ifb', alias: spec.alias, up: true },
  ]

  it.each([
    [
      'nothing there: TAP enslaved and isolated before it goes up, then the ifb',
      [],
      spec,
      [
        'tuntap add dev hmt0123456789ab mode tap vnet_hdr',
        'link set dev hmt0123456789ab alias hypeman:hmbr0:abc',
        'link set dev hmt0123456789ab master hmbr0',
        'link set dev hmt0123456789ab type bridge_slave isolated on',
        'link set dev hmt0123456789ab up',
        'link add hmi0123456789ab txqueuelen 1000 type ifb',
        'link set dev hmi0123456789ab alias hypeman:hmbr0:abc',
        'link set dev hmi0123456789ab up',
      ],
    ],
    ['everything there: nothing to do', complete, spec, []],
    [
      'a crash left the TAP unenslaved and the ifb missing',
      [{ name: spec.tap, kind: 'tap', up: false }],
      spec,
      [
        'link set dev hmt0123456789ab alias hypeman:hmbr0:abc',
        'link set dev hmt0123456789ab master hmbr0',
        'link set dev hmt0123456789ab type bridge_slave isolated on',
        'link set dev hmt0123456789ab up',
        'link add hmi0123456789ab txqueuelen 1000 type ifb',
        'link set dev hmi0123456789ab alias hypeman:hmbr0:abc',
        'link set dev hmi0123456789ab up',
      ],
    ],
    [
      'a veth guest: the peer gets the guest MAC',
      [],
      { ...spec, device: 'veth' as const },
      [
        'link add hmt0123456789ab txqueuelen 1000 type veth peer name hmp0123456789ab address 02:68:0a:64:00:02',
        'link set dev hmt0123456789ab alias hypeman:hmbr0:abc',
        'link set dev hmt0123456789ab master hmbr0',
        'link set dev hmt0123456789ab type bridge_slave isolated on',
        'link set dev hmt0123456789ab up',
        'link add hmi0123456789ab txqueuelen 1000 type ifb',
        'link set dev hmi0123456789ab alias hypeman:hmbr0:abc',
        'link set dev hmi0123456789ab up',
      ],
    ],
    [
      'the port is a TAP but a veth is wanted: replaced',
      complete,
      { ...spec, device: 'veth' as const },
      [
        'link del dev hmt0123456789ab',
        'link add hmt0123456789ab txqueuelen 1000 type veth peer name hmp0123456789ab address 02:68:0a:64:00:02',
        'link set dev hmt0123456789ab alias hypeman:hmbr0:abc',
        'link set dev hmt0123456789ab master hmbr0',
        'link set dev hmt0123456789ab type bridge_slave isolated on',
        'link set dev hmt0123456789ab up',
      ],
    ],
    ['isolation turned off', complete, { ...spec, isolate: false }, ['link set dev hmt0123456789ab type bridge_slave isolated off']],
  ])('planGuestLinks: %s', (_name, current, s, expected) => {
    expect(planGuestLinks(new Map((current as LinkState[]).map((l) => [l.name, l])), s)).toEqual(expected)
  })

  it('planDeleteLinks deletes what exists, once per veth pair', () => {
    const current = new Map<string, LinkState>([
      ['hmt0123456789ab', { name: 'hmt0123456789ab', kind: 'veth', up: true }],
      ['hmp0123456789ab', { name: 'hmp0123456789ab', kind: 'veth', up: false }],
      ['hmi0123456789ab', { name: 'hmi0123456789ab', kind: 'ifb', up: true }],
    ])
    expect(planDeleteLinks(current, ['hmt0123456789ab', 'hmi0123456789ab', 'hmp0123456789ab'])).toEqual(['link del dev hmt0123456789ab', 'link del dev hmi0123456789ab'])
    expect(planDeleteLinks(new Map(), ['hmt0123456789ab'])).toEqual([])
  })

  it('orphanLinks: ours, unallocated, and not another bridge\'s', () => {
    const links: LinkState[] = [
      { name: 'hmt000000000001', kind: 'tap', master: 'hmbr0', up: true }, // allocated
      { name: 'hmt000000000002', kind: 'tap', master: 'hmbr0', up: true }, // orphan
      { name: 'hmi000000000002', kind: 'ifb', alias: 'hypeman:hmbr0:x', up: true }, // orphan
      { name: 'hmt000000000003', kind: 'tap', up: false }, // crashed before enslaving: orphan
      { name: 'hmt000000000004', kind: 'tap', master: 'otherbr', up: true }, // another network's
      { name: 'hmi000000000004', kind: 'ifb', alias: 'hypeman:otherbr:y', up: true }, // another network's
      { name: 'eth0', up: true },
      { name: 'hmbr0', kind: 'bridge', up: true },
    ]
    expect(orphanLinks(links, new Set(['000000000001']), 'hmbr0')).toEqual(['hmt000000000002', 'hmi000000000002', 'hmt000000000003'])
  })

  it('parseLinks reads ip -j -d link output', () => {
    const json = [
      {
        ifname: 'hmt0123456789ab',
        flags: ['BROADCAST', 'MULTICAST', 'UP'],
        master: 'hmbr0',
        ifalias: 'hypeman:hmbr0:a',
        address: '9a:1b:00:00:00:01',
        txqlen: 1000,
        linkinfo: { info_kind: 'tun', info_data: { type: 'tap', vnet_hdr: true }, info_slave_kind: 'bridge', info_slave_data: { isolated: true } },
      },
      { ifname: 'lo', flags: ['LOOPBACK', 'UP'] },
      { ifname: 'hmbr0', flags: ['BROADCAST'], linkinfo: { info_kind: 'bridge' } },
    ]
    expect(parseLinks(json)).toEqual([
      { name: 'hmt0123456789ab', kind: 'tap', master: 'hmbr0', alias: 'hypeman:hmbr0:a', up: true, mac: '9a:1b:00:00:00:01', txqlen: 1000, isolated: true },
      { name: 'lo', up: true },
      { name: 'hmbr0', kind: 'bridge', up: false },
    ])
  })

  it('planShaping: htb on the port, ingress redirected to the ifb, htb there; only replaces what htb can', () => {
    const s = { tap: 'hmtA', ifb: 'hmiA', downloadBitsPerSec: 40_000_000, uploadBitsPerSec: 25_000_000 }
    expect(planShaping(s, { tap: [], ifb: [] })).toEqual([
      'qdisc replace dev hmtA root handle 1: htb default 1',
      'class replace dev hmtA parent 1: classid 1:1 htb rate 40000000bit ceil 40000000bit quantum 200000',
      'qdisc replace dev hmtA handle ffff: ingress',
      'filter replace dev hmtA parent ffff: protocol all prio 1 handle 800::800 u32 match u32 0 0 action mirred egress redirect dev hmiA',
      'qdisc replace dev hmiA root handle 1: htb default 1',
      'class replace dev hmiA parent 1: classid 1:1 htb rate 25000000bit ceil 25000000bit quantum 200000',
    ])
    const there = {
      tap: [
        { kind: 'htb', handle: '1:', root: true },
        { kind: 'ingress', handle: 'ffff:', root: false },
      ],
      ifb: [{ kind: 'htb', handle: '1:', root: true }],
    }
    expect(planShaping(s, there)).toEqual([
      'class replace dev hmtA parent 1: classid 1:1 htb rate 40000000bit ceil 40000000bit quantum 200000',
      'filter replace dev hmtA parent ffff: protocol all prio 1 handle 800::800 u32 match u32 0 0 action mirred egress redirect dev hmiA',
      'class replace dev hmiA parent 1: classid 1:1 htb rate 25000000bit ceil 25000000bit quantum 200000',
    ])
    // a different root (e.g. the TAP's default) is replaced
    expect(planShaping(s, { tap: [{ kind: 'noqueue', handle: '0:', root: true }], ifb: [] })[0]).toBe('qdisc replace dev hmtA root handle 1: htb default 1')
  })

  it.each([
    [10_000, 1600],
    [8_000_000, 100_000],
    [1_000_000_000, 200_000],
  ])('htb quantum for %d bit/s is %d bytes', (bits, q) => {
    expect(htbQuantum(bits)).toBe(q)
  })

  it('parses resolv.conf: IPv4, not loopback, no duplicates', () => {
    expect(parseResolvConf('# x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver fd00::1\n nameserver 10.0.0.2\nnameserver 9.9.9.9 # q\nsearch lan')).toEqual(['10.0.0.2', '9.9.9.9'])
  })

  it('egressProxyEnv points the proxy variables at the explicit port only', () => {
    const proxy = { address: '10.100.0.1', httpPort: 3128, httpsPort: 3128 }
    expect(egressProxyEnv({ egress: { enabled: false } })).toEqual({})
    expect(egressProxyEnv({ egress: { enabled: true, mode: 'all', proxy } })).toEqual({})
    expect(egressProxyEnv({ egress: { enabled: true, mode: 'all', proxy: { ...proxy, explicitPort: 3130 } } })).toMatchObject({
      HTTP_PROXY: 'http://10.100.0.1:3130',
      https_proxy: 'http://10.100.0.1:3130',
    })
  })
})

describe('nft documents', () => {
  const guest = (n: number, egress: RulesetSpec['guests'][number]['egress'] = null) => ({
    tap: `hmt00000000000${n}`,
    mac: macForAddress(`10.100.0.${n}`),
    ip: `10.100.0.${n}`,
    egress,
  })
  const proxy = { address: '10.100.0.1', httpPort: 3128, httpsPort: 3129, explicitPort: 3130 }
  const spec: RulesetSpec = {
    table: 'hypeman',
    bridge: 'hmbr0',
    subnet: { network: '10.100.0.0', prefixLength: 16 },
    isolate: true,
    resolvers: ['10.100.0.1'],
    guests: [guest(2), guest(3, { mode: 'all', proxy }), guest(4, { mode: 'http_https_only', proxy })],
  }
  type Cmd = Record<string, Record<string, Record<string, unknown>>>
  const items = (doc: { nftables: unknown[] }) => doc.nftables as Cmd[]
  const sets = (doc: { nftables: unknown[] }) =>
    Object.fromEntries(items(doc).filter((c) => c.add?.set).map((c) => [`${c.add!.set!.family} ${c.add!.set!.name}`, c.add!.set!.elem ?? []]))
  const rules = (doc: { nftables: unknown[] }, chain: string) => items(doc).filter((c) => c.add?.rule && c.add.rule.chain === chain).map((c) => c.add!.rule!)

  it('replaces both tables whole, in one transaction', () => {
    const doc = buildRuleset(spec)
    const head = items(doc).filter((c) => c.add?.table || c.delete?.table)
    expect(head).toEqual([
      { add: { table: { family: 'bridge', name: 'hypeman' } } },
      { delete: { table: { family: 'bridge', name: 'hypeman' } } },
      { add: { table: { family: 'bridge', name: 'hypeman' } } },
      { add: { table: { family: 'inet', name: 'hypeman' } } },
      { delete: { table: { family: 'inet', name: 'hypeman' } } },
      { add: { table: { family: 'inet', name: 'hypeman' } } },
    ])
    expect(buildTeardown('hypeman').nftables).toEqual([
      { add: { table: { family: 'bridge', name: 'hypeman' } } },
      { delete: { table: { family: 'bridge', name: 'hypeman' } } },
      { add: { table: { family: 'inet', name: 'hypeman' } } },
      { delete: { table: { family: 'inet', name: 'hypeman' } } },
    ])
  })

  it('pins each port to its MAC and address, and lists mediated guests by mode', () => {
    expect(sets(buildRuleset(spec))).toEqual({
      'bridge ports': ['hmt000000000002', 'hmt000000000003', 'hmt000000000004'],
      'bridge guests': [2, 3, 4].map((n) => ({ concat: [`hmt00000000000${n}`, macForAddress(`10.100.0.${n}`), `10.100.0.${n}`] })),
      'inet mediated': ['10.100.0.3', '10.100.0.4'],
      'inet mode_all': ['10.100.0.3'],
      'inet resolvers': ['10.100.0.1'],
      'inet proxy_endpoints': [3128, 3129, 3130].map((p) => ({ concat: ['10.100.0.1', p] })),
    })
  })

  it('redirects TCP 80 and 443 of mediated guests only', () => {
    const dnat = rules(buildRuleset(spec), 'prerouting').filter((r) => r.family === 'inet')
    expect(dnat.map((r) => (r.expr as Record<string, unknown>[]).at(-1))).toEqual([
      { dnat: { family: 'ip', addr: '10.100.0.1', port: 3128 } },
      { dnat: { family: 'ip', addr: '10.100.0.1', port: 3129 } },
      { dnat: { family: 'ip', addr: '10.100.0.1', port: 3128 } },
      { dnat: { family: 'ip', addr: '10.100.0.1', port: 3129 } },
    ])
    expect(JSON.stringify(dnat)).not.toContain('10.100.0.2')
  })

  it('empty network: sets without elements, no DNAT rules', () => {
    const doc = buildRuleset({ ...spec, guests: [] })
    expect(Object.values(sets(doc)).slice(0, 4)).toEqual([[], [], [], []])
    expect(rules(doc, 'prerouting').filter((r) => r.family === 'inet')).toEqual([])
  })

  it('isolation decides routed guest-to-guest traffic; the uplink decides where NAT happens', () => {
    const first = (s: RulesetSpec) => rules(buildRuleset(s), 'guest_out')[1]!.expr
    expect(rules(buildRuleset(spec), 'guest_out')[0]!.expr).toEqual([{ match: { op: '==', left: { meta: { key: 'nfproto' } }, right: 'ipv6' } }, { drop: null }])
    expect(first(spec)).toEqual([{ match: { op: '==', left: { meta: { key: 'oifname' } }, right: 'hmbr0' } }, { drop: null }])
    expect(first({ ...spec, isolate: false })).toEqual([{ match: { op: '==', left: { meta: { key: 'oifname' } }, right: 'hmbr0' } }, { accept: null }])
    const masq = (s: RulesetSpec) => rules(buildRuleset(s), 'postrouting').at(-1)!.expr as unknown[]
    expect(masq(spec)).toContainEqual({ match: { op: '!=', left: { meta: { key: 'oifname' } }, right: 'hmbr0' } })
    expect(masq({ ...spec, uplink: 'eth1' })).toContainEqual({ match: { op: '==', left: { meta: { key: 'oifname' } }, right: 'eth1' } })
  })

  describe('accepted by nft itself', () => {
    const ns = `hmtest-b-${randomBytes(3).toString('hex')}`
    let dir: string
    beforeAll(async () => {
      requireRoot()
      dir = await mkdtemp(join(tmpdir(), 'hm-nft-test-'))
      await run('ip', ['netns', 'add', ns])
    })
    afterAll(async () => {
      await run('ip', ['netns', 'del', ns]).catch(() => {})
      if (dir) await rm(dir, { recursive: true, force: true })
    })
    const check = async (doc: unknown) => {
      const file = join(dir, `${randomBytes(4).toString('hex')}.json`)
      await writeFile(file, JSON.stringify(doc))
      await run('nsenter', [`--net=/run/netns/${ns}`, '--', 'nft', '-j', '-f', file])
    }
    it.each([
      ['three guests, both modes', spec],
      ['no guests', { ...spec, guests: [] }],
      ['not isolated, with an uplink, two resolvers', { ...spec, isolate: false, uplink: 'lo', resolvers: ['10.100.0.1', '9.9.9.9'] }],
    ])('%s (applied twice: the swap works on an existing table)', async (_n, s) => {
      await check(buildRuleset(s))
      await check(buildRuleset(s))
      await check(buildTeardown(s.table))
      await check(buildTeardown(s.table))
    })
  })
})
