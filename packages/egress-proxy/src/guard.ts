/**
 * The destination guard: the one place that decides whether the proxy may dial an address and
 * port. A destination name is resolved once and the proxy dials the address it checked, so a DNS
 * answer that changes between check and connect (rebinding) gains nothing. Every way out (the
 * CONNECT check, undici's connector, the fast path's pool, WebSocket upgrades) asks `resolve`.
 *
 * Rules, on the address actually dialled:
 * - ports: only `allowPorts` (default 80 and 443), the ports direct guest traffic is held to by
 *   `http_https_only`, so the proxy is not a way around it;
 * - the proxy's own host: never an address of any interface of the network namespace it runs
 *   in, loopback or the unspecified address in any spelling (IPv4-mapped, NAT64, 6to4, ...), nor
 *   its own listeners, whatever `allowDestinations` says: an allowed range that happens to hold
 *   the host (the uplink's subnet) would otherwise hand guests every service on the host, which
 *   the firewall keeps them from directly;
 * - special-purpose ranges (loopback, private, link-local, CGNAT, multicast, documentation,
 *   reserved, and the IPv6 forms that embed IPv4), unless `allowDestinations` names them.
 * An `allowHostServices` entry (one exact address:port) lifts all three for that destination:
 * the way to let guests reach a service on the host on purpose. Listeners are refused even then.
 */
import { lookup as dnsLookup } from 'node:dns/promises'
import { BlockList, isIP } from 'node:net'
import { networkInterfaces } from 'node:os'
import { ValidationError } from '@hypeman-ts/common'
import { EgressError } from './errors.js'
import { hostForUrl, splitHostPort } from './hosts.js'
import { canonicalSource } from './sources.js'

/** The guard's refusals: 403s a guest gets before any byte reaches the destination. */
export const GUARD_REFUSALS: ReadonlySet<string> = new Set(['destination_blocked', 'host_address_blocked', 'port_blocked'])

export interface ResolvedAddress {
  address: string
  family: 4 | 6
}

/** Resolves a host name to its addresses, in preference order. The default is the system resolver. */
export type LookupFunction = (hostname: string) => Promise<ResolvedAddress[]>

const SPECIAL: ReadonlyArray<[string, number, 'ipv4' | 'ipv6', string]> = [
  ['0.0.0.0', 8, 'ipv4', '"this network"'],
  ['10.0.0.0', 8, 'ipv4', 'private'],
  ['100.64.0.0', 10, 'ipv4', 'carrier-grade NAT'],
  ['127.0.0.0', 8, 'ipv4', 'loopback'],
  ['169.254.0.0', 16, 'ipv4', 'link-local'],
  ['172.16.0.0', 12, 'ipv4', 'private'],
  ['192.0.0.0', 24, 'ipv4', 'IETF protocol assignments'],
  ['192.0.2.0', 24, 'ipv4', 'documentation'],
  ['192.88.99.0', 24, 'ipv4', '6to4 relay'],
  ['192.168.0.0', 16, 'ipv4', 'private'],
  ['198.18.0.0', 15, 'ipv4', 'benchmarking'],
  ['198.51.100.0', 24, 'ipv4', 'documentation'],
  ['203.0.113.0', 24, 'ipv4', 'documentation'],
  ['224.0.0.0', 4, 'ipv4', 'multicast'],
  ['240.0.0.0', 4, 'ipv4', 'reserved'],
  ['::', 128, 'ipv6', 'unspecified'],
  ['::1', 128, 'ipv6', 'loopback'],
  ['::', 96, 'ipv6', 'IPv4-compatible'],
  ['64:ff9b::', 96, 'ipv6', 'NAT64'],
  ['64:ff9b:1::', 48, 'ipv6', 'NAT64'],
  ['100::', 64, 'ipv6', 'discard'],
  ['2001::', 23, 'ipv6', 'IETF protocol assignments'],
  ['2001:db8::', 32, 'ipv6', 'documentation'],
  ['2002::', 16, 'ipv6', '6to4'],
  ['fc00::', 7, 'ipv6', 'unique local (private)'],
  ['fe80::', 10, 'ipv6', 'link-local'],
  ['ff00::', 8, 'ipv6', 'multicast'],
]

// No rule for IPv4-mapped IPv6 (::ffff:0:0/96): BlockList checks a mapped address against
// the IPv4 rules (and an IPv4 address against such a rule), which is the check we want.
const special = new BlockList()
for (const [net, prefix, type] of SPECIAL) special.addSubnet(net, prefix, type)

/** The kind of special range an address is in ("loopback", "private", …), or undefined when it is public. */
export function specialRange(address: string): string | undefined {
  const type = isIP(address) === 6 ? 'ipv6' : 'ipv4'
  if (!special.check(address, type)) return undefined
  for (const [net, prefix, t, label] of SPECIAL) {
    const one = new BlockList()
    one.addSubnet(net, prefix, t)
    if (one.check(address, type)) return label
  }
  return 'reserved'
}

export const systemLookup: LookupFunction = async (hostname) => {
  const answers = await dnsLookup(hostname, { all: true, verbatim: true })
  return answers.map((a) => ({ address: a.address, family: a.family === 6 ? 6 : 4 }))
}


/** One address of the host, and where it comes from (for messages). */
export interface HostAddress {
  address: string
  /** The interface it is on ("eth0"), or what it is ("a proxy listener"). */
  name: string
}

/** Every address of every interface in this network namespace, read now. */
export function interfaceAddresses(): HostAddress[] {
  const out: HostAddress[] = []
  for (const [name, list] of Object.entries(networkInterfaces())) {
    for (const a of list ?? []) out.push({ address: a.address, name })
  }
  return out
}

export interface GuardOptions {
  allowDestinations?: readonly string[]
  /** Ports the proxy dials (default 80 and 443). */
  allowPorts?: readonly number[]
  /** Exact "address:port" destinations on the proxy's own host that it may dial. */
  allowHostServices?: readonly string[]
  lookup?: LookupFunction
  /** How long a DNS answer is reused (default 30 s; 0 disables the cache). */
  cacheTtlMs?: number
  /** For error messages: the allowDestinations option's name as the caller knows it. */
  field?: string
  /**
   * The host's addresses, read on every check (default: every interface address of this network
   * namespace). Interfaces come and go while the proxy runs: core's bridge gateway may appear
   * after the proxy started, so a snapshot taken at start would miss it.
   */
  hostAddresses?: () => HostAddress[]
}

export const DEFAULT_ALLOW_PORTS: readonly number[] = [80, 443]

/** Validates a port list ("allowPorts", or the CLI's "allow_ports"). */
export function parsePorts(value: unknown, field: string): number[] {
  if (!Array.isArray(value)) throw new ValidationError(field, 'must be a list of ports, e.g. [80, 443, 8443]')
  return value.map((p, i) => {
    if (!Number.isInteger(p) || (p as number) < 1 || (p as number) > 65535) throw new ValidationError(`${field}[${i}]`, `${JSON.stringify(p)} is not a port from 1 to 65535`)
    return p as number
  })
}

/**
 * Validates host service entries ("allowHostServices", or the CLI's "allow_host_services"):
 * an IP literal and a port, "198.18.0.1:7777" or "[::1]:7777"; returned canonical.
 */
export function parseHostServices(value: unknown, field: string): string[] {
  if (!Array.isArray(value)) throw new ValidationError(field, 'must be a list of "address:port" entries')
  return value.map((entry, i) => {
    const split = typeof entry === 'string' ? splitHostPort(entry.trim()) : null
    const address = split && isIP(split.host) !== 0 ? canonicalSource(split.host, `${field}[${i}]`).address : null
    if (!split || !address || split.port === 0) {
      throw new ValidationError(`${field}[${i}]`, `${JSON.stringify(entry)} is not an exact address and port like "198.18.0.1:7777" or "[::1]:7777"`)
    }
    return `${hostForUrl(address)}:${split.port}`
  })
}

type Family = 'ipv4' | 'ipv6'

const familyOf = (address: string): Family => (isIP(address) === 6 ? 'ipv6' : 'ipv4')

/** Loopback and the unspecified address: dialling either reaches this host. */
const ALWAYS_HOST: ReadonlyArray<[string, number, Family, string]> = [
  // IPv6 first: describe() names the first match, and ::1 is also 0.0.0.1 IPv4-compatible.
  ['::1', 128, 'ipv6', 'loopback'],
  ['::', 128, 'ipv6', 'the unspecified address'],
  ['127.0.0.0', 8, 'ipv4', 'loopback'],
  ['0.0.0.0', 8, 'ipv4', 'the unspecified address'],
]

/**
 * The IPv6 spellings of an IPv4 network that may lead back to it: IPv4-compatible, NAT64 and
 * 6to4. IPv4-mapped needs none: BlockList checks a mapped address against IPv4 rules.
 */
function embeddingsOf(net: string, prefix: number): Array<[string, number]> {
  const [a, b, c, d] = net.split('.').map(Number) as [number, number, number, number]
  const hex = (hi: number, lo: number) => ((hi << 8) | lo).toString(16)
  return [
    [`::${net}`, 96 + prefix],
    [`64:ff9b::${net}`, 96 + prefix],
    [`2002:${hex(a, b)}:${hex(c, d)}::`, 16 + prefix],
  ]
}

/** The host's addresses at one moment, with what each one is. */
class HostSnapshot {
  private readonly all = new BlockList()
  private readonly nets: Array<[string, number, Family, string]> = []

  constructor(addresses: readonly HostAddress[]) {
    for (const n of ALWAYS_HOST) this.add(...n)
    for (const { address, name } of addresses) {
      // Interface addresses may carry a zone ("fe80::1%eth0"); the zone is not part of the address.
      const bare = address.split('%')[0]!
      const family = isIP(bare)
      if (family !== 0) this.add(bare, family === 4 ? 32 : 128, family === 4 ? 'ipv4' : 'ipv6', name)
    }
  }

  private add(net: string, prefix: number, type: Family, label: string): void {
    this.all.addSubnet(net, prefix, type)
    this.nets.push([net, prefix, type, label])
    if (type === 'ipv4') {
      for (const [n, p] of embeddingsOf(net, prefix)) {
        this.all.addSubnet(n, p, 'ipv6')
        this.nets.push([n, p, 'ipv6', label])
      }
    }
  }

  has(address: string): boolean {
    return this.all.check(address, familyOf(address))
  }

  /** What the address is on this host, for messages. */
  describe(address: string): string {
    const type = familyOf(address)
    for (const [net, prefix, t, label] of this.nets) {
      const one = new BlockList()
      one.addSubnet(net, prefix, t)
      if (one.check(address, type)) return label
    }
    return 'this host'
  }
}

const CACHE_MAX = 4096

export class DestinationGuard {
  private readonly allowed = new BlockList()
  private readonly ports: ReadonlySet<number>
  /** allowHostServices by port. */
  private readonly services = new Map<number, BlockList>()
  private readonly listeners: Array<{ host: string; port: number }> = []
  private readonly hostAddresses: () => HostAddress[]
  /** The last snapshot, rebuilt only when the host's addresses differ from what it was built from. */
  private snapshot: { key: string; at: number; hosts: HostSnapshot } | undefined
  private readonly lookupFn: LookupFunction
  private readonly ttl: number
  private readonly cache = new Map<string, { addresses: ResolvedAddress[]; expires: number }>()
  private readonly inflight = new Map<string, Promise<ResolvedAddress[]>>()

  constructor(opts: GuardOptions = {}) {
    const field = opts.field ?? 'allowDestinations'
    if (opts.allowDestinations !== undefined && !Array.isArray(opts.allowDestinations)) {
      throw new ValidationError(field, 'must be a list of CIDRs')
    }
    ;(opts.allowDestinations ?? []).forEach((cidr, i) => {
      const s = canonicalSource(cidr, `${field}[${i}]`)
      this.allowed.addSubnet(s.address, s.prefix, s.family === 4 ? 'ipv4' : 'ipv6')
    })
    this.ports = new Set(opts.allowPorts === undefined ? DEFAULT_ALLOW_PORTS : parsePorts(opts.allowPorts, 'allowPorts'))
    for (const entry of opts.allowHostServices === undefined ? [] : parseHostServices(opts.allowHostServices, 'allowHostServices')) {
      const { host, port } = splitHostPort(entry)!
      let list = this.services.get(port)
      if (!list) this.services.set(port, (list = new BlockList()))
      list.addAddress(host, familyOf(host))
    }
    this.hostAddresses = opts.hostAddresses ?? interfaceAddresses
    this.lookupFn = opts.lookup ?? systemLookup
    this.ttl = opts.cacheTtlMs ?? 30_000
  }

  /** An address the proxy listens on: dialling it would loop, so it is refused even when named. */
  addListener(at: { host: string; port: number }): void {
    this.listeners.push({ host: at.host.split('%')[0]!, port: at.port })
    this.snapshot = undefined
  }

  /**
   * The host's addresses, read now, or at most `maxAgeMs` ago. Reading them costs a
   * getifaddrs(); building the lookup structure costs more, so it is kept while they stay the same.
   */
  private hostsNow(maxAgeMs: number): HostSnapshot {
    const now = performance.now()
    const last = this.snapshot
    if (last && now - last.at <= maxAgeMs) return last.hosts
    const addresses = this.hostAddresses()
    let key = ''
    for (const a of addresses) key += `${a.name}=${a.address};`
    if (last && last.key === key) {
      last.at = now
      return last.hosts
    }
    const hosts = new HostSnapshot([...addresses, ...this.listeners.map((l) => ({ address: l.host, name: 'a proxy listener' }))])
    this.snapshot = { key, at: now, hosts }
    return hosts
  }

  /**
   * The address to dial for a canonical host and port: an IP literal is checked as it is, a name
   * is resolved (or taken from the short cache) and its first permitted address returned. The
   * host's addresses are read afresh for the check before a dial; `hostsMaxAgeMs` lets an early
   * check that a dial will repeat (CONNECT, before the tunnel exists) use a recent reading.
   */
  async resolve(host: string, port: number, opts: { hostsMaxAgeMs?: number } = {}): Promise<ResolvedAddress> {
    // No lookup for a port nothing could permit (a listener's port is checked on, to say why).
    if (!this.ports.has(port) && !this.services.has(port) && !this.listeners.some((l) => l.port === port)) throw this.portRefusal(host, port)
    const family = isIP(host)
    const addresses = family === 0 ? await this.lookupCached(host) : [{ address: host, family: family as 4 | 6 }]
    const snapshot = this.hostsNow(opts.hostsMaxAgeMs ?? 0)
    let first: EgressError | undefined
    for (const a of addresses) {
      const refusal = this.check(host, a.address, port, snapshot)
      if (!refusal) return a
      first ??= refusal
    }
    throw first!
  }

  private check(host: string, address: string, port: number, snapshot: HostSnapshot): EgressError | undefined {
    const type = familyOf(address)
    const isHost = snapshot.has(address)
    if (isHost && this.isListener(address, port, type)) {
      return this.hostRefusal(host, address, port, "this proxy's own listener; refusing to connect to itself", false)
    }
    if (this.services.get(port)?.check(address, type)) return undefined
    if (!this.ports.has(port)) return this.portRefusal(host, port)
    if (isHost) return this.hostRefusal(host, address, port, snapshot.describe(address))
    if (special.check(address, type) && !this.allowed.check(address, type)) return this.rangeRefusal(host, address)
    return undefined
  }

  private isListener(address: string, port: number, type: Family): boolean {
    for (const l of this.listeners) {
      if (l.port !== port) continue
      // A wildcard listener answers on every address of the host, which `address` is.
      if (l.host === '0.0.0.0' || l.host === '::') return true
      const one = new BlockList()
      one.addAddress(l.host, familyOf(l.host))
      if (one.check(address, type)) return true
    }
    return false
  }

  private portRefusal(host: string, port: number): EgressError {
    return new EgressError(
      'port_blocked',
      `${hostForUrl(host)}:${port}: the proxy connects to ports ${[...this.ports].join(', ') || '(none)'} only; allowPorts names the others it may use`,
      { details: { host, port } },
    )
  }

  private hostRefusal(host: string, address: string, port: number, what: string, nameable = true): EgressError {
    const via = host === address ? '' : ` (resolved from ${host})`
    const unless = nameable ? `, unless allowHostServices names "${hostForUrl(address)}:${port}"` : ''
    return new EgressError(
      'host_address_blocked',
      `destination ${hostForUrl(address)}:${port}${via} is on the proxy's own host (${what}); the proxy never connects to its host, whatever allowDestinations says${unless}`,
      { details: { host, address, port } },
    )
  }

  private rangeRefusal(host: string, address: string): EgressError {
    const what = specialRange(address) ?? 'reserved'
    const via = host === address ? '' : ` (resolved from ${host})`
    return new EgressError(
      'destination_blocked',
      `destination ${address}${via} is in the ${what} range; the proxy refuses it unless allow_destinations includes it`,
      { details: { host, address, range: what } },
    )
  }

  private async lookupCached(host: string): Promise<ResolvedAddress[]> {
    const now = Date.now()
    const hit = this.cache.get(host)
    if (hit && hit.expires > now) return hit.addresses
    let pending = this.inflight.get(host)
    if (!pending) {
      pending = this.lookupFn(host)
        .then((addresses) => {
          if (addresses.length === 0) throw new Error('no addresses')
          for (const a of addresses) if (isIP(a.address) === 0) throw new Error(`resolver returned "${a.address}", not an IP`)
          if (this.ttl > 0) {
            if (this.cache.size >= CACHE_MAX) this.cache.clear()
            this.cache.set(host, { addresses, expires: Date.now() + this.ttl })
          }
          return addresses
        })
        .catch((err: unknown) => {
          const code = (err as NodeJS.ErrnoException)?.code
          throw new EgressError('dns_failed', `cannot resolve ${host}${code ? ` (${code})` : ''}`, { cause: err, details: { host } })
        })
        .finally(() => this.inflight.delete(host))
      this.inflight.set(host, pending)
    }
    return pending
  }
}
