/**
 * Egress enforcement, per mode, as a table of bypass attempts from real guest namespaces: what is
 * redirected to the proxy, what is allowed, what is blocked. Three guests side by side: mode
 * `all`, mode `http_https_only`, and no enforcement (which shows every probe can succeed). The
 * "proxy" is an answering server on the gateway that says which port it was reached on and the
 * source address it saw.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { HostNetwork, type NetworkAttachment } from '../src/index.js'
import { NetLab } from '../src/testing.js'
import { probe, requireRoot, serve, type ProbeResult } from './support/lab.js'

type Outcome = 'proxied' | 'allowed' | 'blocked'
type Mode = 'all' | 'http_https_only' | 'none'

let lab: NetLab
let dir: string
let net: HostNetwork
const guests = {} as Record<Mode, { att: NetworkAttachment; ns: string }>
const PROXY = { httpPort: 3128, httpsPort: 3129, explicitPort: 3130 }
const SPOOF_OTHER_GUEST = '10.100.0.200'
const SPOOF_OUTSIDE = '198.51.100.7'
let bridgeLinkLocal: string

function outcome(r: ProbeResult): Outcome {
  if (r.result !== 'ok') return 'blocked'
  return r.data?.startsWith('proxy:') ? 'proxied' : 'allowed'
}

/** Waits (bounded) until the namespace's IPv6 link-local address is usable (DAD finished). */
async function linkLocal(ns: string, dev: string): Promise<string> {
  for (let i = 0; i < 100; i++) {
    const [l] = JSON.parse((await lab.exec(ns, 'ip', ['-j', '-6', 'addr', 'show', 'dev', dev])).stdout || '[]')
    const a = (l?.addr_info ?? []).find((x: { scope: string; tentative?: boolean }) => x.scope === 'link' && !x.tentative)
    if (a) return a.local as string
    await sleep(100)
  }
  throw new Error(`no usable IPv6 link-local address on ${dev} in ${ns}`)
}

beforeAll(async () => {
  requireRoot()
  lab = await NetLab.create({ prefix: 'hmte' })
  dir = await mkdtemp(join(tmpdir(), 'hm-egress-'))
  net = await HostNetwork.open({ stateDir: dir, netns: lab.hostNs, uplink: lab.uplink, dns: ['10.100.0.1'] })
  for (const mode of ['all', 'http_https_only', 'none'] as const) {
    const att = await net.attach(`guest-${mode.replaceAll('_', '-')}`, {
      vcpus: 1,
      device: 'veth',
      egress: mode === 'none' ? { enabled: false } : { enabled: true, mode, proxy: PROXY },
    })
    const { ns } = await lab.addGuest(att)
    // Addresses to forge a source from: an address of the subnet that is not this guest's, and one outside it.
    await lab.exec(ns, 'ip', ['addr', 'add', `${SPOOF_OTHER_GUEST}/32`, 'dev', 'eth0'])
    await lab.exec(ns, 'ip', ['addr', 'add', `${SPOOF_OUTSIDE}/32`, 'dev', 'eth0'])
    guests[mode] = { att, ns }
  }
  await serve(lab, lab.hostNs, 'proxy', '10.100.0.1', 'tcp:3128,tcp:3129,tcp:3130')
  await serve(lab, lab.hostNs, 'dns', '10.100.0.1', 'udp:53,tcp:53')
  await serve(lab, lab.hostNs, 'hostsvc', '::', 'tcp:2222')
  await serve(lab, lab.serverNs, 'server', '0.0.0.0', 'tcp:80,tcp:443,tcp:8080,udp:443,udp:9000,udp:53')
  bridgeLinkLocal = await linkLocal(lab.hostNs, 'hmbr0')
}, 60_000)

afterAll(async () => {
  await lab?.destroy()
  if (dir) await rm(dir, { recursive: true, force: true })
})

interface Attempt {
  name: string
  run: (ns: string) => Promise<ProbeResult>
  expect: Record<Mode, Outcome>
}

const attempts: Attempt[] = [
  { name: 'TCP 80 to a server', run: (ns) => probe(lab, ns, 'tcp', lab.serverIp, 80), expect: { all: 'proxied', http_https_only: 'proxied', none: 'allowed' } },
  { name: 'TCP 443 to a server', run: (ns) => probe(lab, ns, 'tcp', lab.serverIp, 443), expect: { all: 'proxied', http_https_only: 'proxied', none: 'allowed' } },
  { name: 'TCP 8080 to a server (direct, another port)', run: (ns) => probe(lab, ns, 'tcp', lab.serverIp, 8080), expect: { all: 'blocked', http_https_only: 'allowed', none: 'allowed' } },
  { name: 'TCP to a host service on the gateway (:2222)', run: (ns) => probe(lab, ns, 'tcp', '10.100.0.1', 2222), expect: { all: 'blocked', http_https_only: 'blocked', none: 'allowed' } },
  { name: "TCP to a host service on the host's uplink address", run: (ns) => probe(lab, ns, 'tcp', lab.hostUplinkIp, 2222), expect: { all: 'blocked', http_https_only: 'blocked', none: 'allowed' } },
  { name: 'TCP to the explicit proxy port (HTTP_PROXY)', run: (ns) => probe(lab, ns, 'tcp', '10.100.0.1', PROXY.explicitPort), expect: { all: 'proxied', http_https_only: 'proxied', none: 'proxied' } },
  { name: 'DNS over UDP to the given resolver', run: (ns) => probe(lab, ns, 'udp', '10.100.0.1', 53), expect: { all: 'allowed', http_https_only: 'allowed', none: 'allowed' } },
  { name: 'DNS over TCP to the given resolver', run: (ns) => probe(lab, ns, 'tcp', '10.100.0.1', 53), expect: { all: 'allowed', http_https_only: 'allowed', none: 'allowed' } },
  { name: 'DNS over UDP to another resolver', run: (ns) => probe(lab, ns, 'udp', lab.serverIp, 53), expect: { all: 'blocked', http_https_only: 'allowed', none: 'allowed' } },
  { name: 'UDP 443 (QUIC) to a server', run: (ns) => probe(lab, ns, 'udp', lab.serverIp, 443), expect: { all: 'blocked', http_https_only: 'blocked', none: 'allowed' } },
  { name: 'UDP 9000 to a server', run: (ns) => probe(lab, ns, 'udp', lab.serverIp, 9000), expect: { all: 'blocked', http_https_only: 'allowed', none: 'allowed' } },
  {
    name: 'TCP 8080 from a forged subnet address',
    run: (ns) => probe(lab, ns, 'tcp', lab.serverIp, 8080, { bind: SPOOF_OTHER_GUEST }),
    expect: { all: 'blocked', http_https_only: 'blocked', none: 'blocked' },
  },
  {
    name: 'TCP 8080 from a forged outside address',
    run: (ns) => probe(lab, ns, 'tcp', lab.serverIp, 8080, { bind: SPOOF_OUTSIDE }),
    expect: { all: 'blocked', http_https_only: 'blocked', none: 'blocked' },
  },
  {
    name: "IPv6 to the host's link-local address (:2222)",
    run: (ns) => probe(lab, ns, 'tcp', `${bridgeLinkLocal}%eth0`, 2222),
    expect: { all: 'blocked', http_https_only: 'blocked', none: 'blocked' },
  },
]

describe('bypass attempts per mode', () => {
  const seen: Record<string, Record<Mode, string>> = {}

  it.each(attempts.map((a) => [a.name, a] as const))('%s', async (_name, attempt) => {
    const modes = ['all', 'http_https_only', 'none'] as const
    const results = await Promise.all(modes.map((m) => attempt.run(guests[m].ns)))
    const got = Object.fromEntries(modes.map((m, i) => [m, outcome(results[i] as ProbeResult)])) as Record<Mode, Outcome>
    seen[attempt.name] = Object.fromEntries(modes.map((m, i) => [m, `${got[m]}${results[i]?.data ? ` (${results[i]?.data})` : results[i]?.code ? ` (${results[i]?.code})` : ` (${results[i]?.result})`}`])) as Record<Mode, string>
    expect(got).toEqual(attempt.expect)
    // What got through says who it came from: the proxy sees the guest itself; servers outside see the host (NAT).
    for (const [i, m] of modes.entries()) {
      const r = results[i] as ProbeResult
      if (outcome(r) === 'proxied') expect(r.data).toMatch(new RegExp(`from ${guests[m].att.ip.replaceAll('.', '\\.')}$`))
      if (outcome(r) === 'allowed' && r.data?.startsWith('server:')) expect(r.data).toMatch(new RegExp(`from ${lab.hostUplinkIp.replaceAll('.', '\\.')}$`))
    }
  })

  it('the table (printed for the README)', () => {
    const lines = ['| attempt | mode `all` | mode `http_https_only` | egress not enforced |', '|---|---|---|---|']
    for (const a of attempts) {
      const s = seen[a.name]
      expect(s, `${a.name} ran`).toBeDefined()
      lines.push(`| ${a.name} | ${s!.all} | ${s!.http_https_only} | ${s!.none} |`)
    }
    console.log(lines.join('\n'))
    expect(lines).toHaveLength(attempts.length + 2)
  })
})

describe('controls', () => {
  it('without our tables the same guest reaches the host over IPv6 and on :2222; reconcile puts them back', async () => {
    const g = guests.all
    await lab.exec(lab.hostNs, 'nft', ['delete', 'table', 'bridge', 'hypeman'])
    await lab.exec(lab.hostNs, 'nft', ['delete', 'table', 'inet', 'hypeman'])
    expect(await probe(lab, g.ns, 'tcp', `${bridgeLinkLocal}%eth0`, 2222)).toMatchObject({ result: 'ok', data: expect.stringMatching(/^hostsvc:2222 from fe80:/) })
    expect(await probe(lab, g.ns, 'tcp', '10.100.0.1', 2222)).toEqual({ result: 'ok', data: `hostsvc:2222 from ${g.att.ip}` })
    const r = await net.reconcile((await net.list()).map((a) => a.instanceId))
    expect(r).toEqual({ removedInstances: [], removedLinks: [], incomplete: [] })
    expect(outcome(await probe(lab, g.ns, 'tcp', `${bridgeLinkLocal}%eth0`, 2222, { timeoutMs: 1000 }))).toBe('blocked')
    expect(outcome(await probe(lab, g.ns, 'tcp', '10.100.0.1', 2222))).toBe('blocked')
  })

  it('forged addresses are blocked at the port, not by chance: the guest\'s own address gets through', async () => {
    expect(await probe(lab, guests.none.ns, 'tcp', lab.serverIp, 8080, { bind: guests.none.att.ip })).toMatchObject({ result: 'ok' })
  })

  it('changing a guest\'s mode on a re-attach takes effect at once', async () => {
    const g = guests.none
    await net.attach(g.att.instanceId, { vcpus: 1, device: 'veth', egress: { enabled: true, mode: 'all', proxy: PROXY } })
    expect(outcome(await probe(lab, g.ns, 'tcp', lab.serverIp, 8080))).toBe('blocked')
    expect(outcome(await probe(lab, g.ns, 'tcp', lab.serverIp, 80))).toBe('proxied')
    await net.attach(g.att.instanceId, { vcpus: 1, device: 'veth', egress: { enabled: false } })
    expect(outcome(await probe(lab, g.ns, 'tcp', lab.serverIp, 8080))).toBe('allowed')
  })
})

describe('a proxy that is not on the gateway', () => {
  it('gets the guest\'s connections DNATed to it, unmasqueraded, so it sees the guest\'s own address', async () => {
    // The proxy host must route the guest subnet back to us (here: the server namespace via the uplink).
    await lab.exec(lab.serverNs, 'ip', ['route', 'add', '10.100.0.0/16', 'via', lab.hostUplinkIp])
    await serve(lab, lab.serverNs, 'proxy', lab.serverIp, 'tcp:3180,tcp:3181')
    const att = await net.attach('guest-remote-proxy', {
      vcpus: 1,
      device: 'veth',
      egress: { enabled: true, mode: 'all', proxy: { address: lab.serverIp, httpPort: 3180, httpsPort: 3181 } },
    })
    const { ns } = await lab.addGuest(att)
    expect(await probe(lab, ns, 'tcp', '203.0.113.5', 80)).toEqual({ result: 'ok', data: `proxy:3180 from ${att.ip}` })
    expect(await probe(lab, ns, 'tcp', '203.0.113.5', 443)).toEqual({ result: 'ok', data: `proxy:3181 from ${att.ip}` })
    expect(outcome(await probe(lab, ns, 'tcp', lab.serverIp, 8080))).toBe('blocked')
    await net.detach(att.instanceId)
  })
})
