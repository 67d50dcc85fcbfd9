/**
 * Our nftables ruleset, as a pure function of the allocations (table-tested), applied with
 * `nft -j -f -` as one transaction that replaces both of our tables whole: `add table; delete
 * table; add table ...` swaps the old ruleset for the new one atomically, so the kernel always
 * holds exactly what the allocation file says, and removing our two tables removes all of it.
 *
 * table bridge <t>   anti-spoof at layer 2, where the guest's port is still known
 *   set ports        every guest port (TAP / veth host end)
 *   set guests       port . MAC . IPv4 each port may send from
 *   chain prerouting (filter, prio -200)
 *     iifname != @ports accept                              not one of ours
 *     iifname . ether saddr . ip saddr @guests accept       the guest's own IPv4
 *     iifname . ether saddr . arp saddr ip @guests accept   the guest's own ARP
 *     drop                                                  spoofed IPv4/ARP, all IPv6, anything else
 *
 * table inet <t>     NAT and egress (sources are trustworthy here: the bridge table pinned them)
 *   set mediated     guests whose egress is enforced (either mode)
 *   set mode_all     the subset in mode `all`
 *   set resolvers    DNS servers the guests are given
 *   set proxy_endpoints  address . port of the proxy (redirect targets and the explicit port)
 *   chain prerouting (nat, dstnat)  per mediated guest: tcp dport 80/443 dnat to the proxy
 *   chain input   (filter) iifname <bridge> jump guest_in     guest → this host
 *   chain forward (filter) iifname <bridge> jump guest_out    guest → elsewhere
 *   chain guest_in   IPv6 drop; established/related, unmediated, proxy endpoints, DNS to resolvers accept; else refuse
 *   chain guest_out  IPv6 drop; guest→guest via the router per `isolate`; established/related, unmediated,
 *                    proxy endpoints, DNS to resolvers accept; mode_all refuse; tcp/udp 80,443 refuse
 *   chain refuse     tcp reset for TCP, icmp admin-prohibited otherwise (fail fast, never hang)
 *   chain postrouting (nat, srcnat)  to the proxy: no NAT (it must see the guest's address);
 *                    subnet → outside: masquerade (out of the uplink when one is set)
 */
import type { NftDocument } from './exec.js'
import type { StoredEgress } from './state.js'

export interface RulesetGuest {
  tap: string
  mac: string
  ip: string
  egress: StoredEgress | null
}

export interface RulesetSpec {
  table: string
  bridge: string
  /** `10.100.0.0/16` */
  subnet: { network: string; prefixLength: number }
  isolate: boolean
  uplink?: string
  resolvers: readonly string[]
  guests: readonly RulesetGuest[]
}

type Json = Record<string, unknown>
type Family = 'bridge' | 'inet'

const meta = (key: string): Json => ({ meta: { key } })
const payload = (protocol: string, field: string): Json => ({ payload: { protocol, field } })
const match = (left: unknown, right: unknown, op = '=='): Json => ({ match: { op, left, right } })
const concat = (...items: unknown[]): Json => ({ concat: items })
const anon = (items: unknown[]): Json => ({ set: items })
const ACCEPT: Json = { accept: null }
const DROP: Json = { drop: null }

function table(family: Family, name: string): Json {
  return { table: { family, name } }
}

function set(family: Family, tableName: string, name: string, type: string | string[], elem: unknown[]): Json {
  return { set: { family, table: tableName, name, type, ...(elem.length > 0 ? { elem } : {}) } }
}

function baseChain(family: Family, tableName: string, name: string, type: 'filter' | 'nat', hook: string, prio: number): Json {
  return { chain: { family, table: tableName, name, type, hook, prio, policy: 'accept' } }
}

function chain(family: Family, tableName: string, name: string): Json {
  return { chain: { family, table: tableName, name } }
}

function rule(family: Family, tableName: string, chainName: string, comment: string, ...expr: Json[]): Json {
  return { rule: { family, table: tableName, chain: chainName, expr, comment } }
}

const add = (obj: Json): Json => ({ add: obj })

function sortedUnique<T>(items: T[], key: (t: T) => string): T[] {
  const seen = new Map<string, T>()
  for (const i of items) seen.set(key(i), i)
  return [...seen.entries()].sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true })).map(([, v]) => v)
}

export function proxyEndpoints(guests: readonly RulesetGuest[]): [string, number][] {
  const eps: [string, number][] = []
  for (const g of guests) {
    if (!g.egress) continue
    const p = g.egress.proxy
    eps.push([p.address, p.httpPort], [p.address, p.httpsPort])
    if (p.explicitPort !== undefined) eps.push([p.address, p.explicitPort])
  }
  return sortedUnique(eps, ([a, port]) => `${a}:${port}`)
}

function bridgeTable(spec: RulesetSpec): Json[] {
  const t = spec.table
  const guests = sortedUnique([...spec.guests], (g) => g.tap)
  const r = (comment: string, ...expr: Json[]) => add(rule('bridge', t, 'prerouting', comment, ...expr))
  return [
    add(set('bridge', t, 'ports', 'ifname', guests.map((g) => g.tap))),
    add(set('bridge', t, 'guests', ['ifname', 'ether_addr', 'ipv4_addr'], guests.map((g) => concat(g.tap, g.mac, g.ip)))),
    add(baseChain('bridge', t, 'prerouting', 'filter', 'prerouting', -200)),
    r('hypeman: not a guest port', match(meta('iifname'), '@ports', '!='), ACCEPT),
    r('hypeman: the guest\'s own IPv4 address and MAC', match(concat(meta('iifname'), payload('ether', 'saddr'), payload('ip', 'saddr')), '@guests'), ACCEPT),
    r('hypeman: the guest\'s own ARP', match(concat(meta('iifname'), payload('ether', 'saddr'), payload('arp', 'saddr ip')), '@guests'), ACCEPT),
    r('hypeman: spoofed source, IPv6 or other protocol from a guest port', DROP),
  ]
}

function inetTable(spec: RulesetSpec): Json[] {
  const t = spec.table
  const br = spec.bridge
  const guests = sortedUnique([...spec.guests], (g) => g.ip)
  const mediated = guests.filter((g) => g.egress)
  const all = mediated.filter((g) => g.egress?.mode === 'all')
  const endpoints = proxyEndpoints(guests)
  const subnet = { prefix: { addr: spec.subnet.network, len: spec.subnet.prefixLength } }
  const out: Json[] = [
    add(set('inet', t, 'mediated', 'ipv4_addr', mediated.map((g) => g.ip))),
    add(set('inet', t, 'mode_all', 'ipv4_addr', all.map((g) => g.ip))),
    add(set('inet', t, 'resolvers', 'ipv4_addr', [...new Set(spec.resolvers)].sort())),
    add(set('inet', t, 'proxy_endpoints', ['ipv4_addr', 'inet_service'], endpoints.map(([a, p]) => concat(a, p)))),
    add(baseChain('inet', t, 'prerouting', 'nat', 'prerouting', -100)),
    add(chain('inet', t, 'guest_in')),
    add(chain('inet', t, 'guest_out')),
    add(chain('inet', t, 'refuse')),
    add(baseChain('inet', t, 'input', 'filter', 'input', 0)),
    add(baseChain('inet', t, 'forward', 'filter', 'forward', 0)),
    add(baseChain('inet', t, 'postrouting', 'nat', 'postrouting', 100)),
  ]
  const r = (c: string, comment: string, ...expr: Json[]) => out.push(add(rule('inet', t, c, comment, ...expr)))
  const fromBridge = match(meta('iifname'), br)

  for (const g of mediated) {
    const p = (g.egress as StoredEgress).proxy
    for (const [dport, to] of [
      [80, p.httpPort],
      [443, p.httpsPort],
    ] as const) {
      r('prerouting', `hypeman: ${g.ip} tcp ${dport} to the egress proxy`, fromBridge, match(payload('ip', 'saddr'), g.ip), match(meta('l4proto'), 'tcp'), match(payload('tcp', 'dport'), dport), {
        dnat: { family: 'ip', addr: p.address, port: to },
      })
    }
  }

  r('input', 'hypeman: from guests to this host', fromBridge, { jump: { target: 'guest_in' } })
  r('forward', 'hypeman: from guests to elsewhere', fromBridge, { jump: { target: 'guest_out' } })

  const established = match({ ct: { key: 'state' } }, ['established', 'related'], 'in')
  const unmediated = match(payload('ip', 'saddr'), '@mediated', '!=')
  const toProxy = [match(meta('l4proto'), 'tcp'), match(concat(payload('ip', 'daddr'), payload('tcp', 'dport')), '@proxy_endpoints')]
  const dns = [match(meta('l4proto'), anon(['tcp', 'udp'])), match(payload('ip', 'daddr'), '@resolvers'), match(payload('th', 'dport'), 53)]
  const refuse: Json = { goto: { target: 'refuse' } }

  const ipv6 = match(meta('nfproto'), 'ipv6')
  r('guest_in', 'hypeman: guests have no IPv6', ipv6, DROP)
  r('guest_in', 'hypeman: replies and related errors', established, ACCEPT)
  r('guest_in', 'hypeman: egress not enforced for this guest', unmediated, ACCEPT)
  r('guest_in', 'hypeman: the egress proxy', ...toProxy, ACCEPT)
  r('guest_in', 'hypeman: DNS to the given resolvers', ...dns, ACCEPT)
  r('guest_in', 'hypeman: no other host service for mediated guests', refuse)

  r('guest_out', 'hypeman: guests have no IPv6', ipv6, DROP)
  r('guest_out', spec.isolate ? 'hypeman: no guest-to-guest traffic through the router' : 'hypeman: guest-to-guest allowed', match(meta('oifname'), br), spec.isolate ? DROP : ACCEPT)
  r('guest_out', 'hypeman: replies and related errors', established, ACCEPT)
  r('guest_out', 'hypeman: egress not enforced for this guest', unmediated, ACCEPT)
  r('guest_out', 'hypeman: the egress proxy', ...toProxy, ACCEPT)
  r('guest_out', 'hypeman: DNS to the given resolvers', ...dns, ACCEPT)
  r('guest_out', 'hypeman: mode all: nothing else leaves', match(payload('ip', 'saddr'), '@mode_all'), refuse)
  r('guest_out', 'hypeman: http_https_only: no direct HTTP/HTTPS', match(meta('l4proto'), 'tcp'), match(payload('tcp', 'dport'), anon([80, 443])), refuse)
  r('guest_out', 'hypeman: http_https_only: no QUIC/HTTP3 around the proxy', match(meta('l4proto'), 'udp'), match(payload('udp', 'dport'), anon([80, 443])), refuse)

  r('refuse', 'hypeman: refused (TCP)', match(meta('l4proto'), 'tcp'), { reject: { type: 'tcp reset' } })
  r('refuse', 'hypeman: refused', { reject: { type: 'icmpx', expr: 'admin-prohibited' } })

  r('postrouting', 'hypeman: the proxy sees the guest\'s own address', match(payload('ip', 'saddr'), subnet), ...toProxy, ACCEPT)
  r(
    'postrouting',
    'hypeman: guests to the outside',
    match(payload('ip', 'saddr'), subnet),
    match(payload('ip', 'daddr'), subnet, '!='),
    spec.uplink ? match(meta('oifname'), spec.uplink) : match(meta('oifname'), br, '!='),
    { masquerade: null },
  )
  return out
}

/** The transaction that replaces both of our tables with the ruleset for `spec`. */
export function buildRuleset(spec: RulesetSpec): NftDocument {
  const nftables: Json[] = []
  for (const family of ['bridge', 'inet'] as const) {
    // `add` is a no-op when the table exists and makes the `delete` valid when it did not.
    nftables.push(add(table(family, spec.table)), { delete: table(family, spec.table) }, add(table(family, spec.table)))
    nftables.push(...(family === 'bridge' ? bridgeTable(spec) : inetTable(spec)))
  }
  return { nftables }
}

/** The transaction that removes both of our tables (idempotent). */
export function buildTeardown(tableName: string): NftDocument {
  const nftables: Json[] = []
  for (const family of ['bridge', 'inet'] as const) nftables.push(add(table(family, tableName)), { delete: table(family, tableName) })
  return { nftables }
}
