/**
 * The guest's network in the config disk: validation (typed errors naming `network.<field>`), the
 * records the init reads, and reading them back. The init configures `lo` and the NIC found by
 * this MAC, and writes /etc/resolv.conf and /etc/hosts (guest/README.md, "Network").
 */
import { isIPv4 } from 'node:net'
import { ValidationError } from '@hypeman-ts/common'
import type { TlvEntry, TlvView } from './tlv.js'

export interface GuestNetworkConfig {
  /** MAC of the VM's virtio-net NIC (the VmSpec's `nics[].mac`): how the guest finds the interface. */
  mac: string
  /** The guest's IPv4 address. */
  address: string
  /** 1..32. A gateway outside address/prefixLength is reached on the link (an "onlink" route). */
  prefixLength: number
  /** IPv4 address of the default route. */
  gateway: string
  /** IPv4 resolvers for /etc/resolv.conf, in order (glibc and musl use the first 3); may be empty. */
  dns: string[]
  /** 68..65535; default: the device's (1500). */
  mtu?: number
}

/** Feature name of the `requires` record that comes with the network records. */
export const NETWORK_FEATURE = 'network'
export const MAX_DNS_SERVERS = 16

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i

function ipv4ToInt(ip: string): number {
  return ip.split('.').reduce((n, o) => n * 256 + Number(o), 0)
}

/** Addresses no host can use as its own or as a next hop: this network, loopback, multicast and above. */
function unusable(ip: string): string | undefined {
  const first = Number(ip.split('.')[0])
  if (first === 0) return 'is in 0.0.0.0/8 ("this network")'
  if (first === 127) return 'is a loopback address'
  if (first >= 224) return 'is a multicast, reserved or broadcast address'
  return undefined
}

function checkIpv4(field: string, value: unknown): string {
  if (typeof value !== 'string' || !isIPv4(value)) throw new ValidationError(field, `must be a dotted IPv4 address, got ${JSON.stringify(value)}`)
  const why = unusable(value)
  if (why) throw new ValidationError(field, `${value} ${why}`)
  return value
}

/** Validates and normalises (lowercase MAC); throws ValidationError naming `network.<field>`. */
export function checkNetworkConfig(n: GuestNetworkConfig): GuestNetworkConfig {
  if (typeof n !== 'object' || n === null) throw new ValidationError('network', 'must be an object')
  if (typeof n.mac !== 'string' || !MAC.test(n.mac)) throw new ValidationError('network.mac', `must look like aa:bb:cc:dd:ee:ff, got ${JSON.stringify(n.mac)}`)
  const mac = n.mac.toLowerCase()
  if (Number.parseInt(mac.slice(0, 2), 16) & 1) throw new ValidationError('network.mac', `${mac} is a multicast address (the first octet must be even)`)
  if (mac === '00:00:00:00:00:00') throw new ValidationError('network.mac', 'must not be all zeros')
  const address = checkIpv4('network.address', n.address)
  if (!Number.isInteger(n.prefixLength) || n.prefixLength < 1 || n.prefixLength > 32) throw new ValidationError('network.prefixLength', `must be an integer from 1 to 32, got ${n.prefixLength}`)
  if (n.prefixLength <= 30) {
    const host = ipv4ToInt(address) % 2 ** (32 - n.prefixLength)
    if (host === 0) throw new ValidationError('network.address', `${address} is the network address of its /${n.prefixLength}`)
    if (host === 2 ** (32 - n.prefixLength) - 1) throw new ValidationError('network.address', `${address} is the broadcast address of its /${n.prefixLength}`)
  }
  const gateway = checkIpv4('network.gateway', n.gateway)
  if (gateway === address) throw new ValidationError('network.gateway', 'must not be the guest\'s own address')
  if (!Array.isArray(n.dns)) throw new ValidationError('network.dns', 'must be a list of IPv4 addresses (may be empty)')
  if (n.dns.length > MAX_DNS_SERVERS) throw new ValidationError('network.dns', `at most ${MAX_DNS_SERVERS} servers (resolvers use the first 3)`)
  const dns = n.dns.map((d, i) => {
    if (typeof d !== 'string' || !isIPv4(d)) throw new ValidationError(`network.dns[${i}]`, `must be a dotted IPv4 address, got ${JSON.stringify(d)}`)
    return d
  })
  if (n.mtu !== undefined && (!Number.isInteger(n.mtu) || n.mtu < 68 || n.mtu > 65535)) throw new ValidationError('network.mtu', `must be an integer from 68 to 65535, got ${n.mtu}`)
  return { mac, address, prefixLength: n.prefixLength, gateway, dns, ...(n.mtu !== undefined ? { mtu: n.mtu } : {}) }
}

export function networkEntries(network: GuestNetworkConfig): TlvEntry[] {
  const n = checkNetworkConfig(network)
  const entries: TlvEntry[] = [
    ['requires', NETWORK_FEATURE],
    ['net.mac', n.mac],
    ['net.address', n.address],
    ['net.prefix_length', n.prefixLength],
    ['net.gateway', n.gateway],
    ...n.dns.map((d) => ['net.dns', d] as const),
  ]
  if (n.mtu !== undefined) entries.push(['net.mtu', n.mtu])
  return entries
}

export function decodeNetwork(v: TlvView): GuestNetworkConfig | undefined {
  const address = v.str('net.address')
  if (address === undefined) return undefined
  const mtu = v.int('net.mtu')
  return {
    mac: v.str('net.mac') ?? '',
    address,
    prefixLength: v.int('net.prefix_length') ?? 0,
    gateway: v.str('net.gateway') ?? '',
    dns: v.all('net.dns'),
    ...(mtu !== undefined ? { mtu } : {}),
  }
}
