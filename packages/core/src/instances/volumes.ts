/**
 * Volumes of an existing instance: attach and detach while it is Stopped. The disk set of a
 * Standby instance is fixed by its snapshot (the restored guest would not see a new disk, and a
 * missing one would break the restore), and a running one would need hot-plug: both are refused
 * with `conflict` on `state` (the server's `invalid_state`). The change takes effect at the next
 * start: the record's spec lists the volume, the config disk carries its mount, the VMM gets its
 * disk (boot.ts).
 */
import { rm } from 'node:fs/promises'
import { NotSupportedError, ValidationError } from '@hypeman-ts/common'
import { createOverlayDisk, rewriteGuestConfigVolumes } from '../guest/index.js'
import { validateVolumeMounts } from '../volumes/mounts.js'
import type { VolumeManager } from '../volumes/manager.js'
import { guestVolumes, volumeOverlayPath } from './boot.js'
import type { InstanceContext } from './context.js'
import { operate } from './lifecycle.js'
import type { Instance } from './model.js'
import type { InstanceRecord } from './record.js'

export interface AttachVolumeParams {
  mountPath: string
  readonly?: boolean
  overlay?: boolean
  overlaySize?: string
}

function volumesOf(cx: InstanceContext): VolumeManager {
  if (!cx.opts.volumes) throw new NotSupportedError('volumes: this manager has no volume store', { field: 'volumeId' })
  return cx.opts.volumes
}

async function saveVolumes(cx: InstanceContext, record: InstanceRecord): Promise<void> {
  await cx.files.write(record)
  await rewriteGuestConfigVolumes(cx.files.paths(record.id).config, guestVolumes(record))
}

export async function attachVolume(cx: InstanceContext, idOrName: string, volumeId: string, params: AttachVolumeParams): Promise<Instance> {
  const volumes = volumesOf(cx)
  // Fields are named as the caller passed them: `volumeId`, `mountPath`, ...
  const [mount] = validateVolumeMounts([{ ...params, volumeId }], (_i, key) => key || 'params')
  return operate(cx, idOrName, 'attach_volume', (id) =>
    cx.files.withLock(id, async () => {
      const record = (await cx.files.read(id))!
      const current = record.spec.volumes ?? []
      const atPath = current.findIndex((v) => v.mountPath === mount!.mountPath)
      if (atPath >= 0) throw new ValidationError('mountPath', `"${mount!.mountPath}" is already the mount path of volume ${current[atPath]!.volumeId}`)
      const resolved = (await volumes.attach(id, [mount!], { dryRun: true, fieldOf: () => 'volumeId' }))[0]!
      if (current.some((v) => v.volumeId === resolved.volumeId)) throw new ValidationError('volumeId', `volume "${volumeId}" is already attached to instance ${record.name}`)
      await volumes.attach(id, [mount!], { fieldOf: () => 'volumeId' })
      try {
        if (resolved.overlay) await createOverlayDisk(volumeOverlayPath(cx, id, resolved.volumeId), resolved.overlayBytes!)
        record.spec.volumes = [...current, resolved]
        await saveVolumes(cx, record)
      } catch (err) {
        await rm(volumeOverlayPath(cx, id, resolved.volumeId), { force: true })
        await volumes.release(id, resolved.volumeId)
        throw err
      }
      await cx.files.log(id, `volume ${resolved.volumeId} attached at ${resolved.mountPath}${resolved.readonly ? ' (read-only)' : ''}`)
    }),
  )
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
      // The instance first: a crash after it leaves at worst an attachment record the instance's delete releases.
      record.spec.volumes = current.filter((v) => v !== gone)
      await saveVolumes(cx, record)
      await rm(volumeOverlayPath(cx, id, gone.volumeId), { force: true })
      await volumes.release(id, gone.volumeId)
      await cx.files.log(id, `volume ${gone.volumeId} detached from ${gone.mountPath}`)
    }),
  )
}
