/**
 * The network in real kernel namespaces (a NetLab per file): bridge and tables, a veth guest
 * reaching a server through NAT, isolation, idempotent attach/detach, allocations that survive a
 * restart and concurrent creates (also from other processes), and failures that leave nothing.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { HostNetwork, type AttachStep, type HostNetworkOptions, type NetworkAttachment } from '../src/index.js'
import { NetLab } from '../src/testing.js'
import { leftovers, NOTHING_LEFT, probe, requireRoot, serve } from './support/lab.js'

const repoRoot = fileURLToPath(new URL('../../..', import.meta.url))
const tsx = join(repoRoot, 'node_modules/.bin/tsx')
const child = fileURLToPath(new URL('./support/attach-child.ts', import.meta.url))

let lab: NetLab
let dir: string
let net: HostNetwork
let opts: HostNetworkOptions

beforeAll(async () => {
  requireRoot()
  lab = await NetLab.create({ prefix: 'hmtn' })
  dir = await mkdtemp(join(tmpdir(), 'hm-netsetup-'))
  opts = { stateDir: join(dir, 'state'), netns: lab.hostNs, uplink: lab.uplink, dns: ['10.100.0.1'], hostCpus: 4 }
  net = await HostNetwork.open(opts)
})

afterAll(async () => {
  await lab?.destroy()
  if (dir) await rm(dir, { recursive: true, force: true })
})

const ip = (ns: string, args: string[]) => lab.exec(ns, 'ip', ['-j', ...args]).then((r) => JSON.parse(r.stdout || '[]'))

describe('open', () => {
  it('makes the bridge with the gateway address and a fixed MAC, forwarding, and our two tables', async () => {
    const [br] = await ip(lab.hostNs, ['-d', 'addr', 'show', 'dev', 'hmbr0'])
    expect(br.linkinfo.info_kind).toBe('bridge')
    expect(br.address).toBe('02:68:0a:64:00:01')
    expect(br.addr_info.filter((a: { family: string }) => a.family === 'inet').map((a: { local: string; prefixlen: number }) => `${a.local}/${a.prefixlen}`)).toEqual(['10.100.0.1/16'])
    expect((await lab.exec(lab.hostNs, 'sysctl', ['-n', 'net.ipv4.ip_forward'])).stdout.trim()).toBe('1')
    const tables = JSON.parse((await lab.exec(lab.hostNs, 'nft', ['-j', 'list', 'tables'])).stdout).nftables.filter((o: { table?: unknown }) => o.table)
    expect(tables.map((o: { table: { family: string; name: string } }) => `${o.table.family} ${o.table.name}`).sort()).toEqual(['bridge hypeman', 'inet hypeman'])
  })

  it('is idempotent: opening again changes nothing', async () => {
    const before = (await lab.exec(lab.hostNs, 'nft', ['list', 'ruleset'])).stdout
    const again = await HostNetwork.open(opts)
    again.close()
    expect((await lab.exec(lab.hostNs, 'nft', ['list', 'ruleset'])).stdout).toBe(before)
    expect((await net.inspect()).bridgeAddresses).toEqual(['10.100.0.1/16'])
  })

  it.each([
    [{ netns: 'hm-no-such-netns' }, 'netns', 'invalid_input'],
    [{ uplink: 'nosuchdev0' }, 'uplink', 'invalid_input'],
    [{ bridge: 'lo' }, 'bridge', 'conflict'],
  ])('refuses %j naming %s', async (extra, field, code) => {
    await expect(HostNetwork.open({ ...opts, stateDir: join(dir, `bad-${field}`), ...extra })).rejects.toMatchObject({ field, code })
  })
})

describe('a guest', () => {
  let a: NetworkAttachment
  let guestNs: string

  beforeAll(async () => {
    await serve(lab, lab.serverNs, 'server', '0.0.0.0', 'tcp:8080,udp:9000')
    a = await net.attach('guest-a', { vcpus: 2, device: 'veth' })
    guestNs = (await lab.addGuest(a)).ns
  })

  it('gets an address, MAC, gateway, DNS and the vCPU share of the capacity', () => {
    expect(a).toMatchObject({
      instanceId: 'guest-a',
      netns: lab.hostNs,
      bridge: 'hmbr0',
      ip: '10.100.0.2',
      mac: '02:68:0a:64:00:02',
      prefixLength: 16,
      gateway: '10.100.0.1',
      dns: ['10.100.0.1'],
      bandwidthDownloadBitsPerSec: 500_000_000, // 2 of 4 CPUs of 1 Gbit/s
      bandwidthUploadBitsPerSec: 500_000_000,
      egress: { enabled: false },
    })
  })

  it('reaches a server in another namespace through NAT, and the reply comes back', async () => {
    // The server has no route back to the guest subnet: only masquerading makes the reply find its way.
    expect(JSON.stringify(await ip(lab.serverNs, ['route', 'show']))).not.toContain('10.100')
    expect(await probe(lab, guestNs, 'tcp', lab.serverIp, 8080)).toEqual({ result: 'ok', data: `server:8080 from ${lab.hostUplinkIp}` })
    expect(await probe(lab, guestNs, 'udp', lab.serverIp, 9000)).toEqual({ result: 'ok', data: `server:9000 from ${lab.hostUplinkIp}` })
  })

  it('is a port on the bridge, isolated, carrying our mark', async () => {
    const [port] = await ip(lab.hostNs, ['-d', 'link', 'show', 'dev', a.tap])
    expect(port.master).toBe('hmbr0')
    expect(port.ifalias).toBe('hypeman:hmbr0:guest-a')
    expect(port.linkinfo.info_slave_data.isolated).toBe(true)
  })

  it('attach again: same address and MAC, nothing duplicated, new rates applied', async () => {
    const again = await net.attach('guest-a', { vcpus: 2, device: 'veth', bandwidthDownloadBitsPerSec: 30_000_000 })
    expect(again).toMatchObject({ ip: a.ip, mac: a.mac, bandwidthDownloadBitsPerSec: 30_000_000, bandwidthUploadBitsPerSec: 500_000_000 })
    const inv = await net.inspect()
    expect(inv.links).toEqual([a.ifb, a.tap])
    expect(inv.nft.bridge?.ports).toEqual([a.tap])
    expect(inv.qdiscs.filter((q) => q.dev === a.tap).map((q) => q.kind).sort()).toEqual(['htb', 'ingress'])
    // the guest end is still in the guest's namespace, and the guest still gets out
    expect(await probe(lab, guestNs, 'tcp', lab.serverIp, 8080)).toMatchObject({ result: 'ok' })
  })

  it('is found again by a fresh handle on the same state (a restart of the host process)', async () => {
    const other = await HostNetwork.open(opts)
    expect(await other.get('guest-a')).toEqual(await net.get('guest-a'))
    expect((await other.list()).map((x) => x.instanceId)).toContain('guest-a')
    other.close()
  })
})

describe('isolation', () => {
  let b: NetworkAttachment
  let c: NetworkAttachment
  let nsB: string
  let nsC: string

  beforeAll(async () => {
    b = await net.attach('guest-b', { vcpus: 1, device: 'veth' })
    c = await net.attach('guest-c', { vcpus: 1, device: 'veth' })
    nsB = (await lab.addGuest(b)).ns
    nsC = (await lab.addGuest(c)).ns
    await serve(lab, nsC, 'guest-c', '0.0.0.0', 'tcp:7000')
  })

  it('no guest-to-guest traffic, neither bridged nor routed through the gateway', async () => {
    expect(await probe(lab, nsB, 'tcp', c.ip, 7000, { timeoutMs: 1000 })).toMatchObject({ result: expect.stringMatching(/timeout|error/) })
    await lab.exec(nsB, 'ip', ['route', 'add', `${c.ip}/32`, 'via', b.gateway])
    expect(await probe(lab, nsB, 'tcp', c.ip, 7000, { timeoutMs: 1000 })).toMatchObject({ result: expect.stringMatching(/timeout|error/) })
    // the host itself still reaches a guest
    expect(await probe(lab, lab.hostNs, 'tcp', c.ip, 7000)).toEqual({ result: 'ok', data: `guest-c:7000 from ${c.gateway}` })
  })

  it('isolate: false lets guests talk (reopen with it; ports and rules follow), and back', async () => {
    const open = await HostNetwork.open({ ...opts, isolate: false })
    expect(await probe(lab, nsB, 'tcp', c.ip, 7000)).toEqual({ result: 'ok', data: `guest-c:7000 from ${b.ip}` })
    open.close()
    net = await HostNetwork.open(opts)
    expect(await probe(lab, nsB, 'tcp', c.ip, 7000, { timeoutMs: 1000 })).toMatchObject({ result: expect.stringMatching(/timeout|error/) })
  })
})

describe('allocation', () => {
  it('never hands out an address twice: concurrent attaches here and in two other processes', async () => {
    const ids = Array.from({ length: 8 }, (_, i) => `conc-${i}`)
    const childIds = [['proc1-a', 'proc1-b', 'proc1-c'], ['proc2-a', 'proc2-b', 'proc2-c']]
    const [local, ...children] = await Promise.all([
      Promise.all(ids.map((id) => net.attach(id, { vcpus: 1 }))),
      ...childIds.map((cids) => run(tsx, [child, opts.stateDir, lab.hostNs, lab.uplink, '-', ...cids], { cwd: repoRoot, timeoutMs: 120_000 })),
    ])
    const fromChildren = children.flatMap((r) => r.stdout.trim().split('\n').map((l) => JSON.parse(l) as NetworkAttachment))
    const all = [...local, ...fromChildren]
    expect(all).toHaveLength(14)
    expect(new Set(all.map((x) => x.ip)).size).toBe(14)
    expect(new Set(all.map((x) => x.mac)).size).toBe(14)
    const listed = await net.list()
    for (const x of all) expect(listed.find((l) => l.instanceId === x.instanceId)?.ip).toBe(x.ip)
    for (const x of all) await net.detach(x.instanceId)
  }, 180_000)

  it('a full subnet says so and leaves nothing of the refused attach', async () => {
    const ns = await lab.addNamespace('small')
    const small = await HostNetwork.open({ stateDir: join(dir, 'small'), netns: ns, subnet: '192.168.77.0/29', bridge: 'hmsmall0', dns: ['192.168.77.1'] })
    const got = []
    for (let i = 0; i < 5; i++) got.push(await small.attach(`s${i}`, { vcpus: 1 }))
    expect(got.map((g) => g.ip)).toEqual(['192.168.77.2', '192.168.77.3', '192.168.77.4', '192.168.77.5', '192.168.77.6'])
    const before = await leftovers(small)
    await expect(small.attach('s5', { vcpus: 1 })).rejects.toMatchObject({ code: 'address_pool_exhausted', field: 'subnet' })
    expect(await leftovers(small)).toEqual(before)
    // a freed address is handed out again once the cursor comes round
    await small.detach('s2')
    expect((await small.attach('s5', { vcpus: 1 })).ip).toBe('192.168.77.4')
    await expect(HostNetwork.open({ stateDir: join(dir, 'small'), netns: ns, subnet: '192.168.78.0/24', bridge: 'hmsmall0' })).rejects.toMatchObject({
      code: 'conflict',
      field: 'subnet',
    })
    await small.destroy()
    const links = (await ip(ns, ['link', 'show'])).map((l: { ifname: string }) => l.ifname)
    expect(links).toEqual(['lo'])
  })

  it('refuses bad attach options before creating anything', async () => {
    const before = await leftovers(net)
    await expect(net.attach('bad', { vcpus: 1, egress: { enabled: true, mode: 'all' } })).rejects.toMatchObject({ code: 'invalid_input', field: 'egress.proxy' })
    await expect(net.attach('bad', { vcpus: 0 })).rejects.toMatchObject({ code: 'invalid_input', field: 'vcpus' })
    await expect(net.attach('bad id!', { vcpus: 1 })).rejects.toMatchObject({ code: 'invalid_input', field: 'instanceId' })
    expect(await leftovers(net)).toEqual(before)
  })

  it.each(['allocated', 'rules', 'links', 'shaping'] as AttachStep[])('a first attach failing after step %s leaves nothing', async (failAt) => {
    const before = await leftovers(net)
    const boom = new Error(`stop after ${failAt}`)
    await expect(
      net.attach('doomed', {
        vcpus: 1,
        device: 'veth',
        egress: { enabled: true, proxy: { httpPort: 3128, httpsPort: 3128 } },
        onStep: (s) => {
          if (s === failAt) throw boom
        },
      }),
    ).rejects.toMatchObject({ code: 'network_setup_failed', step: failAt, cause: boom })
    expect(await leftovers(net)).toEqual(before)
  })

  it('a re-attach that fails puts the previous allocation back', async () => {
    await net.attach('keeper', { vcpus: 1, bandwidthUploadBitsPerSec: 20_000_000 })
    const before = await net.get('keeper')
    await expect(
      net.attach('keeper', {
        vcpus: 1,
        bandwidthUploadBitsPerSec: 90_000_000,
        egress: { enabled: true, proxy: { httpPort: 3128, httpsPort: 3128 } },
        onStep: (s) => {
          if (s === 'links') throw new Error('no')
        },
      }),
    ).rejects.toMatchObject({ code: 'network_setup_failed' })
    expect(await net.get('keeper')).toEqual(before)
    expect((await net.inspect()).nft.inet?.mediated).not.toContain(before?.ip)
    await net.detach('keeper')
  })

  it('an abort signal stops the attach between steps, leaving nothing', async () => {
    const before = await leftovers(net)
    const ac = new AbortController()
    await expect(net.attach('aborted', { vcpus: 1, signal: ac.signal, onStep: (s) => (s === 'rules' ? ac.abort() : undefined) })).rejects.toMatchObject({ code: 'aborted' })
    expect(await leftovers(net)).toEqual(before)
  })
})

describe('spare TAPs (a VMM started before its instance)', () => {
  const link = async (name: string) => (await ip(lab.hostNs, ['-d', 'link', 'show'])).find((l: { ifname: string }) => l.ifname === name)

  it('a spare is a down TAP on no bridge; adopting it makes it the instance\'s port, set up as attach sets one', async () => {
    const att = await net.attach('spare-user', { vcpus: 1, bandwidthDownloadBitsPerSec: 8_000_000 })
    const spare = await net.addSpareTap()
    expect(spare).toMatch(/^hmw[0-9a-f]{12}$/)
    const before = await link(spare)
    expect(before).toMatchObject({ linkinfo: { info_kind: 'tun' }, ifalias: 'hypeman:hmbr0:spare' })
    expect(before.master).toBeUndefined()
    expect(before.flags).not.toContain('UP')

    await net.adoptTap('spare-user', spare)
    expect(await link(spare)).toBeUndefined()
    const port = await link(att.tap)
    // The same device (the one a VMM holds), under the instance's name, on the bridge, up, shaped.
    expect(port.ifindex).toBe(before.ifindex)
    expect(port).toMatchObject({ master: 'hmbr0', ifalias: `hypeman:hmbr0:spare-user` })
    expect(port.flags).toContain('UP')
    const qdiscs = (await net.inspect()).qdiscs.filter((q) => q.dev === att.tap).map((q) => q.kind)
    expect(qdiscs).toEqual(expect.arrayContaining(['htb']))
    await net.detach('spare-user')
  })

  it('refuses what it cannot adopt, and the instance keeps a port; a reconcile removes a spare left behind', async () => {
    const att = await net.attach('spare-refused', { vcpus: 1 })
    await expect(net.adoptTap('spare-refused', 'hmw000000000000')).rejects.toMatchObject({ code: 'network_setup_failed' })
    expect((await link(att.tap))?.master).toBe('hmbr0')
    await expect(net.adoptTap('spare-refused', 'eth0')).rejects.toMatchObject({ code: 'invalid_input', field: 'spare' })
    const spare = await net.addSpareTap()
    await expect(net.adoptTap('nobody', spare)).rejects.toMatchObject({ code: 'not_found' })
    expect(await link(spare)).toBeDefined()
    const r = await net.reconcile((await net.list()).map((a) => a.instanceId))
    expect(r.removedLinks).toContain(spare)
    expect(await link(spare)).toBeUndefined()
    const other = await net.addSpareTap()
    await net.removeSpareTap(other)
    expect(await link(other)).toBeUndefined()
    await net.detach('spare-refused')
  })
})

describe('detach and destroy', () => {
  it('detach is idempotent and says whether it removed anything', async () => {
    await net.attach('short-lived', { vcpus: 1 })
    expect(await net.detach('short-lived')).toBe(true)
    expect(await net.detach('short-lived')).toBe(false)
    expect(await net.detach('never-attached')).toBe(false)
    expect(await net.get('short-lived')).toBeUndefined()
  })

  it('destroy removes links, tables, bridge and allocations; the handle is closed', async () => {
    const ns = await lab.addNamespace('gone')
    const n = await HostNetwork.open({ stateDir: join(dir, 'gone'), netns: ns, dns: ['10.100.0.1'] })
    await n.attach('x1', { vcpus: 1 })
    await n.attach('x2', { vcpus: 1, device: 'veth', egress: { enabled: true, proxy: { httpPort: 1, httpsPort: 2 } } })
    await n.destroy()
    expect((await ip(ns, ['link', 'show'])).map((l: { ifname: string }) => l.ifname)).toEqual(['lo'])
    expect(JSON.parse((await lab.exec(ns, 'nft', ['-j', 'list', 'tables'])).stdout).nftables.filter((o: { table?: unknown }) => o.table)).toEqual([])
    await expect(n.attach('x3', { vcpus: 1 })).rejects.toMatchObject({ code: 'network_setup_failed' })
    const reopened = await HostNetwork.open({ stateDir: join(dir, 'gone'), netns: ns, dns: ['10.100.0.1'] })
    expect(await reopened.list()).toEqual([])
    await reopened.destroy()
  })

  it('after detaching everything, nothing of ours is left but the bridge and its address', async () => {
    for (const x of await net.list()) await net.detach(x.instanceId)
    expect(await leftovers(net)).toEqual(NOTHING_LEFT)
  })
})
