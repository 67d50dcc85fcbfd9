/**
 * Volumes of an existing instance: attach and detach while it is Stopped or Running.
 *
 * Stopped: the change takes effect at the next start: the record's spec lists the volume, the
 * config disk carries its mount, the VMM gets its disk (boot.ts).
 *
 * Running (QEMU): the disks are hot-plugged as SCSI disks on the controller every cold boot has
 * (`volumeHotplug`), which avoids PCI hot-plug (q35's root bus has none), and the guest agent
 * mounts them with the boot-time rules (volumes.c). The volume keeps its `hotplugSlot` for good:
 * its serials and SCSI targets follow the slot, so a restore rebuilds the devices the snapshot
 * saw, a cold boot mounts it from the SCSI bus, and a later detach can unplug it. A detach
 * unmounts in the guest first and refuses with `volume_busy` when the mount is in use, leaving
 * everything attached. Volumes attached at create (virtio-blk PCI disks) cannot be unplugged
 * while running: that detach is refused as a wrong state.
 *
 * Standby stays refused (`conflict` on `state`, the server's `invalid_state`): the snapshot fixes
 * the device set, and a disk added to the restored VM afterwards would be a hot-plug anyway.
 *
 * Crashes: the volume's attachment record is written before an attach and dropped after a
 * detach, so a crash in between leaves at most an attachment the instance's spec does not list,
 * which the next open releases (`VolumeManager.releaseOrphans`). A running attach writes the
 * instance's record (its spec, and its VMM's disks) before the hot-plug, so the guest never has a
 * volume mounted that the host thinks free; a running detach writes it after the guest unmounted
 * and the VMM let go. What a crash cuts short in between, a detach finishes: the guest's unmount
 * of nothing and the VMM's unplug of a disk already gone both succeed.
 */
import { rm } from 'node:fs/promises'
import { ConflictError, errorMessage, NotSupportedError, ValidationError } from '@hypeman-ts/common'
import type { DiskSpec, LiveVm } from '@hypeman-ts/vmm-drivers'
import { VolumeError } from '../errors.js'
import { createOverlayDisk, GuestAgentClient, hotVolumeDisks, rewriteGuestConfigVolumes } from '../guest/index.js'
import { MAX_VOLUME_MOUNTS, validateVolumeMounts } from '../volumes/mounts.js'
import type { VolumeManager } from '../volumes/manager.js'
import { diskThrottle, guestVolume, guestVolumes, volumeDisk, volumeOverlayPath } from './boot.js'
import type { InstanceContext } from './context.js'
import { collect } from './guest-files.js'
import { operate } from './lifecycle.js'
import type { Instance } from './model.js'
import type { InstanceVolume } from './params.js'
import type { InstanceRecord } from './record.js'

export interface AttachVolumeParams {
  mountPath: string
  readonly?: boolean
  overlay?: boolean
  overlaySize?: string
}

/** The guest's `umount-volume` exit when the mount is busy (guest/src/volumes.h). */
const VOLUME_BUSY_EXIT = 16
/** How long the agent may take to answer (it is up once the instance is Running). */
const AGENT_CONNECT_MS = 15_000

function volumesOf(cx: InstanceContext): VolumeManager {
  if (!cx.opts.volumes) throw new NotSupportedError('volumes: this manager has no volume store', { field: 'volumeId' })
  return cx.opts.volumes
}

async function saveVolumes(cx: InstanceContext, record: InstanceRecord): Promise<void> {
  await cx.files.write(record)
  await rewriteGuestConfigVolumes(cx.files.paths(record.id).config, guestVolumes(record))
}

/** Refused as a wrong state (the server's `invalid_state`), with why. */
function cannot(op: string, record: InstanceRecord, why: string): ConflictError {
  return new ConflictError(`cannot ${op} instance ${record.name} while it runs: ${why}`, { field: 'state', details: { operation: op, state: 'Running' } })
}

/** The running VM and its agent, or why a volume cannot change while it runs. */
function liveVm(cx: InstanceContext, record: InstanceRecord, op: string): LiveVm {
  const vm = cx.live.get(record.id)
  if (!vm || !record.vmm) throw cannot(op, record, 'its VMM is not attached to this manager')
  if (vm.phase !== 'running') throw cannot(op, record, 'it is paused')
  if (record.spec.skipGuestAgent) throw cannot(op, record, 'it has no guest agent (skipGuestAgent) to mount the volume')
  return vm
}

/** Runs one of the agent's volume built-ins: its exit code, and its stderr line. */
async function guestVolumeCommand(cx: InstanceContext, record: InstanceRecord, name: 'mount-volume' | 'umount-volume', args: string[]) {
  const client = await GuestAgentClient.connect({ socketPath: cx.files.paths(record.id).agentSocket, timeoutMs: AGENT_CONNECT_MS, logger: cx.logger })
  try {
    const r = await collect(client.builtin(name, args))
    return { exitCode: r.exitCode, said: r.stderr.trim() || r.message }
  } finally {
    client.close()
  }
}

function freeSlot(volumes: readonly InstanceVolume[]): number {
  const used = new Set(volumes.map((v) => v.hotplugSlot))
  // Fewer volumes than MAX_VOLUME_MOUNTS: one of that many slots is free (targets 2·slot, 2·slot+1 stay well under virtio-scsi's 256).
  let slot = 0
  while (used.has(slot)) slot++
  return slot
}

async function unplugAll(vm: LiveVm, disks: readonly DiskSpec[]): Promise<void> {
  for (const d of [...disks].reverse()) await vm.unplugDisk(d.serial)
}

export async function attachVolume(cx: InstanceContext, idOrName: string, volumeId: string, params: AttachVolumeParams): Promise<Instance> {
  const volumes = volumesOf(cx)
  // Fields are named as the caller passed them: `volumeId`, `mountPath`, ...
  const [mount] = validateVolumeMounts([{ ...params, volumeId }], (_i, key) => key || 'params')
  return operate(cx, idOrName, 'attach_volume', (id) =>
    cx.files.withLock(id, async () => {
      const record = (await cx.files.read(id))!
      const current = record.spec.volumes ?? []
      if (current.length >= MAX_VOLUME_MOUNTS) throw new ValidationError('volumeId', `instance ${record.name} has ${current.length} volumes, the most it can have`)
      const atPath = current.findIndex((v) => v.mountPath === mount!.mountPath)
      if (atPath >= 0) throw new ValidationError('mountPath', `"${mount!.mountPath}" is already the mount path of volume ${current[atPath]!.volumeId}`)
      const resolved: InstanceVolume = (await volumes.attach(id, [mount!], { dryRun: true, fieldOf: () => 'volumeId' }))[0]!
      if (current.some((v) => v.volumeId === resolved.volumeId)) throw new ValidationError('volumeId', `volume "${volumeId}" is already attached to instance ${record.name}`)
      const vm = record.vmm ? liveVm(cx, record, 'attach_volume') : undefined
      if (vm) {
        if (!cx.driver(record.spec.hypervisor).capabilities.diskHotplug) throw cannot('attach_volume', record, `its hypervisor (${record.spec.hypervisor}) cannot hot-plug disks here`)
        if (!vm.spec.scsiController) throw cannot('attach_volume', record, 'it was booted without the SCSI controller for hot-plugged disks (volumeHotplug); stop and start it first')
        resolved.hotplugSlot = freeSlot(current)
      }
      await volumes.attach(id, [mount!], { fieldOf: () => 'volumeId' })
      const overlay = volumeOverlayPath(cx, id, resolved.volumeId)
      try {
        if (resolved.overlay) await createOverlayDisk(overlay, resolved.overlayBytes!)
        record.spec.volumes = [...current, resolved]
        if (vm) {
          // The record first, disks included: a crash from here on leaves the volume attached (and
          // at worst not mounted, which a detach finishes), never mounted without its attachment.
          const disks = hotDisks(cx, record, resolved)
          record.vmm = { ...vm.persisted, spec: { ...vm.persisted.spec, disks: [...(vm.persisted.spec.disks ?? []), ...disks] } }
          await saveVolumes(cx, record)
          await plugAndMount(cx, record, vm, disks, resolved, current.length)
          record.vmm = vm.persisted
          await cx.files.write(record)
        } else {
          await saveVolumes(cx, record)
        }
      } catch (err) {
        record.spec.volumes = current
        if (vm) record.vmm = vm.persisted
        await saveVolumes(cx, record).catch((e) => cx.logger.warn('undoing an attach in the record', { id, error: errorMessage(e) }))
        await rm(overlay, { force: true })
        await volumes.release(id, resolved.volumeId)
        throw err
      }
      await cx.files.log(id, `volume ${resolved.volumeId} attached at ${resolved.mountPath}${resolved.readonly ? ' (read-only)' : ''}${vm ? ' (hot-plugged)' : ''}`)
    }),
  )
}

/** A hot-attached volume's disks, throttled as the instance's boot disks are. */
function hotDisks(cx: InstanceContext, record: InstanceRecord, v: InstanceVolume): DiskSpec[] {
  return hotVolumeDisks({ ...volumeDisk(cx, record.id, v), hotplugSlot: v.hotplugSlot! }).map((d) => ({ ...d, ...diskThrottle(record) }))
}

/** Hot-plugs the volume's disks and has the guest mount them; on failure nothing stays plugged. */
async function plugAndMount(cx: InstanceContext, record: InstanceRecord, vm: LiveVm, disks: DiskSpec[], v: InstanceVolume, position: number): Promise<void> {
  const plugged: DiskSpec[] = []
  try {
    for (const d of disks) {
      await vm.hotplugDisk(d)
      plugged.push(d)
    }
    const g = guestVolume(v, position)
    const mode = g.mode === 'overlay' ? `overlay=${g.overlaySerial}` : g.mode
    const r = await guestVolumeCommand(cx, record, 'mount-volume', [g.serial, mode, g.mountPath])
    if (r.exitCode !== 0) throw new VolumeError('volume_mount_failed', `the guest could not mount volume ${v.volumeId} at ${v.mountPath}: ${r.said}`, { field: 'mountPath' })
  } catch (err) {
    await unplugAll(vm, plugged).catch((e) => cx.logger.warn('unplugging after a failed attach', { id: record.id, error: errorMessage(e) }))
    throw err
  }
}

export async function detachVolume(cx: InstanceContext, idOrName: string, volumeId: string): Promise<Instance> {
  const volumes = volumesOf(cx)
  return operate(cx, idOrName, 'detach_volume', (id) =>
    cx.files.withLock(id, async () => {
      const record = (await cx.files.read(id))!
      const current = record.spec.volumes ?? []
      const byName = await volumes.get(volumeId).catch(() => undefined)
      const gone = current.find((v) => v.volumeId === volumeId || v.volumeId === byName?.id)
      if (!gone) throw new ValidationError('volumeId', `volume "${volumeId}" is not attached to instance ${record.name}`)
      const vm = record.vmm ? liveVm(cx, record, 'detach_volume') : undefined
      if (vm) await unmountAndUnplug(cx, record, vm, gone)
      // The instance first: a crash after it leaves at worst an attachment record the next open releases.
      record.spec.volumes = current.filter((v) => v !== gone)
      if (vm) record.vmm = vm.persisted
      await saveVolumes(cx, record)
      await rm(volumeOverlayPath(cx, id, gone.volumeId), { force: true })
      await volumes.release(id, gone.volumeId)
      await cx.files.log(id, `volume ${gone.volumeId} detached from ${gone.mountPath}${vm ? ' (unplugged)' : ''}`)
    }),
  )
}

async function unmountAndUnplug(cx: InstanceContext, record: InstanceRecord, vm: LiveVm, v: InstanceVolume): Promise<void> {
  if (v.hotplugSlot === undefined) {
    throw cannot('detach_volume', record, `volume ${v.volumeId} was attached at boot as a virtio-blk PCI disk, which cannot be unplugged; stop the instance to detach it`)
  }
  const r = await guestVolumeCommand(cx, record, 'umount-volume', [v.mountPath])
  if (r.exitCode === VOLUME_BUSY_EXIT) {
    throw new VolumeError('volume_busy', `volume ${v.volumeId} is in use at ${v.mountPath} in the guest (${r.said}); it stays attached`, {
      field: 'volumeId',
      details: { volume: v.volumeId, mountPath: v.mountPath },
    })
  }
  if (r.exitCode !== 0) throw new VolumeError('volume_busy', `the guest could not unmount volume ${v.volumeId} at ${v.mountPath}: ${r.said}; it stays attached`, { field: 'volumeId' })
  await unplugAll(vm, hotDisks(cx, record, v))
}
