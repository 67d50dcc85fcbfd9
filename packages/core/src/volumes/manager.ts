/**
 * `hm.volumes`: ext4 disks that outlive instances. A volume is a sparse disk file with a record
 * beside it; instances attach it at create (instances/create.ts, step `volumes`), which records
 * the attachment here, and release it when they are deleted (or when reconcile undoes a crashed
 * create). Read-write: one instance alone; read-only: any number, never beside a read-write one.
 */
import { createReadStream } from 'node:fs'
import { mkdir, rename, rm, stat, truncate, writeFile } from 'node:fs/promises'
import type { Readable } from 'node:stream'
import { createId } from '@paralleldrive/cuid2'
import { CommandError, parseSize, run, ValidationError } from '@hypeman-ts/common'
import { VolumeError } from '../errors.js'
import { validateName } from '../instances/params.js'
import { findByIdOrName, matchesTags, validateTags } from '../validate.js'
import { unpackArchive } from './archive.js'
import type { MountField, VolumeMountSpec } from './mounts.js'
import { VolumeStore, type VolumeAttachmentRecord, type VolumeRecord } from './store.js'

/** A volume as callers see it: the record without its format version, attachments without internals. */
export interface Volume extends Omit<VolumeRecord, 'version' | 'attachments'> {
  attachments: Omit<VolumeAttachmentRecord, 'overlay'>[]
}

export interface CreateVolumeParams {
  name: string
  /** e.g. "10GB"; the disk is sparse, so only what is written takes space. */
  size: string
  tags?: Record<string, string>
  /** Default: a CUID2. */
  id?: string
}

export interface CreateVolumeFromArchiveParams {
  name: string
  /** The most the archive's content may hold, and the size of the disk, e.g. "1GB". */
  sizeLimit: string
  tags?: Record<string, string>
  id?: string
}

export interface VolumeManagerOptions {
  dir: string
  /** An instance's name for messages (volume records know instances by id). */
  instanceName?: (id: string) => Promise<string | undefined>
}

const MIB = 1024 * 1024
const GIB = 1024 ** 3
const ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/

/** The spec's Volume schema. */
export function volumeToWire(v: Volume) {
  return {
    id: v.id,
    name: v.name,
    size_gb: Math.ceil(v.sizeBytes / GIB),
    tags: v.tags,
    attachments: v.attachments.map((a) => ({ instance_id: a.instanceId, mount_path: a.mountPath, readonly: a.readonly })),
    created_at: v.createdAt,
  }
}

function toVolume(r: VolumeRecord): Volume {
  return {
    id: r.id,
    name: r.name,
    sizeBytes: r.sizeBytes,
    createdAt: r.createdAt,
    tags: { ...r.tags },
    attachments: r.attachments.map((a) => ({ instanceId: a.instanceId, mountPath: a.mountPath, readonly: a.readonly })),
  }
}

/** mkfs.ext4 over a sparse file; `-d` fills it from a directory. Lazy init: the guest does not zero tables it never reads. */
async function mkfs(path: string, sizeBytes: number, fromDir: string | null, signal?: AbortSignal): Promise<void> {
  await writeFile(path, '', { mode: 0o600 })
  await truncate(path, sizeBytes)
  const args = ['-q', '-F', '-t', 'ext4', '-m', '0', '-L', 'hm-volume', '-E', 'lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0']
  await run('mkfs.ext4', [...args, ...(fromDir ? ['-d', fromDir] : []), path], { signal, step: 'volume.mkfs' })
}

export class VolumeManager {
  readonly store: VolumeStore

  constructor(private readonly opts: VolumeManagerOptions) {
    this.store = new VolumeStore(opts.dir)
  }

  async init(): Promise<void> {
    await mkdir(this.store.root, { recursive: true, mode: 0o700 })
    await this.store.sweep()
  }

  diskPath(id: string): string {
    return this.store.diskPath(id)
  }

  /** An empty ext4 volume. */
  async create(params: CreateVolumeParams, opts: { signal?: AbortSignal } = {}): Promise<Volume> {
    const p = this.checkParams(params, 'size')
    const sizeBytes = roundMiB(parseSize(params.size, 'size', { min: 16 * MIB, max: 16 * 1024 ** 4 }))
    return this.build(p, sizeBytes, (dir) => mkfs(this.diskIn(dir), sizeBytes, null, opts.signal))
  }

  /**
   * A volume holding a tar.gz archive's content (a path, or a stream of the gzipped tar). The
   * archive is unpacked with the image layers' guarantees (images/unpack.ts), plus: absolute
   * names are refused, and content beyond `sizeLimit` stops the unpack.
   */
  async createFromArchive(params: CreateVolumeFromArchiveParams, archive: string | Readable, opts: { signal?: AbortSignal } = {}): Promise<Volume> {
    const p = this.checkParams(params, 'sizeLimit')
    const sizeBytes = roundMiB(parseSize(params.sizeLimit, 'sizeLimit', { min: 16 * MIB, max: 16 * 1024 ** 4 }))
    if (typeof archive === 'string') {
      const st = await stat(archive).catch(() => undefined)
      if (!st?.isFile()) throw new ValidationError('archive', `${archive} is not a readable file`)
    }
    return this.build(p, sizeBytes, async (dir) => {
      const tree = `${dir}/tree`
      // Opened only now: a stream nobody reads would hold its descriptor (and throw unheard on error).
      const input = typeof archive === 'string' ? createReadStream(archive) : archive
      await unpackArchive(input, tree, { maxBytes: sizeBytes, ...(opts.signal ? { signal: opts.signal } : {}) })
      try {
        await mkfs(this.diskIn(dir), sizeBytes, tree, opts.signal)
      } catch (err) {
        // The content fit the byte cap but not the filesystem (metadata, inodes, the journal).
        const full = /No space left|Could not allocate|too many inodes/i.test(String((err as Error).message))
        throw new VolumeError(full ? 'archive_too_large' : 'volume_build_failed', `the archive's content does not fit a ${params.sizeLimit} volume: ${(err as Error).message}`, { ...(full ? { field: 'sizeLimit' } : {}), cause: err })
      } finally {
        await rm(tree, { recursive: true, force: true })
      }
    })
  }

  async get(idOrName: string): Promise<Volume> {
    return toVolume(await this.find(idOrName, 'id'))
  }

  async list(filter: { tags?: Record<string, string> } = {}): Promise<Volume[]> {
    const records = await this.store.all()
    return records.filter((r) => matchesTags(r.tags, filter.tags)).sort((a, b) => a.createdAt.localeCompare(b.createdAt)).map(toVolume)
  }

  /** Refused with `volume_in_use` while any instance has it attached. */
  async delete(idOrName: string): Promise<void> {
    await this.store.withLock(async () => {
      const r = await this.find(idOrName, 'id')
      if (r.attachments.length) {
        const holders = await this.describe(r.attachments.map((a) => a.instanceId))
        throw new VolumeError('volume_in_use', `volume ${r.name} is attached to ${holders}: delete those instances first`, {
          field: 'id',
          details: { instances: r.attachments.map((a) => a.instanceId) },
        })
      }
      // Renamed out of sight first: a crash mid-removal leaves a build dir, swept at open.
      const gone = this.store.buildDir(`${r.id}-deleted-${Date.now()}`)
      await rename(this.store.dir(r.id), gone)
      await rm(gone, { recursive: true, force: true })
    })
  }

  /**
   * Records `instanceId`'s attachments (all or none), resolving names to ids; returns the mounts
   * with ids. `dryRun` only checks (create's up-front validation). Re-attaching what the instance
   * already holds is a no-op, so a retried step is harmless.
   */
  async attach(instanceId: string, mounts: VolumeMountSpec[], opts: { dryRun?: boolean; fieldOf?: MountField } = {}): Promise<VolumeMountSpec[]> {
    if (mounts.length === 0) return []
    const field = (i: number) => (opts.fieldOf ?? ((n, key) => `volumes[${n}].${key}`))(i, 'volumeId')
    const apply = async () => {
      // In order, so that the error names the first mount at fault.
      const records = new Map<string, VolumeRecord>()
      const resolved: VolumeMountSpec[] = []
      for (const [i, m] of mounts.entries()) {
        const r = await this.find(m.volumeId, field(i))
        const twice = resolved.findIndex((o) => o.volumeId === r.id)
        if (twice >= 0) throw new ValidationError(field(i), `volume "${m.volumeId}" is the same volume as mount ${twice} ("${mounts[twice]!.volumeId}")`)
        records.set(r.id, r)
        const others = r.attachments.filter((a) => a.instanceId !== instanceId)
        const clash = m.readonly ? others.filter((a) => !a.readonly) : others
        if (clash.length) {
          const holders = await this.describe(clash.map((a) => a.instanceId))
          const why = m.readonly ? `read-write to ${holders}` : `to ${holders}; a read-write attach needs it alone`
          throw new VolumeError('volume_in_use', `volume ${r.name} is attached ${why}`, {
            field: field(i),
            details: { volume: r.id, instances: clash.map((a) => a.instanceId) },
          })
        }
        resolved.push({ ...m, volumeId: r.id })
      }
      if (opts.dryRun) return resolved
      for (const m of resolved) {
        const r = records.get(m.volumeId)!
        if (r.attachments.some((a) => a.instanceId === instanceId)) continue
        // A read-only disk cannot replay a journal a read-write user left: replay it here, while no one has it.
        if (m.readonly && r.attachments.length === 0) await replayJournal(this.diskPath(r.id))
        r.attachments.push({ instanceId, mountPath: m.mountPath, readonly: m.readonly, overlay: m.overlay })
        await this.store.write(r)
      }
      return resolved
    }
    return opts.dryRun ? apply() : this.store.withLock(apply)
  }

  /**
   * Drops attachments that no instance holds (run at open, after the instances' reconcile):
   * `holds` says whether the instance exists and its spec lists the volume. Whatever window a
   * crash found (a create, a delete, an attach or detach), an attachment never outlives its use.
   */
  async releaseOrphans(holds: (instanceId: string, volumeId: string) => Promise<boolean>): Promise<string[]> {
    const released: string[] = []
    await this.store.withLock(async () => {
      for (const r of await this.store.all()) {
        const kept: VolumeAttachmentRecord[] = []
        for (const a of r.attachments) {
          if (await holds(a.instanceId, r.id)) kept.push(a)
          else released.push(a.instanceId)
        }
        if (kept.length === r.attachments.length) continue
        r.attachments = kept
        await this.store.write(r)
      }
    })
    return released
  }

  /** Drops `instanceId`'s attachments (of one volume, or all: delete, a failed or crashed create). Idempotent. */
  async release(instanceId: string, volumeId?: string): Promise<void> {
    await this.store.withLock(async () => {
      for (const r of await this.store.all()) {
        const kept = r.attachments.filter((a) => a.instanceId !== instanceId || (volumeId !== undefined && r.id !== volumeId))
        if (kept.length === r.attachments.length) continue
        r.attachments = kept
        await this.store.write(r)
      }
    })
  }

  private diskIn(dir: string): string {
    return `${dir}/disk.ext4`
  }

  private checkParams(params: { name: string; tags?: Record<string, string>; id?: string }, sizeField: string) {
    if (!params || typeof params !== 'object') throw new ValidationError('params', 'must be an object')
    if ((params as unknown as Record<string, unknown>)[sizeField] === undefined) throw new ValidationError(sizeField, 'is required')
    const name = validateName(params.name)
    if (params.id !== undefined && (typeof params.id !== 'string' || !ID.test(params.id))) {
      throw new ValidationError('id', 'must be 1-128 letters, digits, "_" and "-", starting with a letter or digit')
    }
    return { name, id: params.id ?? createId(), tags: validateTags(params.tags, 'tags') }
  }

  /** Builds aside, then renames into place; the name and id are checked before and again at the rename. */
  private async build(p: { name: string; id: string; tags: Record<string, string> }, sizeBytes: number, fill: (dir: string) => Promise<void>): Promise<Volume> {
    await this.store.withLock(() => this.checkFree(p))
    const dir = this.store.buildDir(p.id)
    const record: VolumeRecord = { version: 1, id: p.id, name: p.name, sizeBytes, createdAt: new Date().toISOString(), tags: p.tags, attachments: [] }
    try {
      await rm(dir, { recursive: true, force: true })
      await mkdir(dir, { mode: 0o700 })
      await fill(dir)
      await this.store.write(record, dir)
      await this.store.withLock(async () => {
        await this.checkFree(p)
        await rename(dir, this.store.dir(p.id))
      })
    } catch (err) {
      await rm(dir, { recursive: true, force: true })
      throw err
    }
    return toVolume(record)
  }

  private async checkFree(p: { name: string; id: string }): Promise<void> {
    for (const r of await this.store.all()) {
      if (r.id === p.id) throw new VolumeError('volume_exists', `a volume with id "${p.id}" already exists`, { field: 'id' })
      if (r.name === p.name) throw new VolumeError('volume_exists', `a volume named "${p.name}" already exists`, { field: 'name' })
    }
  }

  private find(idOrName: string, field: string): Promise<VolumeRecord> {
    return findByIdOrName(this.store, idOrName, field, (ref) => new VolumeError('volume_not_found', `no volume with id or name "${ref}"`, { field }))
  }

  private async describe(ids: string[]): Promise<string> {
    const names = await Promise.all(ids.map(async (id) => (await this.opts.instanceName?.(id).catch(() => undefined)) ?? id))
    return names.map((n, i) => (n === ids[i] ? `instance ${n}` : `instance ${n} (${ids[i]})`)).join(', ')
  }
}

function roundMiB(bytes: number): number {
  return Math.ceil(bytes / MIB) * MIB
}

/** Replays the ext4 journal, if it needs it (exit 1 means "fixed"; anything else is real trouble). */
async function replayJournal(disk: string): Promise<void> {
  try {
    await run('e2fsck', ['-p', '-E', 'journal_only', disk], { step: 'volume.journal' })
  } catch (err) {
    if (!(err instanceof CommandError) || err.exitCode !== 1) throw new VolumeError('volume_build_failed', `replaying the journal of ${disk} failed: ${(err as Error).message}`, { cause: err })
  }
}
