/**
 * The on-disk image cache, content-addressed by manifest digest:
 *
 *   <dir>/blobs/sha256/<hex>      verified blobs (manifests, configs, compressed layers), shared
 *   <dir>/disks/<hex>/            one ready image: meta.json + its read-only root disk
 *   <dir>/refs/<hash>.json        a name (normalised reference) → the manifest digest it resolved to
 *   <dir>/tmp/<pid>-…/            work in progress of process <pid>; reaped once that process is gone
 *
 * An image directory appears under disks/ only by an atomic rename once complete, so a crash
 * mid-pull never leaves an image that looks ready.
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { processAlive, readJsonIfExists, withFileLock, writeJsonAtomic } from '@hypeman-ts/common'
import type { DiskFormat } from './disk.js'
import type { Descriptor, ImageConfig } from './manifest.js'

export interface ImageRecord {
  /** Digest of the platform-specific manifest the disk was built from. */
  digest: string
  platform: string
  config: ImageConfig
  configDigest: string
  layers: Descriptor[]
  disk: { format: DiskFormat; file: string; sizeBytes: number }
  createdAt: string
}

export interface RefRecord {
  name: string
  digest: string
  /** What the name pointed at when pulled: an index digest, or the manifest digest itself. */
  topDigest: string
  platform: string
  tags: Record<string, string>
  createdAt: string
}

const hex = (digest: string): string => digest.slice(digest.indexOf(':') + 1)

export class ImageStore {
  constructor(readonly dir: string) {}

  async init(): Promise<void> {
    for (const d of ['blobs/sha256', 'disks', 'refs', 'tmp', 'locks']) await mkdir(join(this.dir, d), { recursive: true })
    // Leftovers of pulls whose process died: nothing under tmp/ is ever referenced.
    for (const name of await readdir(join(this.dir, 'tmp'))) {
      const pid = Number.parseInt(name, 10)
      if (Number.isInteger(pid) && pid !== process.pid && processAlive(pid)) continue
      if (pid === process.pid) continue
      await rm(join(this.dir, 'tmp', name), { recursive: true, force: true })
    }
  }

  lockPath(name: string): string {
    return join(this.dir, 'locks', `${name.replace(/[^a-zA-Z0-9_.-]/g, '_')}.lock`)
  }

  /** Serialises changes to refs/disks/blobs that must not interleave with a GC. */
  withStoreLock<T>(fn: () => Promise<T>): Promise<T> {
    return withFileLock(this.lockPath('store'), fn, { timeoutMs: 10 * 60_000 })
  }

  async makeTmpDir(): Promise<string> {
    const d = join(this.dir, 'tmp', `${process.pid}-${Date.now()}-${randomBytes(4).toString('hex')}`)
    await mkdir(d, { recursive: true })
    return d
  }

  blobPath(digest: string): string {
    return join(this.dir, 'blobs', 'sha256', hex(digest))
  }

  async hasBlob(digest: string): Promise<boolean> {
    return stat(this.blobPath(digest)).then(() => true, () => false)
  }

  async readBlob(digest: string): Promise<Buffer | undefined> {
    try {
      return await readFile(this.blobPath(digest))
    } catch {
      return undefined
    }
  }

  /** Moves a verified blob into the store (a blob already there is the same content). */
  async commitBlob(path: string, digest: string): Promise<void> {
    await rename(path, this.blobPath(digest))
  }

  diskDir(digest: string): string {
    return join(this.dir, 'disks', hex(digest))
  }

  diskPath(record: ImageRecord): string {
    return join(this.diskDir(record.digest), record.disk.file)
  }

  async getRecord(digest: string): Promise<ImageRecord | undefined> {
    return readJsonIfExists<ImageRecord>(join(this.diskDir(digest), 'meta.json'))
  }

  /** Publishes a complete image directory built in tmp/. */
  async commitDisk(tmpDir: string, record: ImageRecord): Promise<void> {
    await writeJsonAtomic(join(tmpDir, 'meta.json'), record)
    try {
      await rename(tmpDir, this.diskDir(record.digest))
    } catch (err) {
      // Someone else published the same digest first: theirs is as good as ours.
      if (!['ENOTEMPTY', 'EEXIST'].includes((err as NodeJS.ErrnoException).code ?? '')) throw err
      await rm(tmpDir, { recursive: true, force: true })
    }
  }

  private refPath(name: string): string {
    return join(this.dir, 'refs', `${createHash('sha256').update(name).digest('hex').slice(0, 40)}.json`)
  }

  getRef(name: string): Promise<RefRecord | undefined> {
    return readJsonIfExists<RefRecord>(this.refPath(name))
  }

  putRef(ref: RefRecord): Promise<void> {
    return writeJsonAtomic(this.refPath(ref.name), ref)
  }

  async deleteRef(name: string): Promise<void> {
    await rm(this.refPath(name), { force: true })
  }

  async listRefs(): Promise<RefRecord[]> {
    const out: RefRecord[] = []
    for (const f of await readdir(join(this.dir, 'refs'))) {
      if (!f.endsWith('.json')) continue
      const r = await readJsonIfExists<RefRecord>(join(this.dir, 'refs', f))
      if (r) out.push(r)
    }
    return out
  }

  /**
   * Removes image directories no ref names and no caller protects, then blobs no remaining image
   * uses (manifests and indexes named by refs, configs and layers of remaining images).
   * Call inside withStoreLock.
   */
  async gc(protect: ReadonlySet<string> = new Set()): Promise<{ disks: number; blobs: number }> {
    const refs = await this.listRefs()
    const keepDigests = new Set([...refs.map((r) => r.digest), ...protect])
    const keepBlobs = new Set<string>(refs.map((r) => hex(r.topDigest)))
    let disks = 0
    for (const h of await readdir(join(this.dir, 'disks'))) {
      const record = await this.getRecord(`sha256:${h}`)
      if (record && keepDigests.has(record.digest)) {
        keepBlobs.add(h)
        keepBlobs.add(hex(record.configDigest))
        for (const l of record.layers) keepBlobs.add(hex(l.digest))
        continue
      }
      await rm(join(this.dir, 'disks', h), { recursive: true, force: true })
      disks++
    }
    let blobs = 0
    for (const h of await readdir(join(this.dir, 'blobs', 'sha256'))) {
      if (keepBlobs.has(h)) continue
      await rm(join(this.dir, 'blobs', 'sha256', h), { force: true })
      blobs++
    }
    return { disks, blobs }
  }
}
