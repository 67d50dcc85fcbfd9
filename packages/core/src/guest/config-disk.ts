/**
 * The config disk (virtio-blk serial `hm-config`): everything the guest init needs to start the
 * program, in one raw image the init reads with pread — no filesystem, no parser beyond TLV.
 *
 *   0  "HMCONFIG"   8 bytes magic
 *   8  u32 LE       format version (1)
 *  12  u32 LE       payload length
 *  16  u32 LE       CRC-32 (IEEE) of the payload
 *  20  u32 LE       reserved, 0
 *  24  payload      TLV records (tlv.ts), then zero padding to a 4 KiB multiple
 *
 * Extensibility: the init skips keys it does not know, so a new optional key needs nothing; a key
 * the guest must not ignore is announced with a `requires` record naming its feature (`network`,
 * `egress`, `volumes`, `kernel_headers`), which an older init refuses with a clear boot error instead of running
 * half-configured.
 */
import { open } from 'node:fs/promises'
import { crc32 } from 'node:zlib'
import { ValidationError, writeFileAtomic } from '@hypeman-ts/common'
import { decodeEgress, egressEntries, type GuestEgressConfig } from './egress-config.js'
import { GuestError } from './errors.js'
import { decodeNetwork, networkEntries, type GuestNetworkConfig } from './network-config.js'
import { encodeTlv, TlvView, type TlvEntry } from './tlv.js'
import { DISK_SERIAL_RE, decodeVolumes, volumeEntries, type GuestVolumeConfig } from './volume-config.js'

export const CONFIG_MAGIC = 'HMCONFIG'
export const CONFIG_FORMAT_VERSION = 1
export const CONFIG_HEADER_SIZE = 24
/** Same bound as the init's CONFIG_MAX_PAYLOAD. */
export const CONFIG_MAX_PAYLOAD = 16 * 1024 * 1024
const ALIGN = 4096

export type RootfsType = 'ext4' | 'erofs'

export interface GuestConfig {
  /** The program and its arguments, already resolved from Entrypoint/Cmd (resolveProgram). */
  argv: string[]
  /** The complete environment (buildGuestEnv); insertion order is kept. */
  env: Record<string, string>
  /** Absolute; created (owned by root) if missing, as docker does. Default "/". */
  workdir?: string
  /** docker `--user` spec: "", "name", "uid", "name:group", "uid:gid". Default "" (root). */
  user?: string
  /** Default "hypeman". */
  hostname?: string
  /** 32 lowercase hex digits written to /etc/machine-id; unset leaves the image's. */
  machineId?: string
  /** Filesystem of the `hm-rootfs` disk. Default ext4. */
  rootfsType?: RootfsType
  /** Do not start the agent: exec and stat are unavailable. */
  skipGuestAgent?: boolean
  /** Grace between SIGTERM and SIGKILL when the stop comes from the ACPI power button. Default 10 s. */
  stopGraceMs?: number
  /**
   * The NIC's configuration; without it the guest has only `lo` (and a NIC, if the VM has one,
   * stays down). The program starts once the link is up.
   */
  network?: GuestNetworkConfig
  /** Mediated egress: the proxy CA to trust and the proxy variables to default. */
  egress?: GuestEgressConfig
  /** Volume disks to mount, in order, after the root is switched. */
  volumes?: GuestVolumeConfig[]
  /**
   * Serial of the kernel headers disk: mounted read-only, and /lib/modules/$(uname -r)/build (and
   * source) made to point into it.
   */
  kernelHeadersSerial?: string
}

export interface DecodedGuestConfig extends Required<Omit<GuestConfig, 'env' | 'network' | 'egress' | 'volumes' | 'machineId' | 'kernelHeadersSerial'>> {
  machineId?: string
  env: Record<string, string>
  kernelHeadersSerial?: string
  network?: GuestNetworkConfig
  egress?: GuestEgressConfig
  volumes?: GuestVolumeConfig[]
  requires: string[]
}

const ENV_NAME = /^[^=\0]+$/
export const KERNEL_HEADERS_FEATURE = 'kernel_headers'
const HOSTNAME = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/
const USER = /^[^:\0]*(:[^:\0]+)?$/

function noNul(field: string, s: string): void {
  if (s.includes('\0')) throw new ValidationError(field, 'must not contain NUL bytes')
}

/** The TLV entries of a config, validated. Pure; `encodeGuestConfig` adds the header. */
export function guestConfigEntries(c: GuestConfig): TlvEntry[] {
  if (!Array.isArray(c.argv) || c.argv.length === 0 || c.argv[0] === '') {
    throw new ValidationError('argv', 'the program is empty (no Entrypoint or Cmd to run)')
  }
  c.argv.forEach((a, i) => noNul(`argv[${i}]`, a))
  const entries: TlvEntry[] = c.argv.map((a) => ['argv', a] as const)
  for (const [name, value] of Object.entries(c.env)) {
    if (!ENV_NAME.test(name)) throw new ValidationError(`env.${name}`, 'environment variable names must be non-empty and contain no "=" or NUL')
    noNul(`env.${name}`, value)
    entries.push(['env', `${name}=${value}`])
  }
  if (c.workdir !== undefined) {
    if (!c.workdir.startsWith('/')) throw new ValidationError('workdir', 'must be an absolute path')
    noNul('workdir', c.workdir)
    entries.push(['workdir', c.workdir])
  }
  if (c.user !== undefined) {
    if (!USER.test(c.user)) throw new ValidationError('user', 'must be "", "user", "uid", "user:group" or "uid:gid"')
    entries.push(['user', c.user])
  }
  if (c.hostname !== undefined) {
    if (c.hostname.length > 64 || !HOSTNAME.test(c.hostname)) throw new ValidationError('hostname', 'must be a valid hostname of at most 64 characters')
    entries.push(['hostname', c.hostname])
  }
  if (c.machineId !== undefined) {
    if (!/^[0-9a-f]{32}$/.test(c.machineId)) throw new ValidationError('machineId', 'must be 32 lowercase hex digits')
    entries.push(['machine_id', c.machineId])
  }
  if (c.rootfsType !== undefined) {
    if (c.rootfsType !== 'ext4' && c.rootfsType !== 'erofs') throw new ValidationError('rootfsType', 'must be ext4 or erofs')
    entries.push(['rootfs_fstype', c.rootfsType])
  }
  if (c.skipGuestAgent !== undefined) entries.push(['skip_agent', c.skipGuestAgent])
  if (c.stopGraceMs !== undefined) {
    if (!Number.isSafeInteger(c.stopGraceMs) || c.stopGraceMs < 0) throw new ValidationError('stopGraceMs', 'must be a non-negative integer')
    entries.push(['stop_grace_ms', c.stopGraceMs])
  }
  if (c.network !== undefined) entries.push(...networkEntries(c.network))
  if (c.egress !== undefined) entries.push(...egressEntries(c.egress))
  if (c.volumes !== undefined) entries.push(...volumeEntries(c.volumes))
  if (c.kernelHeadersSerial !== undefined) {
    if (!DISK_SERIAL_RE.test(c.kernelHeadersSerial)) throw new ValidationError('kernelHeadersSerial', 'must be 1-20 letters, digits and dashes (a virtio-blk serial)')
    entries.push(['requires', KERNEL_HEADERS_FEATURE], ['kernel_headers', c.kernelHeadersSerial])
  }
  return entries
}

/** The whole disk image: header, payload, zero padding. Pure. */
export function encodeGuestConfig(c: GuestConfig): Buffer {
  return packConfigImage(encodeTlv(guestConfigEntries(c)))
}

/** Header + a TLV payload + padding (for tools and tests that write records of their own). */
export function packConfigImage(payload: Buffer): Buffer {
  if (payload.length > CONFIG_MAX_PAYLOAD) throw new ValidationError('config', `encoded config is ${payload.length} bytes, more than the ${CONFIG_MAX_PAYLOAD} the guest reads`)
  const size = Math.ceil((CONFIG_HEADER_SIZE + payload.length) / ALIGN) * ALIGN
  const img = Buffer.alloc(size)
  img.write(CONFIG_MAGIC, 0, 'ascii')
  img.writeUInt32LE(CONFIG_FORMAT_VERSION, 8)
  img.writeUInt32LE(payload.length, 12)
  img.writeUInt32LE(crc32(payload), 16)
  payload.copy(img, CONFIG_HEADER_SIZE)
  return img
}

/** Reads a config image back (for tests, debugging and `hypeman inspect`-style tools). */
export function decodeGuestConfig(img: Buffer): DecodedGuestConfig {
  const bad = (msg: string) => new GuestError('bad_config_disk', `config disk: ${msg}`)
  if (img.length < CONFIG_HEADER_SIZE || img.toString('ascii', 0, 8) !== CONFIG_MAGIC) throw bad('bad magic')
  const version = img.readUInt32LE(8)
  if (version !== CONFIG_FORMAT_VERSION) throw bad(`format version ${version} not supported`)
  const len = img.readUInt32LE(12)
  if (len > img.length - CONFIG_HEADER_SIZE) throw bad('payload length exceeds the image')
  const payload = img.subarray(CONFIG_HEADER_SIZE, CONFIG_HEADER_SIZE + len)
  if (crc32(payload) !== img.readUInt32LE(16)) throw bad('checksum mismatch')
  const v = TlvView.decode(payload)
  const env: Record<string, string> = {}
  for (const e of v.all('env')) {
    const eq = e.indexOf('=')
    env[e.slice(0, eq)] = e.slice(eq + 1)
  }
  const network = decodeNetwork(v)
  const egress = decodeEgress(v)
  const volumes = decodeVolumes(v)
  const kernelHeadersSerial = v.str('kernel_headers')
  return {
    argv: v.all('argv'),
    env,
    workdir: v.str('workdir') ?? '/',
    user: v.str('user') ?? '',
    hostname: v.str('hostname') ?? 'hypeman',
    ...(v.str('machine_id') ? { machineId: v.str('machine_id')! } : {}),
    rootfsType: (v.str('rootfs_fstype') as RootfsType | undefined) ?? 'ext4',
    skipGuestAgent: v.bool('skip_agent') ?? false,
    stopGraceMs: v.int('stop_grace_ms') ?? 10_000,
    ...(network ? { network } : {}),
    ...(egress ? { egress } : {}),
    ...(volumes.length ? { volumes } : {}),
    ...(kernelHeadersSerial !== undefined ? { kernelHeadersSerial } : {}),
    requires: v.all('requires'),
  }
}

/**
 * The config of a config disk file. Only its header and payload are read: the file is
 * CONFIG_DISK_BYTES long (16 MiB, sparse), and reading it whole took ≈ 60 ms.
 */
export async function readGuestConfigDisk(path: string): Promise<DecodedGuestConfig> {
  const fh = await open(path, 'r')
  try {
    const header = Buffer.alloc(CONFIG_HEADER_SIZE)
    const { bytesRead } = await fh.read(header, 0, CONFIG_HEADER_SIZE, 0)
    const len = bytesRead === CONFIG_HEADER_SIZE ? header.readUInt32LE(12) : 0
    // A length past the disk's payload is the decoder's to refuse, from what the file holds.
    const img = Buffer.alloc(bytesRead + Math.min(len, CONFIG_MAX_PAYLOAD + 1))
    header.copy(img, 0, 0, bytesRead)
    const body = await fh.read(img, bytesRead, img.length - bytesRead, bytesRead)
    return decodeGuestConfig(img.subarray(0, bytesRead + body.bytesRead))
  } finally {
    await fh.close()
  }
}

/**
 * Replaces the volumes of an existing config disk, keeping everything else (a volume attached or
 * detached while the instance is stopped); atomic like the first write.
 */
export async function rewriteGuestConfigVolumes(path: string, volumes: GuestVolumeConfig[]): Promise<void> {
  const { requires: _requires, volumes: _old, ...kept } = await readGuestConfigDisk(path)
  await writeGuestConfigDisk(path, { ...kept, ...(volumes.length ? { volumes } : {}) })
}

/**
 * Every config disk has this length, whatever its content (sparse past the content): a guest
 * restored from a template sees the disk size the template was booted with, and reads its config
 * from a disk of that size.
 */
export const CONFIG_DISK_BYTES = Math.ceil((CONFIG_HEADER_SIZE + CONFIG_MAX_PAYLOAD) / ALIGN) * ALIGN

/** Writes the config disk image atomically (a crash leaves no half-written disk). */
export async function writeGuestConfigDisk(path: string, config: GuestConfig): Promise<void> {
  await writeFileAtomic(path, encodeGuestConfig(config), 0o600, CONFIG_DISK_BYTES)
}
