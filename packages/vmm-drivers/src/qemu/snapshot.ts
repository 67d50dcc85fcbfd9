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
import { join, resolve } from 'node:path'
import { pollUntil, ValidationError } from '@hypeman-ts/common'
import { VmmError } from '../errors.js'
import { machineShapeFingerprint, readSnapshotMeta, SNAPSHOT_META_FILE } from '../snapshot-meta.js'
import type { ResolvedAccel, VmSpec } from '../types.js'
import type { QmpClient } from './qmp-client.js'

export { SNAPSHOT_META_FILE }
export const SNAPSHOT_STATE_FILE = 'vmstate'
export const SNAPSHOT_FORMAT = 'hypeman-ts/qemu-migration/1'
export const SNAPSHOT_RAM_FILE = 'memory'

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
   * The RAM is not in the stream but in this file of the snapshot dir (`SNAPSHOT_RAM_FILE`): the
   * VM ran on a shared RAM file (`VmSpec.memoryFile`) and the standby copied it here, sparse. A
   * restore maps it copy-on-write, or copies it into the spec's own shared file, and loads the
   * stream with `x-ignore-shared`.
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

/** A checked snapshot (loadSnapshotForRestore). */
export interface CheckedSnapshot {
  meta: QemuSnapshotMeta
  statePath: string
  /** The snapshot's RAM file, to copy into the spec's shared RAM file before the VM runs. */
  ramFrom?: string
}

/** Reads and checks a snapshot directory for restoring `spec`; returns the path of the stream. */
export async function loadSnapshotForRestore(spec: VmSpec): Promise<CheckedSnapshot> {
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
  let ramFrom: string | undefined
  if (meta.ramInFile) {
    const ram = resolve(dir, meta.ramInFile)
    if (!spec.memoryFile) throw new ValidationError('memoryFile', `snapshot ${dir} keeps the guest RAM in ${ram}: the restore must map it or a copy (memoryFile)`)
    // QEMU would make a missing file anew, empty: a guest running on zeros.
    const size = await stat(ram).then((s) => s.size, () => -1)
    if (size !== spec.memoryBytes) {
      throw new VmmError('restore_failed', `the snapshot's RAM file ${ram} is missing or has the wrong size (${size} of ${spec.memoryBytes} bytes)`, { field: 'restoreFrom' })
    }
    const same = resolve(spec.memoryFile.path) === ram
    // Shared, the VM writes its RAM file: never the snapshot's own, which stays true for the next restore.
    if (spec.memoryFile.shared && same) throw new ValidationError('memoryFile', `a VM restored from ${dir} would write the snapshot's RAM: give it a file of its own`)
    if (!spec.memoryFile.shared && !same) throw new ValidationError('memoryFile', `mapped copy-on-write, the RAM file is the snapshot's own (${ram})`)
    if (spec.memoryFile.shared) ramFrom = ram
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
  return { meta, statePath, ...(ramFrom ? { ramFrom } : {}) }
}

/** The snapshot's RAM file when it has one (`ramInFile`); see VmmDriver.snapshotRamFile. */
export async function snapshotRamFile(dir: string): Promise<string | undefined> {
  const meta = await readSnapshotMeta<QemuSnapshotMeta>(dir).catch(() => undefined)
  return meta?.driver === 'qemu' && meta.ramInFile ? resolve(dir, meta.ramInFile) : undefined
}

/**
 * Loads a checked snapshot (loadSnapshotForRestore) into a QEMU waiting with `-incoming defer`.
 * The load of a small stream takes tens of milliseconds: polled often, so the wait adds little.
 */
export async function loadSnapshot(qmp: QmpClient, restore: CheckedSnapshot, deadline: number, signal?: AbortSignal): Promise<void> {
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
