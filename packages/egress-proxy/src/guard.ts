/**
 * The SSRF guard. A destination name is resolved once, each address is checked against the
 * special-purpose ranges (loopback, private, link-local, CGNAT, multicast, documentation,
 * reserved, and the IPv6 forms that embed IPv4), and the proxy dials the address it checked,
 * so a DNS answer that changes between check and connect (rebinding) gains nothing.
 * `allowDestinations` CIDRs are exempt, for deployments whose upstreams are on a private network.
 */
import { lookup as dnsLookup } from 'node:dns/promises'
import { BlockList, isIP } from 'node:net'
import { ValidationError } from '@hypeman-ts/common'
import { EgressError } from './errors.js'
import { canonicalSource } from './sources.js'

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

export interface GuardOptions {
  allowDestinations?: readonly string[]
  lookup?: LookupFunction
  /** How long a DNS answer is reused (default 30 s; 0 disables the cache). */
  cacheTtlMs?: number
  /** For error messages: the option's name as the caller knows it. */
  field?: string
}

const CACHE_MAX = 4096

export class DestinationGuard {
  private readonly allowed = new BlockList()
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
    this.lookupFn = opts.lookup ?? systemLookup
    this.ttl = opts.cacheTtlMs ?? 30_000
  }

  /** Whether the proxy may dial this address. */
  permits(address: string): boolean {
    const type = isIP(address) === 6 ? 'ipv6' : 'ipv4'
    return !special.check(address, type) || this.allowed.check(address, type)
  }

  private refuse(host: string, address: string): EgressError {
    const what = specialRange(address) ?? 'reserved'
    const via = host === address ? '' : ` (resolved from ${host})`
    return new EgressError(
      'destination_blocked',
      `destination ${address}${via} is in the ${what} range; the proxy refuses it unless allow_destinations includes it`,
      { details: { host, address, range: what } },
    )
  }

  /**
   * The address to dial for a canonical host: an IP literal is checked as it is, a name is
   * resolved (or taken from the short cache) and its first permitted address returned.
   */
  async resolve(host: string): Promise<ResolvedAddress> {
    const family = isIP(host)
    if (family !== 0) {
      if (!this.permits(host)) throw this.refuse(host, host)
      return { address: host, family: family as 4 | 6 }
    }
    const addresses = await this.lookupCached(host)
    for (const a of addresses) if (this.permits(a.address)) return a
    throw this.refuse(host, addresses[0]!.address)
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
