/**
 * The snapshot directory of a Cloud Hypervisor or Firecracker standby: the VMM's own files plus
 * our `snapshot.json`. A VMM restores a VM with the device model it saved, and reopens some host
 * paths from its saved state (disks always; Cloud Hypervisor also its TAPs, vsock socket and
 * console file). So the metadata records a fingerprint of the machine's shape and those pinned
 * paths, and a restore whose spec differs is refused up front, naming `restoreFrom`, instead of
 * failing inside the VMM. It also records every file the VMM wrote and its size, so a truncated
 * or partly deleted snapshot is a `restore_failed` before anything is spawned.
 */
import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { ValidationError } from '@hypeman-ts/common'
import { VmmError } from '../errors.js'
import { machineShapeFingerprint, readSnapshotMeta, SNAPSHOT_META_FILE } from '../snapshot-meta.js'
import type { DriverName, ResolvedAccel, VmSpec } from '../types.js'

export const REST_SNAPSHOT_META_FILE = SNAPSHOT_META_FILE
export const REST_SNAPSHOT_FORMAT = 'hypeman-ts/rest-snapshot/1'

export interface RestSnapshotMeta {
  format: typeof REST_SNAPSHOT_FORMAT
  driver: Exclude<DriverName, 'qemu' | 'vz'>
  accel: ResolvedAccel
  fingerprint: string
  /** Host paths the VMM reopens from its saved state, by what they are (`disks[0].path`, ...). */
  pinnedPaths: Record<string, string>
  /** Every file the VMM wrote into the directory, with its size in bytes. */
  files: Record<string, number>
  bytes: number
  createdAt: string
}

/** The parts of a spec the saved device model depends on (not paths: those are checked apart). */
export function restMachineFingerprint(spec: VmSpec): string {
  const disks = (spec.disks ?? []).map((d) => ({ serial: d.serial, readonly: d.readonly === true, format: d.format ?? 'raw', throttle: d.throttle ?? null }))
  return machineShapeFingerprint(spec, disks, { vsock: spec.vsock ? { cid: spec.vsock.cid ?? null } : null })
}

/** Lists the files in a snapshot directory (ours excluded) with their sizes. */
export async function snapshotFiles(dir: string): Promise<Record<string, number>> {
  const files: Record<string, number> = {}
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (!entry.isFile() || entry.name === REST_SNAPSHOT_META_FILE) continue
    files[entry.name] = (await stat(join(dir, entry.name))).size
  }
  return files
}

/** Reads and checks a snapshot directory for restoring `spec` with `driver`. */
export async function loadRestSnapshot(
  spec: VmSpec,
  driver: RestSnapshotMeta['driver'],
  pinnedPaths: Record<string, string>,
): Promise<RestSnapshotMeta> {
  const dir = spec.restoreFrom as string
  const meta = await readSnapshotMeta<RestSnapshotMeta>(dir)
  if (meta.format !== REST_SNAPSHOT_FORMAT || meta.driver !== driver) {
    throw new ValidationError('restoreFrom', `${dir} holds a ${meta.driver ?? 'unknown'} snapshot (${meta.format ?? 'unknown format'}), not a ${driver} one`)
  }
  if (meta.fingerprint !== restMachineFingerprint(spec)) {
    throw new ValidationError('restoreFrom', `snapshot ${dir} was taken from a VM with different vCPUs, memory, disks, NICs or vsock than this spec`)
  }
  for (const [what, path] of Object.entries(meta.pinnedPaths)) {
    if (pinnedPaths[what] !== path) {
      throw new ValidationError(
        'restoreFrom',
        `${driver} reopens ${what} from the snapshot as ${path}; this spec has ${pinnedPaths[what] ?? 'none'} (it must be the same path)`,
      )
    }
  }
  for (const [name, bytes] of Object.entries(meta.files)) {
    const size = await stat(join(dir, name)).then(
      (s) => s.size,
      () => -1,
    )
    if (size !== bytes) {
      throw new VmmError('restore_failed', `snapshot file ${join(dir, name)} is missing or truncated (${size} of ${bytes} bytes)`, {
        field: 'restoreFrom',
      })
    }
  }
  return meta
}
