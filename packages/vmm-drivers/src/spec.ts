/**
 * Checks a VmSpec before anything is created, naming the offending field. Limits here are the
 * hypervisors' own (virtio-blk serials are 20 bytes, interface names 15, unix socket paths 107,
 * the x86 kernel command line 2048), so a bad spec fails here and not halfway through a start.
 */
import { access, constants } from 'node:fs/promises'
import { isAbsolute } from 'node:path'
import { checkNetnsName, netnsPath, NotSupportedError, run, ValidationError } from '@hypeman-ts/common'
import type { DiskSpec, VmSpec } from './types.js'

const MiB = 1024 * 1024
export const SOCKET_PATH_MAX = 107
export const CMDLINE_MAX = 2048
const SERIAL_RE = /^[A-Za-z0-9._-]{1,20}$/
const NAME_RE = /^[A-Za-z0-9._-]{1,64}$/
const CHANNEL_RE = /^[A-Za-z0-9._-]{1,64}$/
const TAP_RE = /^[A-Za-z0-9_.-]{1,15}$/
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i

function path(field: string, value: unknown): string {
  if (typeof value !== 'string' || value === '') throw new ValidationError(field, 'expected a path')
  if (!isAbsolute(value)) throw new ValidationError(field, `"${value}" is not an absolute path`)
  if (/[\0\n\r]/.test(value)) throw new ValidationError(field, 'contains a NUL or newline')
  return value
}

function socketPath(field: string, value: unknown): string {
  const p = path(field, value)
  if (Buffer.byteLength(p) > SOCKET_PATH_MAX) {
    throw new ValidationError(field, `unix socket path is ${Buffer.byteLength(p)} bytes, the limit is ${SOCKET_PATH_MAX}`)
  }
  return p
}

function positiveInt(field: string, value: unknown, max: number, min = 1): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new ValidationError(field, `expected a whole number from ${min} to ${max}, got ${String(value)}`)
  }
  return value
}

function wholeMiB(field: string, value: unknown, min: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new ValidationError(field, `expected at least ${min / MiB} MiB in bytes, got ${String(value)}`)
  }
  if (value % MiB !== 0) throw new ValidationError(field, `${value} bytes is not a whole number of MiB`)
  return value
}

/** What a driver accepts beyond the common shape. The defaults are QEMU's. */
export interface SpecSupport {
  /** `VmSpec.vsock` (default false: refused with not_supported). */
  vsock?: boolean
  /** Channel backends the driver has (default socket and file); others are refused with not_supported. */
  channelBackends?: readonly string[]
  /** `VmSpec.memoryFile` (default false: refused with not_supported). */
  memoryFile?: boolean
  /** `VmSpec.passthrough` (default false: refused with not_supported). */
  passthrough?: boolean
  /** `VmSpec.scsiController` and `bus: 'scsi'` disks (default false). */
  diskHotplug?: boolean
}

/** A PCI address as sysfs names it: domain:bus:slot.function. */
export const PCI_ADDRESS_RE = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$/

/** One disk (`field` names it, e.g. `disks[2]`), beside the disks the VM has already: serials and SCSI targets are unique. */
export function validateDisk(disk: DiskSpec, field: string, others: readonly DiskSpec[]): void {
  if (disk === null || typeof disk !== 'object') throw new ValidationError(field, 'expected an object')
  path(`${field}.path`, disk.path)
  if (typeof disk.serial !== 'string' || !SERIAL_RE.test(disk.serial)) {
    throw new ValidationError(`${field}.serial`, 'expected 1-20 characters of letters, digits, ".", "_" or "-"')
  }
  if (others.some((o) => o.serial === disk.serial)) throw new ValidationError(`${field}.serial`, `"${disk.serial}" is used twice`)
  if (disk.format !== undefined && disk.format !== 'raw' && disk.format !== 'qcow2') {
    throw new ValidationError(`${field}.format`, 'expected "raw" or "qcow2"')
  }
  if (disk.bus !== undefined && disk.bus !== 'virtio-blk' && disk.bus !== 'scsi') throw new ValidationError(`${field}.bus`, 'expected "virtio-blk" or "scsi"')
  if (disk.bus === 'scsi') {
    positiveInt(`${field}.scsiId`, disk.scsiId, SCSI_TARGET_MAX, 0)
    if (others.some((o) => o.bus === 'scsi' && o.scsiId === disk.scsiId)) throw new ValidationError(`${field}.scsiId`, `SCSI target ${disk.scsiId} is used twice`)
  } else if (disk.scsiId !== undefined) {
    throw new ValidationError(`${field}.scsiId`, 'is only for disks with bus "scsi"')
  }
  const t = disk.throttle
  if (t !== undefined) {
    if (t.bytesPerSec !== undefined) positiveInt(`${field}.throttle.bytesPerSec`, t.bytesPerSec, Number.MAX_SAFE_INTEGER)
    if (t.iopsPerSec !== undefined) positiveInt(`${field}.throttle.iopsPerSec`, t.iopsPerSec, Number.MAX_SAFE_INTEGER)
  }
}

/** virtio-scsi addresses targets 0-255. */
const SCSI_TARGET_MAX = 255

/** Guest vsock ports are 32-bit; 0xFFFFFFFF is VMADDR_PORT_ANY. */
const VSOCK_PORT_MAX = 0xfffffffe
/** CIDs 0-2 are reserved (hypervisor, local, host); the VMMs' API specs cap it at 32 bits. */
const VSOCK_CID_MAX = 0xfffffffe

/**
 * Validates the shape of a spec. `controlFiles` are the file names the driver will put in
 * `runtimeDir`, so their socket paths are checked for length too.
 */
export function validateVmSpec(spec: VmSpec, controlFiles: readonly string[] = [], support: SpecSupport = {}): void {
  if (spec === null || typeof spec !== 'object') throw new ValidationError('spec', 'expected an object')
  if (spec.name !== undefined && (typeof spec.name !== 'string' || !NAME_RE.test(spec.name))) {
    throw new ValidationError('name', 'expected 1-64 characters of letters, digits, ".", "_" or "-"')
  }
  path('kernel', spec.kernel)
  if (spec.initrd !== undefined) path('initrd', spec.initrd)
  if (spec.cmdline !== undefined) {
    if (typeof spec.cmdline !== 'string' || /[\0\n\r]/.test(spec.cmdline)) {
      throw new ValidationError('cmdline', 'expected a single line of text')
    }
  }
  positiveInt('vcpus', spec.vcpus, 255)
  wholeMiB('memoryBytes', spec.memoryBytes, 16 * MiB)
  if (spec.hotplugMemory !== undefined) {
    const max = wholeMiB('hotplugMemory.maxBytes', spec.hotplugMemory.maxBytes, 16 * MiB)
    if (max <= spec.memoryBytes) {
      throw new ValidationError('hotplugMemory.maxBytes', 'must be larger than memoryBytes')
    }
    if (spec.hotplugMemory.slots !== undefined) positiveInt('hotplugMemory.slots', spec.hotplugMemory.slots, 256)
  }
  if (spec.memoryFile !== undefined) {
    if (!support.memoryFile) throw new NotSupportedError('guest RAM in a file is not supported by this driver', { field: 'memoryFile' })
    path('memoryFile.path', spec.memoryFile.path)
    if (typeof spec.memoryFile.shared !== 'boolean') throw new ValidationError('memoryFile.shared', 'expected true or false')
  }

  const disks = spec.disks ?? []
  if (disks.some((d) => d?.bus === 'scsi') && !spec.scsiController) throw new ValidationError('scsiController', 'is required by the disks with bus "scsi"')
  if (spec.scsiController && !support.diskHotplug) {
    throw new NotSupportedError('this driver has no SCSI controller for hot-pluggable disks', { field: 'scsiController' })
  }
  for (const [i, disk] of disks.entries()) validateDisk(disk, `disks[${i}]`, disks.slice(0, i))

  const taps = new Set<string>()
  for (const [i, nic] of (spec.nics ?? []).entries()) {
    if (typeof nic.tap !== 'string' || !TAP_RE.test(nic.tap)) {
      throw new ValidationError(`nics[${i}].tap`, 'expected an interface name of 1-15 characters')
    }
    if (taps.has(nic.tap)) throw new ValidationError(`nics[${i}].tap`, `"${nic.tap}" is used twice`)
    taps.add(nic.tap)
    if (typeof nic.mac !== 'string' || !MAC_RE.test(nic.mac)) {
      throw new ValidationError(`nics[${i}].mac`, 'expected a MAC like "02:00:00:00:00:01"')
    }
    if (Number.parseInt(nic.mac.slice(0, 2), 16) & 1) {
      throw new ValidationError(`nics[${i}].mac`, `${nic.mac} is a multicast address`)
    }
  }

  const names = new Set<string>()
  const paths = new Set<string>()
  for (const [i, ch] of (spec.channels ?? []).entries()) {
    if (typeof ch.name !== 'string' || !CHANNEL_RE.test(ch.name)) {
      throw new ValidationError(`channels[${i}].name`, 'expected 1-64 characters of letters, digits, ".", "_" or "-"')
    }
    if (names.has(ch.name)) throw new ValidationError(`channels[${i}].name`, `"${ch.name}" is used twice`)
    names.add(ch.name)
    const kind = ch.backend?.kind
    if (kind === 'socket') socketPath(`channels[${i}].backend.path`, ch.backend.path)
    else if (kind === 'file') path(`channels[${i}].backend.path`, ch.backend.path)
    else throw new ValidationError(`channels[${i}].backend.kind`, 'expected "socket" or "file"')
    const backends = support.channelBackends ?? ['socket', 'file']
    if (!backends.includes(kind)) {
      throw new NotSupportedError(
        backends.length === 0 ? 'this driver has no named channels (use vsock ports)' : `this driver has no ${kind}-backed channels`,
        { field: `channels[${i}].backend.kind` },
      )
    }
    if (paths.has(ch.backend.path)) throw new ValidationError(`channels[${i}].backend.path`, 'is used twice')
    paths.add(ch.backend.path)
  }

  if (spec.vsock !== undefined) {
    if (!support.vsock) throw new NotSupportedError('this driver has no vsock device', { field: 'vsock' })
    if (spec.vsock === null || typeof spec.vsock !== 'object') throw new ValidationError('vsock', 'expected an object')
    if (spec.vsock.cid !== undefined) {
      const cid = spec.vsock.cid
      if (typeof cid !== 'number' || !Number.isSafeInteger(cid) || cid < 3 || cid > VSOCK_CID_MAX) {
        throw new ValidationError('vsock.cid', `expected a whole number from 3 to ${VSOCK_CID_MAX}, got ${String(cid)}`)
      }
    }
    const ports = spec.vsock.ports ?? {}
    if (ports === null || typeof ports !== 'object') throw new ValidationError('vsock.ports', 'expected an object of name → port')
    for (const [name, port] of Object.entries(ports)) {
      if (!CHANNEL_RE.test(name)) throw new ValidationError(`vsock.ports.${name}`, 'expected a name of 1-64 letters, digits, ".", "_" or "-"')
      if (names.has(name)) throw new ValidationError(`vsock.ports.${name}`, `"${name}" is also a channel name`)
      positiveInt(`vsock.ports.${name}`, port, VSOCK_PORT_MAX)
    }
  }

  if (spec.passthrough !== undefined && spec.passthrough.length > 0) {
    if (!support.passthrough) throw new NotSupportedError('this driver cannot pass host devices through (no VFIO)', { field: 'passthrough' })
    const seen = new Set<string>()
    for (const [i, d] of spec.passthrough.entries()) {
      // The VMM takes it inside a key=value list (QEMU sysfsdev=, Cloud Hypervisor path=).
      if (path(`passthrough[${i}].sysfsPath`, d?.sysfsPath).includes(',')) throw new ValidationError(`passthrough[${i}].sysfsPath`, 'cannot contain a comma')
      if (d.pciAddress !== undefined && (typeof d.pciAddress !== 'string' || !PCI_ADDRESS_RE.test(d.pciAddress))) {
        throw new ValidationError(`passthrough[${i}].pciAddress`, 'expected a PCI address like "0000:01:00.0" (lowercase hex)')
      }
      if (seen.has(d.sysfsPath)) throw new ValidationError(`passthrough[${i}].sysfsPath`, `"${d.sysfsPath}" is used twice`)
      seen.add(d.sysfsPath)
    }
  }

  path('consoleLog', spec.consoleLog)
  if (spec.vmmLog !== undefined) path('vmmLog', spec.vmmLog)
  const runtimeDir = path('runtimeDir', spec.runtimeDir)
  for (const f of controlFiles) socketPath('runtimeDir', `${runtimeDir}/${f}`)
  if (spec.accel !== undefined && !['kvm', 'tcg', 'auto'].includes(spec.accel)) {
    throw new ValidationError('accel', 'expected "kvm", "tcg" or "auto"')
  }
  if (spec.restoreFrom !== undefined) path('restoreFrom', spec.restoreFrom)
  if (spec.netns !== undefined) checkNetnsName(spec.netns)
}

/** Whether a network interface exists, in the host's namespace or in `netns`. */
async function interfaceExists(name: string, netns: string | undefined): Promise<boolean> {
  // /sys/class/net shows the namespace sysfs was mounted from, which is not ours after a bare
  // setns (nsenter --net, no remount): a miss there is confirmed over netlink, which is exact.
  if (netns === undefined && (await access(`/sys/class/net/${name}`).then(() => true, () => false))) return true
  return run('ip', [...(netns ? ['-n', netns] : []), '-j', 'link', 'show', 'dev', name], { timeoutMs: 10_000 }).then(() => true, () => false)
}

/** The files a start reads must exist: checked up front so the error names the field, not a VMM message. */
export async function checkSpecFiles(spec: VmSpec): Promise<void> {
  const readable: [string, string][] = [['kernel', spec.kernel]]
  if (spec.initrd) readable.push(['initrd', spec.initrd])
  for (const [i, d] of (spec.disks ?? []).entries()) readable.push([`disks[${i}].path`, d.path])
  for (const [field, p] of readable) {
    try {
      await access(p, constants.R_OK)
    } catch (err) {
      throw new ValidationError(field, `cannot read ${p}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`)
    }
  }
  if (spec.netns !== undefined) {
    try {
      await access(netnsPath(spec.netns))
    } catch {
      throw new ValidationError('netns', `no network namespace named ${spec.netns} (${netnsPath(spec.netns)})`)
    }
  }
  for (const [i, nic] of (spec.nics ?? []).entries()) {
    // As root QEMU would create a missing TAP itself, unconfigured: creating it is netsetup's job.
    if (!(await interfaceExists(nic.tap, spec.netns))) {
      const where = spec.netns ? ` in network namespace ${spec.netns}` : ''
      throw new ValidationError(`nics[${i}].tap`, `no network interface named ${nic.tap}${where} (the TAP must exist before the VM starts)`)
    }
  }
  for (const [i, d] of (spec.disks ?? []).entries()) {
    if (d.readonly) continue
    try {
      await access(d.path, constants.W_OK)
    } catch (err) {
      throw new ValidationError(`disks[${i}].path`, `cannot write ${d.path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`)
    }
  }
}
