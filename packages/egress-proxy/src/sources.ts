/**
 * Which policy applies to a connection: sources are single IPs or CIDRs, and the most specific
 * match wins (an exact IP beats any CIDR, a /28 beats a /24). The connection's remote address
 * is the identity; in transparent mode that is the guest's own address, in explicit mode the
 * address the proxy client connected from.
 */
import { BlockList, isIP } from 'node:net'
import { ValidationError } from '@hypeman-ts/common'
import { IPv4CidrRange, IPv6CidrRange, Validator } from 'ip-num'
import type { CompiledPolicy } from './policy.js'

export interface CanonicalSource {
  /** "10.100.0.5" for one address, "10.100.0.0/24" for a range; IPv6 in its short form. */
  key: string
  family: 4 | 6
  prefix: number
  address: string
}

function canonicalIp(ip: string): string {
  return isIP(ip) === 6 ? new URL(`http://[${ip}]/`).hostname.slice(1, -1) : ip
}

/** A socket's remote address as a source key: IPv4-mapped IPv6 addresses become plain IPv4. */
export function sourceAddress(remote: string | undefined): string {
  if (!remote) return ''
  if (remote.startsWith('::ffff:') && isIP(remote.slice(7)) === 4) return remote.slice(7)
  return remote
}

export function canonicalSource(match: unknown, field: string): CanonicalSource {
  if (typeof match !== 'string' || match.trim() === '') throw new ValidationError(field, 'must be an IP address or CIDR')
  const text = match.trim()
  const slash = text.indexOf('/')
  const ip = slash < 0 ? text : text.slice(0, slash)
  const family = isIP(ip) as 0 | 4 | 6
  if (family === 0) throw new ValidationError(field, `"${text}" is not an IP address or CIDR`)
  const max = family === 4 ? 32 : 128
  let prefix = max
  if (slash >= 0) {
    const p = text.slice(slash + 1)
    if (!/^\d{1,3}$/.test(p) || Number(p) > max) throw new ValidationError(field, `"${text}" has an invalid prefix length`)
    prefix = Number(p)
  }
  const address = canonicalIp(ip)
  if (prefix === max) return { key: address, family, prefix, address }
  const cidr = `${address}/${prefix}`
  const [valid] = family === 4 ? Validator.isValidIPv4CidrRange(cidr) : Validator.isValidIPv6CidrRange(cidr)
  if (!valid) {
    const network = family === 4 ? IPv4CidrRange.fromCidr(cidr).getFirst().toString() : canonicalIp(IPv6CidrRange.fromCidr(cidr).getFirst().toString())
    throw new ValidationError(field, `"${text}" has host bits set; the range is written ${network}/${prefix}`)
  }
  return { key: cidr, family, prefix, address }
}

export interface SourceEntry {
  readonly source: CanonicalSource
  readonly policy: CompiledPolicy
}

interface RangeEntry extends SourceEntry {
  readonly range: BlockList
}

export class SourceTable {
  private readonly exact = new Map<string, SourceEntry>()
  private ranges: RangeEntry[] = []
  /** Bumped on every change, so a connection can cache its lookup and notice rotation. */
  version = 0

  get size(): number {
    return this.exact.size + this.ranges.length
  }

  keys(): string[] {
    return [...this.exact.keys(), ...this.ranges.map((r) => r.source.key)]
  }

  has(key: string): boolean {
    return this.exact.has(key) || this.ranges.some((r) => r.source.key === key)
  }

  set(source: CanonicalSource, policy: CompiledPolicy): void {
    if (source.prefix === (source.family === 4 ? 32 : 128)) {
      this.exact.set(source.key, { source, policy })
    } else {
      const range = new BlockList()
      range.addSubnet(source.address, source.prefix, source.family === 4 ? 'ipv4' : 'ipv6')
      const rest = this.ranges.filter((r) => r.source.key !== source.key)
      rest.push({ source, policy, range })
      rest.sort((a, b) => b.source.prefix - a.source.prefix)
      this.ranges = rest
    }
    this.version++
  }

  delete(key: string): boolean {
    let had = this.exact.delete(key)
    if (!had) {
      const before = this.ranges.length
      this.ranges = this.ranges.filter((r) => r.source.key !== key)
      had = this.ranges.length !== before
    }
    if (had) this.version++
    return had
  }

  lookup(address: string): SourceEntry | undefined {
    const hit = this.exact.get(address)
    if (hit || this.ranges.length === 0) return hit
    const family = isIP(address)
    if (family === 0) return undefined
    const type = family === 4 ? 'ipv4' : 'ipv6'
    const key = family === 6 ? canonicalIp(address) : address
    if (family === 6) {
      const again = this.exact.get(key)
      if (again) return again
    }
    for (const r of this.ranges) {
      if (r.source.family === family && r.range.check(key, type)) return r
    }
    return undefined
  }
}
