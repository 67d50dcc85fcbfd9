/**
 * The per-instance disks and channels in the driver's terms, so the instance code does not spell
 * serials and port names itself.
 */
import { rm, truncate, writeFile } from 'node:fs/promises'
import { copySparse, run } from '@hypeman-ts/common'
import type { ChannelSpec, DiskSpec } from '@hypeman-ts/vmm-drivers'
import { DISK_SERIAL, hotVolumeOverlaySerial, hotVolumeSerial, PORT_NAME, volumeDiskSerial, volumeOverlaySerial } from './constants.js'

export interface GuestDiskPaths {
  /** The image's read-only ext4/erofs disk (shared by instances of the image). */
  rootfs: string
  /** This instance's writable disk (createOverlayDisk). */
  overlay: string
  /** This instance's config disk (writeGuestConfigDisk). */
  config: string
  /** The volumes, in the create's order: disk `hm-vol-<i>` (and `hm-volov-<i>` for an overlay). */
  volumes?: GuestVolumeDisk[]
  /** The guest kernel's headers disk (read-only, shared by every instance of the kernel). */
  kernelHeaders?: string
}

export interface GuestVolumeDisk {
  /** The volume's disk file (shared with other instances when read-only). */
  disk: string
  readonly: boolean
  /** This instance's writable disk over a read-only volume (createOverlayDisk). */
  overlay?: string
  /** Attached while running: SCSI disks named by this slot (hotVolumeDisks), not by position. */
  hotplugSlot?: number
}

/**
 * The disks of a volume attached while running: SCSI disks at targets 2·slot (the volume) and
 * 2·slot+1 (its overlay), the same at the hot-plug, at a restore (which must rebuild the device
 * set the snapshot saw) and at later cold boots (so a detach while running works there too).
 */
export function hotVolumeDisks(v: GuestVolumeDisk & { hotplugSlot: number }): DiskSpec[] {
  const slot = v.hotplugSlot
  return [
    { path: v.disk, serial: hotVolumeSerial(slot), bus: 'scsi', scsiId: 2 * slot, ...(v.readonly ? { readonly: true } : {}) },
    ...(v.overlay ? [{ path: v.overlay, serial: hotVolumeOverlaySerial(slot), bus: 'scsi' as const, scsiId: 2 * slot + 1 }] : []),
  ]
}

export function guestDisks(paths: GuestDiskPaths): DiskSpec[] {
  return [
    { path: paths.rootfs, serial: DISK_SERIAL.rootfs, readonly: true },
    { path: paths.overlay, serial: DISK_SERIAL.overlay },
    { path: paths.config, serial: DISK_SERIAL.config, readonly: true },
    ...(paths.volumes ?? []).flatMap((v, i): DiskSpec[] =>
      v.hotplugSlot !== undefined
        ? hotVolumeDisks({ ...v, hotplugSlot: v.hotplugSlot })
        : [
            { path: v.disk, serial: volumeDiskSerial(i), ...(v.readonly ? { readonly: true } : {}) },
            ...(v.overlay ? [{ path: v.overlay, serial: volumeOverlaySerial(i) }] : []),
          ],
    ),
    // Last, so adding it moves no other disk: a standby's device list must come back the same.
    ...(paths.kernelHeaders ? [{ path: paths.kernelHeaders, serial: DISK_SERIAL.headers, readonly: true }] : []),
  ]
}

export interface GuestChannelPaths {
  agentSocket: string
  controlSocket: string
  appLog: string
  statusLog: string
}

/** The named ports init looks for. With skipGuestAgent the agent port is left out: nothing would serve it. */
export function guestChannels(paths: GuestChannelPaths, opts: { skipGuestAgent?: boolean } = {}): ChannelSpec[] {
  const channels: ChannelSpec[] = [
    { name: PORT_NAME.status, backend: { kind: 'file', path: paths.statusLog } },
    { name: PORT_NAME.app, backend: { kind: 'file', path: paths.appLog } },
    { name: PORT_NAME.control, backend: { kind: 'socket', path: paths.controlSocket } },
  ]
  if (!opts.skipGuestAgent) channels.push({ name: PORT_NAME.agent, backend: { kind: 'socket', path: paths.agentSocket } })
  return channels
}

/** A copy that keeps holes holes: a 10 GB overlay with 50 MB written copies 50 MB. */
export async function copyDiskSparse(from: string, to: string, signal?: AbortSignal): Promise<void> {
  await copySparse(from, to, { zerosToHoles: true, ...(signal ? { signal } : {}) })
}

/**
 * The writable disk: a sparse file of `sizeBytes` formatted ext4. The guest puts the overlay's
 * upper and work dirs on it and mounts it with noinit_itable, so the lazy inode-table
 * initialisation mkfs leaves does not cost the guest CPU. On failure nothing is left behind.
 */
export async function createOverlayDisk(path: string, sizeBytes: number, opts: { signal?: AbortSignal } = {}): Promise<void> {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 16 * 1024 * 1024) throw new RangeError('overlay disk must be at least 16 MiB')
  try {
    await writeFile(path, '', { mode: 0o600 })
    await truncate(path, sizeBytes) // sparse: only what mkfs writes takes space
    await run('mkfs.ext4', ['-q', '-F', '-m', '0', '-L', 'hm-overlay', '-E', 'lazy_itable_init=1,lazy_journal_init=1', path], { signal: opts.signal, step: 'create_overlay_disk' })
  } catch (err) {
    await rm(path, { force: true })
    throw err
  }
}
