/**
 * Volumes in the config disk: one `volume` record per volume, `<serial> <mode> <mountPath>`, where
 * mode is `rw`, `ro`, or `overlay=<serial of the upper disk>` (a read-only volume under a
 * per-instance writable layer). The path comes last, so it may hold spaces. The init mounts them
 * in record order after the root is switched (guest/README.md, "Volumes"); the host orders them
 * so a path inside another volume's is mounted after it. A `volume.scsi` record names each volume
 * whose disks are SCSI disks (attached while running), so the init loads that driver first.
 */
import { ValidationError } from '@hypeman-ts/common'
import type { TlvEntry, TlvView } from './tlv.js'

export interface GuestVolumeConfig {
  /** virtio-blk serial of the volume's disk. */
  serial: string
  /** Absolute, normalised; created in the guest if absent. */
  mountPath: string
  mode: 'rw' | 'ro' | 'overlay'
  /** With mode overlay: the serial of the instance's writable disk over the volume. */
  overlaySerial?: string
  /** Its disks are on the SCSI controller (default virtio-blk). */
  bus?: 'scsi'
}

export const VOLUMES_FEATURE = 'volumes'
/** What a virtio-blk serial may be here (QEMU keeps 20 bytes; the init checks the same). */
export const DISK_SERIAL_RE = /^[A-Za-z0-9-]{1,20}$/

export function volumeEntries(volumes: GuestVolumeConfig[]): TlvEntry[] {
  if (volumes.length === 0) return []
  const entries: TlvEntry[] = [['requires', VOLUMES_FEATURE]]
  volumes.forEach((v, i) => {
    const f = (k: string) => `volumes[${i}].${k}`
    if (!DISK_SERIAL_RE.test(v.serial)) throw new ValidationError(f('serial'), 'must be 1-20 letters, digits and dashes (a virtio-blk serial)')
    if (!v.mountPath.startsWith('/') || v.mountPath.includes('\0') || v.mountPath.includes('\n')) throw new ValidationError(f('mountPath'), 'must be an absolute path without NUL or newline')
    let mode: string = v.mode
    if (v.mode === 'overlay') {
      if (!v.overlaySerial || !DISK_SERIAL_RE.test(v.overlaySerial)) throw new ValidationError(f('overlaySerial'), 'is required with mode overlay (a virtio-blk serial)')
      mode = `overlay=${v.overlaySerial}`
    } else if (v.mode !== 'rw' && v.mode !== 'ro') {
      throw new ValidationError(f('mode'), 'must be rw, ro or overlay')
    }
    entries.push(['volume', `${v.serial} ${mode} ${v.mountPath}`])
    if (v.bus === 'scsi') entries.push(['volume.scsi', v.serial])
  })
  return entries
}

export function decodeVolumes(v: TlvView): GuestVolumeConfig[] {
  const scsi = new Set(v.all('volume.scsi'))
  return v.all('volume').map((line) => {
    const [serial, mode, ...rest] = line.split(' ')
    const overlay = mode!.startsWith('overlay=')
    return {
      serial: serial!,
      mountPath: rest.join(' '),
      mode: overlay ? 'overlay' : (mode as 'rw' | 'ro'),
      ...(overlay ? { overlaySerial: mode!.slice('overlay='.length) } : {}),
      ...(scsi.has(serial!) ? { bus: 'scsi' as const } : {}),
    }
  })
}
