/**
 * IPv4 arithmetic for the subnet (parsing and containment by ip-num; the allocation policy is
 * ours: ip-num's Pool cannot be used past its first allocation). The gateway is the first host
 * address; guests get the others. MACs are locally administered unicast and derived from the IP
 * (`02:68:` + its four bytes), so they are unique on the bridge without being stored apart.
 */
import { ValidationError } from '@hypeman-ts/common'
import { IPv4, IPv4CidrRange, Validator } from 'ip-num'

export interface Subnet {
  /** Normalised CIDR, e.g. `10.100.0.0/16`. */
  cidr: string
  network: string
  prefixLength: number
  netmask: string
  gateway: string
  /** The lowest and highest address a guest may get. */
  firstGuest: bigint
  lastGuest: bigint
}

const MIN_PREFIX = 8
const MAX_PREFIX = 30

export function isIPv4(value: unknown): value is string {
  return typeof value === 'string' && Validator.isValidIPv4String(value)[0]
}

export function checkIPv4(value: unknown, field: string): string {
  if (!isIPv4(value)) throw new ValidationError(field, `${JSON.stringify(value)} is not an IPv4 address`)
  return IPv4.fromString(value).toString()
}

export function parseSubnet(value: unknown, field = 'subnet'): Subnet {
  if (typeof value !== 'string' || !Validator.isValidIPv4CidrNotation(value)[0]) {
    throw new ValidationError(field, `${JSON.stringify(value)} is not an IPv4 CIDR such as "10.100.0.0/16"`)
  }
  if (!Validator.isValidIPv4CidrRange(value)[0]) {
    throw new ValidationError(field, `"${value}" is not a network address (the host bits must be zero)`)
  }
  const range = IPv4CidrRange.fromCidr(value)
  const prefixLength = Number(range.getPrefix().getValue())
  if (prefixLength < MIN_PREFIX || prefixLength > MAX_PREFIX) {
    throw new ValidationError(field, `prefix /${prefixLength} is outside /${MIN_PREFIX}../${MAX_PREFIX}`)
  }
  const first = range.getFirst().getValue()
  const last = range.getLast().getValue()
  return {
    cidr: range.toCidrString(),
    network: range.getFirst().toString(),
    prefixLength,
    netmask: range.getPrefix().toMask().toString(),
    gateway: IPv4.fromNumber(first + 1n).toString(),
    firstGuest: first + 2n,
    lastGuest: last - 1n,
  }
}

export function subnetContains(subnet: Subnet, ip: string): boolean {
  return isIPv4(ip) && IPv4CidrRange.fromCidr(subnet.cidr).contains(IPv4.fromString(ip))
}

/** How many guests the subnet can hold. */
export function guestCapacity(subnet: Subnet): number {
  return Number(subnet.lastGuest - subnet.firstGuest + 1n)
}

/**
 * The next free guest address after `cursor` (wrapping around), so a freed address is reused as
 * late as possible: stale ARP and conntrack entries of its last owner have time to expire.
 */
export function nextFreeAddress(subnet: Subnet, used: ReadonlySet<string>, cursor?: string | null): string | undefined {
  const size = subnet.lastGuest - subnet.firstGuest + 1n
  let start = subnet.firstGuest
  if (cursor && subnetContains(subnet, cursor)) {
    const c = IPv4.fromString(cursor).getValue()
    if (c >= subnet.firstGuest && c < subnet.lastGuest) start = c + 1n
  }
  for (let i = 0n; i < size; i++) {
    const candidate = IPv4.fromNumber(subnet.firstGuest + ((start - subnet.firstGuest + i) % size)).toString()
    if (!used.has(candidate)) return candidate
  }
  return undefined
}

export function macForAddress(ip: string): string {
  const bytes = ip.split('.').map((o) => Number(o).toString(16).padStart(2, '0'))
  return ['02', '68', ...bytes].join(':')
}
