/**
 * The create parameters of the seed API ("Create and start instance"), validated field by field.
 * A parameter whose subsystem does not exist yet is refused with a clear `not_supported` error
 * naming it, never accepted and ignored. Nothing is created before this passes.
 */
import { NotSupportedError, parseRate, parseSize, ValidationError } from '@hypeman-ts/common'
import { compilePolicy } from '@hypeman-ts/egress-proxy'
import { checkExecSize } from '../guest/exec-limits.js'
import { parsePlatform } from '../images/manifest.js'
import { parseReference, formatReference } from '../images/reference.js'
import { validateTags } from '../validate.js'

export type Hypervisor = 'cloud-hypervisor' | 'firecracker' | 'qemu' | 'vz'
export const HYPERVISORS: readonly Hypervisor[] = ['cloud-hypervisor', 'firecracker', 'qemu', 'vz']

export type { VolumeMount } from '../volumes/mounts.js'
import { validateVolumeMounts, type VolumeMount, type VolumeMountSpec } from '../volumes/mounts.js'

export type { CredentialPolicy } from '@hypeman-ts/egress-proxy'
import type { CredentialPolicy } from '@hypeman-ts/egress-proxy'

export type EgressMode = 'all' | 'http_https_only'

export interface NetworkParams {
  enabled?: boolean
  bandwidthDownload?: string
  bandwidthUpload?: string
  egress?: { enabled?: boolean; enforcement?: { mode?: EgressMode } }
}

/** The network an instance asked for, checked and parsed. */
export interface NetworkSpec {
  enabled: boolean
  bandwidthDownload: string | null
  downloadBitsPerSec: number | null
  bandwidthUpload: string | null
  uploadBitsPerSec: number | null
  egress: { enabled: boolean; mode: EgressMode }
}

/** The seed's InstanceNewParams, in camelCase. */
export interface CreateInstanceParams {
  /** OCI image reference; pulled if the cache does not have it. */
  image: string
  /** Lowercase letters, digits and dashes; not starting or ending with a dash; at most 63. */
  name: string
  /** Override the image CMD (like `docker run IMAGE CMD...`). */
  cmd?: string[]
  /** Override the image ENTRYPOINT (like `docker run --entrypoint`); resets the image CMD. */
  entrypoint?: string[]
  env?: Record<string, string>
  /** Base memory, e.g. "1GB", "512MB", "2G". Default "1GB". */
  size?: string
  /** Extra memory that can be plugged in later, e.g. "1GB". Omit to disable. */
  hotplugSize?: string
  /** Writable overlay disk size, e.g. "10GB". Default "10GB". */
  overlaySize?: string
  /** Disk I/O limit, e.g. "100MB/s". */
  diskIoBps?: string
  /** Default 2. */
  vcpus?: number
  /** Default: the manager's (qemu). */
  hypervisor?: Hypervisor
  /** os/arch[/variant] of the image to pull; default the manager's. */
  platform?: string
  skipGuestAgent?: boolean
  skipKernelHeaders?: boolean
  tags?: Record<string, string>
  network?: NetworkParams
  credentials?: Record<string, CredentialPolicy>
  devices?: string[]
  gpu?: { profile?: string }
  volumes?: VolumeMount[]
}

/** What create works from: every field checked, sizes parsed, defaults applied. */
export interface InstanceSpec {
  image: string
  name: string
  cmd: string[] | null
  entrypoint: string[] | null
  env: Record<string, string>
  size: string
  memoryBytes: number
  hotplugSize: string | null
  hotplugBytes: number
  overlaySize: string
  overlayBytes: number
  diskIoBps: string | null
  diskIoBytesPerSec: number | null
  vcpus: number
  hypervisor: Hypervisor
  platform: string | null
  skipGuestAgent: boolean
  skipKernelHeaders: boolean
  tags: Record<string, string>
  network: NetworkSpec
  /** Guest-visible env var name → policy; the real values stay in `env` on the host only. */
  credentials: Record<string, CredentialPolicy>
  /**
   * Volumes to attach, in order (disk `hm-vol-<i>`, or `hm-hvol-<slot>` for one attached while
   * running); ids once the create's `volumes` step resolved names. Absent in records written
   * before volumes existed.
   */
  volumes?: InstanceVolume[]
  /** Registered devices to pass through, in order; ids once the create's `devices` step resolved names. */
  devices?: string[]
  /** A vGPU of this profile (an mdev made at create, removed at delete). */
  gpu?: { profile: string } | null
}

/** A volume of an instance's spec. */
export interface InstanceVolume extends VolumeMountSpec {
  /**
   * Set when it was attached while the instance ran: its disks are SCSI disks (hot-pluggable,
   * also at later boots) at targets 2·slot and 2·slot+1, with serials by slot (guest/constants.ts).
   */
  hotplugSlot?: number
}

export interface SpecDefaults {
  size: string
  overlaySize: string
  vcpus: number
  hypervisor: Hypervisor
  /** Supported hypervisors on this manager (drivers that exist). */
  available: readonly Hypervisor[]
  maxVcpus: number
  /** The manager has a default network (it was not opened with `network: false`). */
  networkAvailable: boolean
  /** skipKernelHeaders when a create does not say (the spec's default: false, headers attached). */
  skipKernelHeaders: boolean
}

const NAME = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/
const KNOWN = new Set([
  'image', 'name', 'cmd', 'entrypoint', 'env', 'size', 'hotplugSize', 'overlaySize', 'diskIoBps', 'vcpus', 'hypervisor',
  'platform', 'skipGuestAgent', 'skipKernelHeaders', 'tags', 'network', 'credentials', 'devices', 'gpu', 'volumes',
])
const MIB = 1024 * 1024

export function validateName(name: unknown, field = 'name'): string {
  if (typeof name !== 'string' || name === '') throw new ValidationError(field, 'is required')
  if (name.length > 63) throw new ValidationError(field, `"${name}" is longer than 63 characters`)
  if (!NAME.test(name)) {
    throw new ValidationError(field, `"${name}" must be lowercase letters, digits and dashes, not starting or ending with a dash`)
  }
  return name
}

function stringArray(value: unknown, field: string): string[] | null {
  if (value === undefined || value === null) return null
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) throw new ValidationError(field, 'must be an array of strings')
  value.forEach((v: string, i) => {
    if (v.includes('\0')) throw new ValidationError(`${field}[${i}]`, 'must not contain NUL bytes')
  })
  return [...value]
}

function bool(value: unknown, field: string): boolean {
  if (value === undefined || value === null) return false
  if (typeof value !== 'boolean') throw new ValidationError(field, 'must be true or false')
  return value
}

function notYet(field: string, what: string): never {
  throw new NotSupportedError(`${field}: ${what} is not supported yet`, { field })
}

export function validateCreateParams(input: unknown, defaults: SpecDefaults): InstanceSpec {
  if (!input || typeof input !== 'object' || Array.isArray(input)) throw new ValidationError('params', 'must be an object')
  const p = input as CreateInstanceParams & Record<string, unknown>
  for (const key of Object.keys(p)) {
    if (!KNOWN.has(key) && p[key] !== undefined) throw new ValidationError(key, 'is not a create parameter')
  }

  const name = validateName(p.name)
  const image = formatReference(parseReference(p.image, 'image'))
  const platform = p.platform === undefined ? null : (parsePlatform(p.platform, 'platform'), p.platform)
  const cmd = stringArray(p.cmd, 'cmd')
  const entrypoint = stringArray(p.entrypoint, 'entrypoint')

  const env = p.env === undefined || p.env === null ? {} : validateEnv(p.env)

  checkExecSize([{ field: 'entrypoint', values: entrypoint ?? [] }, { field: 'cmd', values: cmd ?? [] }], env)

  const size = p.size ?? defaults.size
  const memoryBytes = parseSize(size, 'size', { min: 64 * MIB, max: 1024 ** 4 })
  if (memoryBytes % MIB !== 0) throw new ValidationError('size', `"${size}" is not a whole number of MiB`)
  let hotplugBytes = 0
  if (p.hotplugSize !== undefined && p.hotplugSize !== null) {
    hotplugBytes = parseSize(p.hotplugSize, 'hotplugSize', { min: 128 * MIB, max: 1024 ** 4 })
    if (hotplugBytes % (128 * MIB) !== 0) throw new ValidationError('hotplugSize', `"${p.hotplugSize}" must be a multiple of 128MB (the memory block size)`)
  }
  const overlaySize = p.overlaySize ?? defaults.overlaySize
  const overlayBytes = parseSize(overlaySize, 'overlaySize', { min: 16 * MIB, max: 16 * 1024 ** 4 })

  let diskIoBytesPerSec: number | null = null
  if (p.diskIoBps !== undefined && p.diskIoBps !== null) diskIoBytesPerSec = Math.floor(parseRate(p.diskIoBps, 'diskIoBps') / 8)

  const vcpus = p.vcpus ?? defaults.vcpus
  if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > defaults.maxVcpus) {
    throw new ValidationError('vcpus', `must be a whole number from 1 to ${defaults.maxVcpus}, got ${JSON.stringify(p.vcpus)}`)
  }

  const hypervisor = p.hypervisor ?? defaults.hypervisor
  if (!HYPERVISORS.includes(hypervisor)) throw new ValidationError('hypervisor', `must be one of ${HYPERVISORS.join(', ')}`)
  if (!defaults.available.includes(hypervisor)) notYet('hypervisor', `"${hypervisor}" (no driver for it on this host; available: ${defaults.available.join(', ')})`)

  const skipGuestAgent = bool(p.skipGuestAgent, 'skipGuestAgent')
  const skipKernelHeaders = p.skipKernelHeaders === undefined || p.skipKernelHeaders === null ? defaults.skipKernelHeaders : bool(p.skipKernelHeaders, 'skipKernelHeaders')
  const tags = validateTags(p.tags, 'tags')

  const network = validateNetwork(p.network, defaults.networkAvailable)
  const credentials = validateCredentials(p.credentials, env, network)

  const volumes = validateVolumeMounts(p.volumes)
  const devices = validateDevices(p.devices)
  const gpu = validateGpu(p.gpu)

  return {
    image,
    name,
    cmd,
    entrypoint,
    env,
    size,
    memoryBytes,
    hotplugSize: p.hotplugSize ?? null,
    hotplugBytes,
    overlaySize,
    overlayBytes,
    diskIoBps: p.diskIoBps ?? null,
    diskIoBytesPerSec,
    vcpus,
    hypervisor,
    platform,
    skipGuestAgent,
    skipKernelHeaders,
    tags,
    network,
    credentials,
    volumes,
    devices,
    gpu,
  }
}

/** Each device is one more PCI function on the guest's bus, as a volume is. */
export const MAX_DEVICES = 16

function validateDevices(input: unknown): string[] {
  if (input === undefined || input === null) return []
  if (!Array.isArray(input)) throw new ValidationError('devices', 'must be an array of device ids or names')
  if (input.length > MAX_DEVICES) throw new ValidationError('devices', `at most ${MAX_DEVICES} devices, got ${input.length}`)
  input.forEach((d: unknown, i) => {
    if (typeof d !== 'string' || d === '') throw new ValidationError(`devices[${i}]`, 'must be a device id or name')
    const first = input.indexOf(d)
    if (first !== i) throw new ValidationError(`devices[${i}]`, `"${d}" is also devices[${first}]`)
  })
  return [...(input as string[])]
}

function validateGpu(input: unknown): { profile: string } | null {
  if (input === undefined || input === null) return null
  if (typeof input !== 'object' || Array.isArray(input)) throw new ValidationError('gpu', 'must be an object')
  const g = input as Record<string, unknown>
  for (const key of Object.keys(g)) if (key !== 'profile' && g[key] !== undefined) throw new ValidationError(`gpu.${key}`, 'is not a gpu field')
  if (typeof g.profile !== 'string' || g.profile === '') throw new ValidationError('gpu.profile', 'is required (a vGPU profile name, e.g. "L40S-1Q"); a whole GPU is passed with devices')
  if (g.profile.length > 128 || /[\0\n/]/.test(g.profile)) throw new ValidationError('gpu.profile', 'must be a profile name of at most 128 characters')
  return { profile: g.profile }
}

function validateNetwork(input: unknown, available: boolean): NetworkSpec {
  if (input !== undefined && input !== null && (typeof input !== 'object' || Array.isArray(input))) throw new ValidationError('network', 'must be an object')
  const n = (input ?? {}) as NetworkParams
  if (n.enabled !== undefined && typeof n.enabled !== 'boolean') throw new ValidationError('network.enabled', 'must be true or false')
  // The spec's default is a network; a manager opened with `network: false` has none to give.
  const enabled = n.enabled ?? available
  if (enabled && !available) throw new NotSupportedError('network.enabled: this manager was opened without a network (network: false)', { field: 'network.enabled' })
  const rate = (v: unknown, field: string): number | null => (v === undefined || v === null ? null : parseRate(v, field))
  const downloadBitsPerSec = rate(n.bandwidthDownload, 'network.bandwidthDownload')
  const uploadBitsPerSec = rate(n.bandwidthUpload, 'network.bandwidthUpload')
  const e = n.egress
  if (e !== undefined && e !== null && (typeof e !== 'object' || Array.isArray(e))) throw new ValidationError('network.egress', 'must be an object')
  if (e?.enabled !== undefined && typeof e.enabled !== 'boolean') throw new ValidationError('network.egress.enabled', 'must be true or false')
  const mode = e?.enforcement?.mode ?? 'all'
  if (mode !== 'all' && mode !== 'http_https_only') throw new ValidationError('network.egress.enforcement.mode', 'must be "all" or "http_https_only"')
  const egressEnabled = e?.enabled ?? false
  if (!enabled && (downloadBitsPerSec !== null || uploadBitsPerSec !== null || egressEnabled)) {
    const field = egressEnabled ? 'network.egress.enabled' : downloadBitsPerSec !== null ? 'network.bandwidthDownload' : 'network.bandwidthUpload'
    throw new ValidationError(field, 'needs network.enabled')
  }
  return {
    enabled,
    bandwidthDownload: downloadBitsPerSec === null ? null : (n.bandwidthDownload as string),
    downloadBitsPerSec,
    bandwidthUpload: uploadBitsPerSec === null ? null : (n.bandwidthUpload as string),
    uploadBitsPerSec,
    egress: { enabled: egressEnabled, mode },
  }
}

/** The credentials map, checked as the proxy will compile it (fields named as the proxy names them). */
/** An env map: valid names, string values without NUL. Throws naming `env.NAME`. */
export function validateEnv(input: unknown): Record<string, string> {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw new ValidationError('env', 'must be an object of strings')
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(input)) {
    if (!ENV_NAME.test(k)) throw new ValidationError(`env.${k}`, 'is not a valid environment variable name (letters, digits and _, not starting with a digit)')
    if (typeof v !== 'string') throw new ValidationError(`env.${k}`, 'must be a string')
    if (v.includes('\0')) throw new ValidationError(`env.${k}`, 'must not contain NUL bytes')
    env[k] = v
  }
  return env
}

function validateCredentials(input: unknown, env: Record<string, string>, network: NetworkSpec): Record<string, CredentialPolicy> {
  if (input === undefined || input === null) return {}
  if (typeof input !== 'object' || Array.isArray(input)) throw new ValidationError('credentials', 'must be a map of env var names to credential policies')
  if (Object.keys(input).length === 0) return {}
  if (!network.egress.enabled) {
    throw new ValidationError('credentials', 'credential brokering needs the mediated egress path: set network.egress.enabled to true')
  }
  compilePolicy({ env, credentials: input }, () => 'placeholder')
  return input as Record<string, CredentialPolicy>
}
