/**
 * Where volumes live and what is persisted per volume: `<dataDir>/volumes/<id>/volume.json` and
 * `disk.ext4` beside it. A volume is built in `.build-<id>` and renamed into place, so a crash
 * never leaves half a volume under a real id (the leftovers are swept at open).
 */
import { readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { readJsonIfExists, withFileLock, writeJsonAtomic } from '@hypeman-ts/common'

export interface VolumeAttachmentRecord {
  instanceId: string
  mountPath: string
  readonly: boolean
  /** A per-instance copy-on-write layer over the (read-only) volume. */
  overlay: boolean
}

export interface VolumeRecord {
  version: 1
  id: string
  name: string
  sizeBytes: number
  createdAt: string
  tags: Record<string, string>
  attachments: VolumeAttachmentRecord[]
}

const BUILD_PREFIX = '.build-'

export class VolumeStore {
  constructor(readonly root: string) {}

  dir(id: string): string {
    return join(this.root, id)
  }

  diskPath(id: string): string {
    return join(this.root, id, 'disk.ext4')
  }

  /** A fresh build dir for `id`; renamed to `dir(id)` once complete. */
  buildDir(id: string): string {
    return join(this.root, `${BUILD_PREFIX}${id}`)
  }

  read(id: string): Promise<VolumeRecord | undefined> {
    if (id.startsWith('.') || id.includes('/')) return Promise.resolve(undefined)
    return readJsonIfExists<VolumeRecord>(join(this.root, id, 'volume.json'))
  }

  /** Writes the record into `dir` (the build dir while building, the volume's dir after). */
  write(record: VolumeRecord, dir = this.dir(record.id)): Promise<void> {
    return writeJsonAtomic(join(dir, 'volume.json'), record, 0o600)
  }

  async all(): Promise<VolumeRecord[]> {
    const out: VolumeRecord[] = []
    for (const name of await readdir(this.root).catch(() => [] as string[])) {
      if (name.startsWith('.')) continue
      const r = await this.read(name)
      if (r) out.push(r)
    }
    return out
  }

  /** Every change to volume records (create, attach, release, delete) runs under this one lock. */
  withLock<T>(fn: () => Promise<T>): Promise<T> {
    return withFileLock(join(this.root, '.lock'), fn, { timeoutMs: 60_000 })
  }

  /** Removes build dirs a crash left behind (call at open, before anything builds). */
  async sweep(): Promise<void> {
    for (const name of await readdir(this.root).catch(() => [] as string[])) {
      if (name.startsWith(BUILD_PREFIX)) await rm(join(this.root, name), { recursive: true, force: true })
    }
  }
}
