/**
 * Boot templates: snapshots of a guest stopped where init waits for its instance (see the guest
 * README, "Template boots"), one per machine shape, kept under `<dataDir>/templates/<key>/`:
 *
 *   template.json    what it was made from, the MAC its NIC had, its size, when it was last used
 *   snapshot/        the driver's snapshot (restored read-only: many instances share it)
 *
 * A template appears complete or not at all: it is written into `<key>.staging/` and renamed.
 * Least recently used templates go when the total passes the size cap.
 */
import { createHash } from 'node:crypto'
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { errorMessage, pathExists, readJsonIfExists, silentLogger, writeJsonAtomic, type Logger } from '@hypeman-ts/common'
import { SNAPSHOT_META_FILE } from '@hypeman-ts/vmm-drivers'

export const TEMPLATE_META_FILE = 'template.json'
const STAGING_SUFFIX = '.staging'
const KEY_SHAPE = /^[0-9a-f]{32}$/

export interface TemplateMeta {
  key: string
  /** The parts of the key a person can read (image, vCPUs, memory, ...). */
  shape: Record<string, unknown>
  /** The MAC the template's NIC was booted with (a restore passes it back; the guest then sets its own), or null without a NIC. */
  mac: string | null
  bytes: number
  createdAt: string
  lastUsedAt: string
}

export interface Template extends TemplateMeta {
  dir: string
  snapshotDir: string
}

export interface TemplateStoreOptions {
  dir: string
  /** Total size the templates may take; the least recently used go first. */
  maxBytes: number
  logger?: Logger
}

/** The template key of a machine shape: any change to any part of it is another template. Pure. */
export function templateKey(shape: Record<string, unknown>): string {
  return createHash('sha256').update(JSON.stringify(shape)).digest('hex').slice(0, 32)
}

export class TemplateStore {
  readonly dir: string
  readonly maxBytes: number
  readonly #logger: Logger
  /** Keys a boot in this process is making a template for: another boot of the shape boots plain meanwhile. */
  readonly #making = new Set<string>()

  constructor(opts: TemplateStoreOptions) {
    this.dir = opts.dir
    this.maxBytes = opts.maxBytes
    this.#logger = opts.logger ?? silentLogger
  }

  /** Removes what a crash left mid-write: staging dirs, and dirs without a complete template. */
  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true })
    for (const name of await readdir(this.dir)) {
      const complete = KEY_SHAPE.test(name) && (await this.#read(name)) !== undefined
      if (!complete) await rm(join(this.dir, name), { recursive: true, force: true })
    }
  }

  async #read(key: string): Promise<Template | undefined> {
    const dir = join(this.dir, key)
    const meta = await readJsonIfExists<TemplateMeta>(join(dir, TEMPLATE_META_FILE)).catch(() => undefined)
    const snapshotDir = join(dir, 'snapshot')
    if (!meta || meta.key !== key || !(await pathExists(join(snapshotDir, SNAPSHOT_META_FILE)))) return undefined
    return { ...meta, dir, snapshotDir }
  }

  async get(key: string): Promise<Template | undefined> {
    return KEY_SHAPE.test(key) ? this.#read(key) : undefined
  }

  async list(): Promise<Template[]> {
    const names = await readdir(this.dir).catch(() => [] as string[])
    const found = await Promise.all(names.filter((n) => KEY_SHAPE.test(n)).map((n) => this.#read(n)))
    return found.filter((t): t is Template => t !== undefined)
  }

  /**
   * Claims the making of `key`'s template: the staging dir to snapshot into, or undefined when
   * this process is making it already. `commit` or `abandon` ends the claim.
   */
  beginMaking(key: string): { stagingDir: string; snapshotDir: string } | undefined {
    if (this.#making.has(key)) return undefined
    this.#making.add(key)
    const stagingDir = join(this.dir, key + STAGING_SUFFIX)
    return { stagingDir, snapshotDir: join(stagingDir, 'snapshot') }
  }

  async commit(key: string, meta: Omit<TemplateMeta, 'key' | 'bytes' | 'createdAt' | 'lastUsedAt'>): Promise<Template> {
    const stagingDir = join(this.dir, key + STAGING_SUFFIX)
    try {
      const bytes = await dirBytes(join(stagingDir, 'snapshot'))
      const now = new Date().toISOString()
      await writeJsonAtomic(join(stagingDir, TEMPLATE_META_FILE), { key, ...meta, bytes, createdAt: now, lastUsedAt: now } satisfies TemplateMeta)
      await rm(join(this.dir, key), { recursive: true, force: true })
      await rename(stagingDir, join(this.dir, key))
    } finally {
      this.#making.delete(key)
    }
    await this.#evict(key)
    return (await this.#read(key))!
  }

  async abandon(key: string): Promise<void> {
    this.#making.delete(key)
    await rm(join(this.dir, key + STAGING_SUFFIX), { recursive: true, force: true })
  }

  /** A template that failed to restore: the next boot of its shape makes a new one. */
  async drop(key: string, why: string): Promise<void> {
    this.#logger.warn('dropping a boot template', { key, why })
    await rm(join(this.dir, key), { recursive: true, force: true })
  }

  async touch(t: Template): Promise<void> {
    await writeJsonAtomic(join(t.dir, TEMPLATE_META_FILE), { ...metaOf(t), lastUsedAt: new Date().toISOString() } satisfies TemplateMeta).catch((err) =>
      this.#logger.warn('could not record a template use', { key: t.key, error: errorMessage(err) }),
    )
  }

  /** Drops the least recently used templates (never `keep`) until the total fits the cap. */
  async #evict(keep: string): Promise<void> {
    const all = (await this.list()).sort((a, b) => a.lastUsedAt.localeCompare(b.lastUsedAt))
    let total = all.reduce((sum, t) => sum + t.bytes, 0)
    for (const t of all) {
      if (total <= this.maxBytes) break
      if (t.key === keep) continue
      await this.drop(t.key, `over the templates' size cap (${total} > ${this.maxBytes} bytes)`)
      total -= t.bytes
    }
  }
}

function metaOf(t: Template): TemplateMeta {
  return { key: t.key, shape: t.shape, mac: t.mac, bytes: t.bytes, createdAt: t.createdAt, lastUsedAt: t.lastUsedAt }
}

/** Bytes the files of a directory take on disk (a snapshot may be sparse). */
async function dirBytes(dir: string): Promise<number> {
  let total = 0
  for (const name of await readdir(dir)) {
    const s = await stat(join(dir, name))
    if (s.isFile()) total += s.blocks * 512
  }
  return total
}
