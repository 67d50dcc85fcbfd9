/**
 * What the QEMU and REST snapshot directories share: our `snapshot.json` next to the VMM's own
 * files, and a fingerprint of the machine's shape so that a restore into a different device
 * model is refused up front rather than failing inside the VMM.
 */
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { readJsonIfExists, ValidationError } from '@hypeman-ts/common'
import { VmmError } from './errors.js'
import type { VmSpec } from './types.js'

/** Every driver writes it last, after the VMM's own files: a directory that has it holds a complete snapshot. */
export const SNAPSHOT_META_FILE = 'snapshot.json'

/** Reads `snapshot.json` of `dir`; a directory without one is not a snapshot. */
export async function readSnapshotMeta<T>(dir: string): Promise<T> {
  let meta: T | undefined
  try {
    meta = await readJsonIfExists<T>(join(dir, SNAPSHOT_META_FILE))
  } catch (err) {
    throw new VmmError('restore_failed', `snapshot ${dir} has an unreadable ${SNAPSHOT_META_FILE}`, { field: 'restoreFrom', cause: err })
  }
  if (!meta) throw new ValidationError('restoreFrom', `${dir} is not a snapshot directory (no ${SNAPSHOT_META_FILE})`)
  return meta
}

/**
 * Hashes the shape every VMM's saved state depends on (vCPUs, memory, NICs) with the disks as the
 * driver describes them and its own extras. Paths are left out: they are checked apart, or may move.
 * The key order is part of the value: snapshots already on disk carry fingerprints made with it.
 */
export function machineShapeFingerprint(spec: VmSpec, disks: unknown, extra: Record<string, unknown>): string {
  const shape = {
    vcpus: spec.vcpus,
    memoryBytes: spec.memoryBytes,
    hotplugMemory: spec.hotplugMemory ? { maxBytes: spec.hotplugMemory.maxBytes, slots: spec.hotplugMemory.slots ?? null } : null,
    disks,
    nics: (spec.nics ?? []).map((n) => n.mac.toLowerCase()),
    ...extra,
  }
  return createHash('sha256').update(JSON.stringify(shape)).digest('hex').slice(0, 32)
}
