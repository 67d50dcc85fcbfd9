/**
 * The options of a network and of an attach, checked once, up front: a bad value is a
 * ValidationError naming its field and nothing has been created yet. What comes out is the
 * resolved configuration the rest of the package works from (defaults filled in).
 */
import { availableParallelism } from 'node:os'
import { isAbsolute } from 'node:path'
import { ValidationError, type Logger } from '@hypeman-ts/common'
import { checkIPv4, parseSubnet, type Subnet } from './addresses.js'
import { checkRate, DEFAULT_CAPACITY_BITS } from './bandwidth.js'
import { checkNetnsName } from './exec.js'

export type EgressMode = 'all' | 'http_https_only'
export type GuestDevice = 'tap' | 'veth'

export interface HostNetworkOptions {
  /** Where the allocation file and its lock live (created if missing). */
  stateDir: string
  /** Bridge name, at most 15 characters. Default `hmbr0`. */
  bridge?: string
  /** IPv4 subnet of the guests; the gateway (the bridge's address) is its first address. Default `10.100.0.0/16`. */
  subnet?: string
  /** Run everything inside this existing named network namespace (`/run/netns/<name>`). */
  netns?: string
  /** Masquerade only out of this interface. Default: out of any interface but the bridge. */
  uplink?: string
  /** Resolvers the guests are told to use (and, when mediated, the only DNS they may reach). */
  dns?: string[]
  /** What the default rates share out. Default 1 Gbit/s each way. */
  capacity?: { downloadBitsPerSec?: number; uploadBitsPerSec?: number }
  /** CPUs the vCPU share is counted against. Default `os.availableParallelism()`. */
  hostCpus?: number
  /** Ports are isolated: no guest-to-guest traffic, bridged or routed. Default true. */
  isolate?: boolean
  /** Name of our nftables tables (`bridge <table>` and `inet <table>`). Default `hypeman`. */
  table?: string
  logger?: Logger
}

export interface ProxyEndpoint {
  /** Where the proxy listens. Default: the gateway. */
  address?: string
  /** Guest TCP 80 is redirected here (the proxy's transparent listener). */
  httpPort: number
  /** Guest TCP 443 is redirected here (may equal httpPort: the transparent listener tells TLS from HTTP). */
  httpsPort: number
  /** The explicit proxy port (what HTTP_PROXY points at); the guest may connect to it directly. */
  explicitPort?: number
}

export interface EgressOptions {
  enabled: boolean
  /** `all`: nothing leaves the guest but through the proxy (and DNS). `http_https_only`: only TCP 80/443 are forced through it. Default `all`. */
  mode?: EgressMode
  proxy?: ProxyEndpoint
}

export type AttachStep = 'allocated' | 'rules' | 'links' | 'shaping'

export interface AttachOptions {
  vcpus: number
  /** Host → guest. Default: the vCPU share of `capacity.downloadBitsPerSec`. */
  bandwidthDownloadBitsPerSec?: number
  /** Guest → host and beyond. Default: the vCPU share of `capacity.uploadBitsPerSec`. */
  bandwidthUploadBitsPerSec?: number
  egress?: EgressOptions
  /**
   * `tap` (default) for a VMM; `veth` makes a veth pair instead and returns its other end as
   * `peer`, for guests that are network namespaces (containers, and our tests).
   */
  device?: GuestDevice
  /** Called after each step finished (progress; a caller may persist or abort between steps). */
  onStep?: (step: AttachStep) => void | Promise<void>
  /** Checked between steps: an abort undoes the attach (as any failure does) and throws AbortedError. */
  signal?: AbortSignal
}

export interface NetworkConfig {
  stateDir: string
  bridge: string
  subnet: Subnet
  netns?: string
  uplink?: string
  dns?: string[]
  capacity: { downloadBitsPerSec: number; uploadBitsPerSec: number }
  hostCpus: number
  isolate: boolean
  table: string
}

export interface ResolvedEgress {
  mode: EgressMode
  proxy: Required<Omit<ProxyEndpoint, 'explicitPort'>> & { explicitPort?: number }
}

export interface ResolvedAttach {
  vcpus: number
  download?: number
  upload?: number
  egress: ResolvedEgress | null
  device: GuestDevice
}

const IFNAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/
const TABLE_RE = /^[A-Za-z][A-Za-z0-9_]{0,31}$/

export function checkIfname(value: unknown, field: string): string {
  if (typeof value !== 'string' || !IFNAME_RE.test(value)) {
    throw new ValidationError(field, 'expected an interface name of 1-15 letters, digits, ".", "_" or "-"')
  }
  return value
}

function wholeNumber(value: unknown, field: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new ValidationError(field, `expected a whole number from ${min} to ${max}, got ${String(value)}`)
  }
  return value
}

const port = (value: unknown, field: string) => wholeNumber(value, field, 1, 65535)

export function resolveNetworkOptions(opts: HostNetworkOptions): NetworkConfig {
  if (opts === null || typeof opts !== 'object') throw new ValidationError('options', 'expected an object')
  if (typeof opts.stateDir !== 'string' || !isAbsolute(opts.stateDir)) throw new ValidationError('stateDir', 'expected an absolute path')
  const bridge = checkIfname(opts.bridge ?? 'hmbr0', 'bridge')
  if (/^hm[tip][0-9a-f]{12}$/.test(bridge)) throw new ValidationError('bridge', 'must not look like an instance link (hm[tip] + 12 hex digits)')
  const subnet = parseSubnet(opts.subnet ?? '10.100.0.0/16', 'subnet')
  if (opts.dns !== undefined && (!Array.isArray(opts.dns) || opts.dns.length === 0)) {
    throw new ValidationError('dns', 'expected a non-empty list of IPv4 addresses')
  }
  const dns = opts.dns?.map((d, i) => checkIPv4(d, `dns[${i}]`))
  const capacity = {
    downloadBitsPerSec: checkRate(opts.capacity?.downloadBitsPerSec ?? DEFAULT_CAPACITY_BITS, 'capacity.downloadBitsPerSec'),
    uploadBitsPerSec: checkRate(opts.capacity?.uploadBitsPerSec ?? DEFAULT_CAPACITY_BITS, 'capacity.uploadBitsPerSec'),
  }
  const table = opts.table ?? 'hypeman'
  if (typeof table !== 'string' || !TABLE_RE.test(table)) throw new ValidationError('table', 'expected 1-32 letters, digits or "_", starting with a letter')
  if (opts.isolate !== undefined && typeof opts.isolate !== 'boolean') throw new ValidationError('isolate', 'expected a boolean')
  return {
    stateDir: opts.stateDir,
    bridge,
    subnet,
    ...(opts.netns !== undefined ? { netns: checkNetnsName(opts.netns) } : {}),
    ...(opts.uplink !== undefined ? { uplink: checkIfname(opts.uplink, 'uplink') } : {}),
    ...(dns !== undefined ? { dns } : {}),
    capacity,
    hostCpus: wholeNumber(opts.hostCpus ?? availableParallelism(), 'hostCpus', 1, 4096),
    isolate: opts.isolate ?? true,
    table,
  }
}

export function resolveAttachOptions(opts: AttachOptions, gateway: string): ResolvedAttach {
  if (opts === null || typeof opts !== 'object') throw new ValidationError('options', 'expected an object')
  const vcpus = wholeNumber(opts.vcpus, 'vcpus', 1, 4096)
  const device = opts.device ?? 'tap'
  if (device !== 'tap' && device !== 'veth') throw new ValidationError('device', 'expected "tap" or "veth"')
  let egress: ResolvedEgress | null = null
  const e = opts.egress
  if (e !== undefined && e !== null) {
    if (typeof e !== 'object' || typeof e.enabled !== 'boolean') throw new ValidationError('egress.enabled', 'expected a boolean')
    if (e.enabled) {
      const mode = e.mode ?? 'all'
      if (mode !== 'all' && mode !== 'http_https_only') throw new ValidationError('egress.mode', 'expected "all" or "http_https_only"')
      const p = e.proxy
      if (!p || typeof p !== 'object') throw new ValidationError('egress.proxy', 'mediated egress needs the proxy endpoint (httpPort, httpsPort)')
      egress = {
        mode,
        proxy: {
          address: p.address === undefined ? gateway : checkIPv4(p.address, 'egress.proxy.address'),
          httpPort: port(p.httpPort, 'egress.proxy.httpPort'),
          httpsPort: port(p.httpsPort, 'egress.proxy.httpsPort'),
          ...(p.explicitPort !== undefined ? { explicitPort: port(p.explicitPort, 'egress.proxy.explicitPort') } : {}),
        },
      }
    }
  }
  if (opts.onStep !== undefined && typeof opts.onStep !== 'function') throw new ValidationError('onStep', 'expected a function')
  return {
    vcpus,
    ...(opts.bandwidthDownloadBitsPerSec !== undefined ? { download: checkRate(opts.bandwidthDownloadBitsPerSec, 'bandwidthDownloadBitsPerSec') } : {}),
    ...(opts.bandwidthUploadBitsPerSec !== undefined ? { upload: checkRate(opts.bandwidthUploadBitsPerSec, 'bandwidthUploadBitsPerSec') } : {}),
    egress,
    device,
  }
}
