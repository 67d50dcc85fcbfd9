/**
 * The snapshot directory of a QEMU standby: the migration stream (`vmstate`) plus a small
 * `snapshot.json`. A migration stream only loads into a QEMU with the same device model, so the
 * metadata records a fingerprint of the parts of the spec that shape it, and a restore with a
 * different one is refused up front instead of failing inside QEMU.
 *
 * QEMU 7.2 has no `file:` migration URI, so the stream goes through `exec:cat` (run by /bin/sh:
 * paths are single-quoted).
 */
import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import { pollUntil, ValidationError } from '@hypeman-ts/common'
import { VmmError } from '../errors.js'
import { machineShapeFingerprint, readSnapshotMeta, SNAPSHOT_META_FILE } from '../snapshot-meta.js'
import type { ResolvedAccel, VmSpec } from '../types.js'
import type { QmpClient } from './qmp-client.js'

export { SNAPSHOT_META_FILE }
export const SNAPSHOT_STATE_FILE = 'vmstate'
export const SNAPSHOT_FORMAT = 'hypeman-ts/qemu-migration/1'

export interface QemuSnapshotMeta {
  format: typeof SNAPSHOT_FORMAT
  driver: 'qemu'
  qemuVersion: string
  accel: ResolvedAccel
  /** machineFingerprint() of the spec the snapshot was taken from. */
  fingerprint: string
  stateFile: string
  bytes: number
  createdAt: string
  /**
   * The RAM is not in the stream but in the shared file the VM ran on (`VmSpec.memoryFile`; its
   * name here): a restore must map that file (unshared) and load the stream with `x-ignore-shared`.
   */
  ramInFile?: string
}

/** The parts of a spec that the migration stream depends on (not paths: those may move). */
export function machineFingerprint(spec: VmSpec): string {
  // SCSI disks are matched by address, not by order (they are hot-plugged in any order), so they
  // go last, by target. Disks and specs without SCSI hash as they did before it existed.
  const all = spec.disks ?? []
  const scsi = all.filter((d) => d.bus === 'scsi').sort((a, b) => a.scsiId! - b.scsiId!)
  const disks = [...all.filter((d) => d.bus !== 'scsi'), ...scsi].map((d) => ({
    serial: d.serial,
    readonly: d.readonly === true,
    format: d.format ?? 'raw',
    throttled: !!d.throttle,
    ...(d.bus === 'scsi' ? { scsiId: d.scsiId } : {}),
  }))
  return machineShapeFingerprint(spec, disks, {
    channels: (spec.channels ?? []).map((c) => [c.name, c.backend.kind]),
    ...(spec.scsiController ? { scsiController: true } : {}),
  })
}

/** Single-quotes a path for /bin/sh. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`
}

export function migrateToFileUri(path: string): string {
  return `exec:cat > ${shellQuote(path)}`
}

export function migrateFromFileUri(path: string): string {
  return `exec:cat ${shellQuote(path)}`
}

/** Reads and checks a snapshot directory for restoring `spec`; returns the path of the stream. */
export async function loadSnapshotForRestore(spec: VmSpec): Promise<{ meta: QemuSnapshotMeta; statePath: string }> {
  const dir = spec.restoreFrom as string
  const meta = await readSnapshotMeta<QemuSnapshotMeta>(dir)
  if (meta.format !== SNAPSHOT_FORMAT || meta.driver !== 'qemu') {
    throw new ValidationError('restoreFrom', `${dir} holds a ${meta.format ?? 'unknown'} snapshot, not one this QEMU driver wrote`)
  }
  const expected = machineFingerprint(spec)
  if (meta.fingerprint !== expected) {
    throw new ValidationError(
      'restoreFrom',
      `snapshot ${dir} was taken from a VM with different vCPUs, memory, disks (hot-plugged ones included), NICs or channels than this spec`,
    )
  }
  if (meta.ramInFile && !spec.memoryFile) {
    throw new ValidationError('memoryFile', `snapshot ${dir} keeps the guest RAM in ${meta.ramInFile}: the restore must map it (memoryFile)`)
  }
  const statePath = join(dir, meta.stateFile)
  const size = await stat(statePath).then(
    (s) => s.size,
    () => -1,
  )
  if (size !== meta.bytes) {
    throw new VmmError('restore_failed', `snapshot state ${statePath} is missing or truncated (${size} of ${meta.bytes} bytes)`, {
      field: 'restoreFrom',
    })
  }
  return { meta, statePath }
}

/**
 * Loads a checked snapshot (loadSnapshotForRestore) into a QEMU waiting with `-incoming defer`.
 * The load of a small stream takes tens of milliseconds: polled often, so the wait adds little.
 */
export async function loadSnapshot(qmp: QmpClient, restore: { meta: QemuSnapshotMeta; statePath: string }, deadline: number, signal?: AbortSignal): Promise<void> {
  // A stream written with the RAM in a shared file has no RAM pages: they are in the file this VM maps.
  if (restore.meta.ramInFile) await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] })
  await qmp.execute('migrate-incoming', { uri: migrateFromFileUri(restore.statePath) })
  const final = await pollUntil(
    async () => {
      const info = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate')
      return info.status === 'completed' || info.status === 'failed' || info.status === 'cancelled' ? info : undefined
    },
    { deadline, ...(signal ? { signal } : {}), intervalMs: 5, maxIntervalMs: 10, what: 'the snapshot to load', step: 'restore.incoming' },
  )
  if (final.status !== 'completed') {
    throw new VmmError('restore_failed', `loading the snapshot ${final.status}: ${final['error-desc'] ?? 'no reason given'}`, { step: 'restore.incoming' })
  }
}
