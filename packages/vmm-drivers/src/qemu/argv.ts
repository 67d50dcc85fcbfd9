/**
 * The QEMU command line, built as a pure function of the spec so it can be table-tested.
 *
 * Shape (measured in DESIGN.md): q35 with virtio-pci devices, direct boot of the ELF vmlinux
 * through qboot (faster than SeaBIOS), -nodefaults so nothing we did not ask for exists, and
 * -no-reboot so a guest poweroff, reboot or panic ends the process instead of looping.
 * Disks go through -blockdev/-object in JSON form, which needs no escaping of paths; the options
 * that only take key=value (-chardev, -netdev) get QEMU's comma doubling.
 */
import { composeCmdline } from '../cmdline.js'
import type { DiskSpec, ResolvedAccel, VmSpec } from '../types.js'

/**
 * The machine-specific head of the kernel command line. console=ttyS0 is the one serial port we
 * create; the rest trims boot time under TCG (measured ≈ 0.7 s, DESIGN.md); panic=-1 turns a
 * guest panic into a reboot, which -no-reboot turns into the end of the VM.
 */
export const QEMU_MACHINE_CMDLINE = [
  'console=ttyS0',
  'panic=-1',
  'tsc=reliable',
  'no_timer_check',
  'i8042.noaux',
  'i8042.nopnp',
  'i8042.dumbkbd',
  'i8042.nokbd',
  '8250.nr_uarts=1',
  'mitigations=off',
  'random.trust_cpu=on',
  'cryptomgr.notests',
  'pci=lastbus=0',
].join(' ')

export const DEFAULT_QBOOT = '/usr/share/qemu/qboot.rom'
export const DEFAULT_HOTPLUG_SLOTS = 8

/** Files the driver keeps in `runtimeDir`. */
export const RUNTIME_FILES = { qmp: 'qmp.sock', pid: 'qemu.pid', vmmLog: 'vmm.log', migrate: 'migrate.sock' } as const

export interface QemuArgvContext {
  accel: ResolvedAccel
  qmpSocket: string
  pidFile: string
  /** Firmware image; default qboot. */
  bios?: string
  /** Start with `-incoming defer` so a snapshot can be loaded over QMP. */
  incoming?: boolean
  /** `-S`: the guest stays paused after start (or after the snapshot loads) until `cont`. */
  paused?: boolean
}

/** QEMU's escaping for a value inside a key=value option list: a comma is written twice. */
export function qemuOptValue(value: string): string {
  return value.replaceAll(',', ',,')
}

const MiB = 1024 * 1024

export { composeCmdline }

/** The qdev id of the virtio-scsi controller; its bus is `scsi0.0`. */
export const SCSI_CONTROLLER = 'scsi0'

/** One disk as QEMU objects: the same on the command line and in QMP (hotplug), so a restore's argv rebuilds what a hot-plug added. */
export interface QemuDisk {
  /** The top block node (the throttle filter when there is one); `blockdev-del` of it removes the nodes under it too. */
  node: string
  throttleGroup?: { id: string; limits: Record<string, number> }
  blockdev: Record<string, unknown>
  /** `device_add` arguments, `driver` first. */
  device: Record<string, string | number>
}

/**
 * virtio-blk disks are named by position (as before SCSI disks existed); SCSI disks by serial,
 * since they come and go while the VM runs and another disk's removal must not rename them.
 */
export function qemuDisk(disk: DiskSpec, index: number): QemuDisk {
  const scsi = disk.bus === 'scsi'
  const node = scsi ? `hd-${disk.serial}` : `disk${index}`
  const readOnly = disk.readonly === true
  const limits: Record<string, number> = {}
  if (disk.throttle?.bytesPerSec !== undefined) limits['bps-total'] = disk.throttle.bytesPerSec
  if (disk.throttle?.iopsPerSec !== undefined) limits['iops-total'] = disk.throttle.iopsPerSec
  const throttled = Object.keys(limits).length > 0
  const format = throttled ? `${node}-fmt` : node
  let blockdev: Record<string, unknown> = {
    driver: disk.format ?? 'raw',
    'node-name': format,
    'read-only': readOnly,
    ...(readOnly ? {} : { discard: 'unmap' }),
    file: { driver: 'file', filename: disk.path, 'read-only': readOnly, ...(readOnly ? {} : { discard: 'unmap' }) },
  }
  if (throttled) blockdev = { driver: 'throttle', 'node-name': node, 'throttle-group': `${node}-throttle`, 'read-only': readOnly, file: blockdev }
  const device: Record<string, string | number> = scsi
    ? { driver: 'scsi-hd', id: `${node}-dev`, bus: `${SCSI_CONTROLLER}.0`, channel: 0, 'scsi-id': disk.scsiId!, lun: 0, drive: node, serial: disk.serial }
    : { driver: 'virtio-blk-pci', id: `${node}-dev`, drive: node, serial: disk.serial }
  return {
    node,
    ...(throttled ? { throttleGroup: { id: `${node}-throttle`, limits } } : {}),
    blockdev,
    device,
  }
}

export function buildQemuArgv(spec: VmSpec, ctx: QemuArgvContext): string[] {
  const argv: string[] = []
  const add = (...args: string[]) => argv.push(...args)

  if (spec.name) add('-name', `guest=${qemuOptValue(spec.name)},debug-threads=on`)
  // "pc.ram" is the id QEMU gives the default RAM: a snapshot taken with a file behind the RAM
  // restores into a VM without one, and back.
  add('-machine', spec.memoryFile ? 'q35,memory-backend=pc.ram' : 'q35')
  if (spec.memoryFile) {
    add('-object', JSON.stringify({ 'qom-type': 'memory-backend-file', id: 'pc.ram', size: spec.memoryBytes, 'mem-path': spec.memoryFile.path, share: spec.memoryFile.shared }))
  }
  add('-accel', ctx.accel)
  if (ctx.accel === 'kvm') add('-cpu', 'host')
  add('-smp', String(spec.vcpus))
  const mem = `${spec.memoryBytes / MiB}M`
  if (spec.hotplugMemory) {
    const slots = spec.hotplugMemory.slots ?? DEFAULT_HOTPLUG_SLOTS
    add('-m', `size=${mem},slots=${slots},maxmem=${spec.hotplugMemory.maxBytes / MiB}M`)
  } else {
    add('-m', `size=${mem}`)
  }
  add('-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot')
  add('-bios', ctx.bios ?? DEFAULT_QBOOT)
  add('-kernel', spec.kernel)
  if (spec.initrd) add('-initrd', spec.initrd)
  add('-append', composeCmdline(QEMU_MACHINE_CMDLINE, spec.cmdline ?? ''))

  add('-chardev', `socket,id=qmp,path=${qemuOptValue(ctx.qmpSocket)},server=on,wait=off`)
  add('-mon', 'chardev=qmp,mode=control')
  add('-pidfile', ctx.pidFile)

  add('-chardev', `file,id=console,path=${qemuOptValue(spec.consoleLog)},append=on`)
  add('-serial', 'chardev:console')
  // A guest that loads pvpanic-pci reports its panic, so the exit says "panic" and not "reboot".
  add('-device', 'pvpanic-pci')

  if (spec.scsiController) add('-device', `virtio-scsi-pci,id=${SCSI_CONTROLLER}`)
  for (const [i, disk] of (spec.disks ?? []).entries()) {
    const q = qemuDisk(disk, i)
    if (q.throttleGroup) add('-object', JSON.stringify({ 'qom-type': 'throttle-group', ...q.throttleGroup }))
    add('-blockdev', JSON.stringify(q.blockdev))
    add('-device', Object.entries(q.device).map(([k, v]) => `${k === 'driver' ? '' : `${k}=`}${v}`).join(','))
  }

  for (const [i, nic] of (spec.nics ?? []).entries()) {
    add('-netdev', `tap,id=net${i},ifname=${nic.tap},script=no,downscript=no`)
    add('-device', `virtio-net-pci,id=net${i}-dev,netdev=net${i},mac=${nic.mac.toLowerCase()}`)
  }

  const channels = spec.channels ?? []
  if (channels.length > 0) add('-device', 'virtio-serial-pci,id=vser0')
  for (const [i, ch] of channels.entries()) {
    const id = `ch${i}`
    if (ch.backend.kind === 'socket') {
      add('-chardev', `socket,id=${id},path=${qemuOptValue(ch.backend.path)},server=on,wait=off`)
    } else {
      add('-chardev', `file,id=${id},path=${qemuOptValue(ch.backend.path)},append=on`)
    }
    add('-device', `virtserialport,id=${id}-port,bus=vser0.0,chardev=${id},name=${ch.name}`)
  }

  // A PCI function by its address (QEMU finds its sysfs dir and IOMMU group); an mdev has no
  // address, only its sysfs dir.
  for (const [i, d] of (spec.passthrough ?? []).entries()) {
    add('-device', `vfio-pci,id=hostdev${i},${d.pciAddress ? `host=${d.pciAddress}` : `sysfsdev=${qemuOptValue(d.sysfsPath)}`}`)
  }

  if (ctx.paused) add('-S')
  if (ctx.incoming) add('-incoming', 'defer')
  return argv
}
