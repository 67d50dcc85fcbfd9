/**
 * The images API of the manager: create (start a pull), pull (and wait), get, list, delete,
 * with the statuses of the spec's Image schema (pending → pulling → converting → ready | failed).
 *
 * Two pulls of the same name share one job; two names that resolve to the same digest build it
 * once (a lock per digest, then a second look in the cache). Builds (unpack + mkfs) run a few at
 * a time; the rest wait in a queue whose position the Image reports.
 */
import { ConflictError, errorMessage, Listeners, NotFoundError, NotSupportedError, type Logger, silentLogger, ValidationError } from '@hypeman-ts/common'
import { ImageError } from '../errors.js'
import type { TemplateShape } from '../instances/prepare.js'
import type { Template } from '../templates/store.js'
import { matchesTags, validateTags } from '../validate.js'
import type { RegistryCredentials } from './auth.js'
import { DISK_FORMATS, type DiskFormat } from './disk.js'
import { formatPlatform, parsePlatform, type Platform } from './manifest.js'
import { build, resolve, saveManifests, type PullContext, type PullProgress } from './pull.js'
import { formatReference, parseReference, type ImageReference } from './reference.js'
import { RegistryClient } from './registry.js'
import { LayoutSource, RegistrySource, type ImageSource } from './source.js'
import { ImageStore, type ImageRecord, type RefRecord } from './store.js'
import { withFileLock } from '@hypeman-ts/common'

export type ImageStatus = 'pending' | 'pulling' | 'converting' | 'ready' | 'failed'

/** The spec's Image, in camelCase. */
export interface Image {
  name: string
  digest: string
  platform?: string
  status: ImageStatus
  queuePosition: number | null
  error: string | null
  sizeBytes: number | null
  entrypoint: string[] | null
  cmd: string[] | null
  env: Record<string, string>
  tags: Record<string, string>
  workingDir: string | null
  createdAt: string
}

/** The spec's snake_case JSON for an Image. */
export function imageToWire(img: Image): Record<string, unknown> {
  return {
    name: img.name,
    digest: img.digest,
    ...(img.platform ? { platform: img.platform } : {}),
    status: img.status,
    queue_position: img.queuePosition,
    error: img.error,
    size_bytes: img.sizeBytes,
    entrypoint: img.entrypoint,
    cmd: img.cmd,
    env: img.env,
    tags: img.tags,
    working_dir: img.workingDir,
    created_at: img.createdAt,
  }
}

export interface CreateImageParams {
  /** OCI image reference, e.g. docker.io/library/alpine:latest, or oci:/path/to/layout:tag. */
  name: string
  /** os/arch[/variant]; default the manager's (linux/amd64). */
  platform?: string
  /** Borrowed for this pull only: kept in memory, never persisted or logged. */
  credentials?: { username?: string; password?: string; registryToken?: string }
  tags?: Record<string, string>
}

export interface PullOptions {
  signal?: AbortSignal
  onProgress?: (p: PullProgress & { name: string }) => void
}

/** A pull's end, as `onPullSettled` reports it. */
export interface PullSettled {
  name: string
  status: 'ready' | 'failed'
  error?: string
}

export interface ImageManagerOptions {
  /** Where the cache lives (blobs, disks, refs). */
  dir: string
  /** Format of the read-only root disks: 'ext4' (default) or 'erofs'. */
  diskFormat?: DiskFormat
  /** Platform pulled when a request names none (default linux/amd64). */
  defaultPlatform?: string
  /** Registries spoken to over plain HTTP besides loopback ones. */
  insecureRegistries?: string[]
  /** Default credentials per registry host. */
  credentials?: Record<string, RegistryCredentials> | ((registry: string) => RegistryCredentials | undefined)
  /** Layers downloaded at once per pull (default 3). */
  downloadConcurrency?: number
  /** Unpack + disk builds at once (default 1: they are CPU- and disk-bound). */
  maxConcurrentBuilds?: number
  /** Refuse images whose layers unpack to more than this many bytes (default 64 GiB). */
  maxUnpackedBytes?: number
  /** Digests that must not be deleted (images that instances use). */
  inUse?: () => Promise<ReadonlySet<string>>
  /** Makes the boot template of an image for a machine shape (the instances' side of `prepare`). */
  prepareTemplate?: (image: string, shape: TemplateShape, signal?: AbortSignal) => Promise<Template>
  /** After a delete left an image without a name (its disk is gone): what was made from it (boot templates) goes too. */
  removed?: (digest: string) => Promise<void>
  logger?: Logger
}

interface Job {
  name: string
  platform: string
  credentialsKey: string
  status: ImageStatus
  digest: string
  error: string | null
  tags: Record<string, string>
  createdAt: string
  queued: boolean
  promise: Promise<Image>
}

export class ImageManager {
  readonly store: ImageStore
  private readonly jobs = new Map<string, Job>()
  private readonly client: RegistryClient
  private readonly buildQueue: (() => void)[] = []
  private buildsRunning = 0
  private readonly format: DiskFormat
  private readonly platform: Platform
  private readonly logger: Logger

  constructor(private readonly opts: ImageManagerOptions) {
    this.store = new ImageStore(opts.dir)
    this.format = opts.diskFormat ?? 'ext4'
    if (!DISK_FORMATS.includes(this.format)) throw new ValidationError('diskFormat', `must be one of ${DISK_FORMATS.join(', ')}`)
    this.platform = parsePlatform(opts.defaultPlatform ?? 'linux/amd64', 'defaultPlatform')
    this.logger = opts.logger ?? silentLogger
    this.client = this.makeClient(undefined)
  }

  /** The platform pulled when a create names none (`os/arch[/variant]`). */
  get defaultPlatform(): string {
    return formatPlatform(this.platform)
  }

  async init(): Promise<void> {
    await this.store.init()
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.jobs.values()].map((j) => j.promise))
    await this.client.close()
  }

  private makeClient(override: RegistryCredentials | undefined): RegistryClient {
    const defaults = this.opts.credentials
    const lookup = typeof defaults === 'function' ? defaults : (r: string) => defaults?.[r]
    return new RegistryClient({
      insecureRegistries: this.opts.insecureRegistries ?? [],
      credentials: override ? () => override : lookup,
      logger: this.logger,
    })
  }

  /** Starts pulling; returns at once with the image's current status (the spec's 202). */
  async create(params: CreateImageParams, opts: PullOptions = {}): Promise<Image> {
    const job = this.startJob(params, opts)
    job.promise.catch(() => {}) // the failure is reported through get()/list()
    return this.snapshot(job)
  }

  /** Pulls and waits until the image is ready; throws the pull's error. */
  async pull(params: CreateImageParams | string, opts: PullOptions = {}): Promise<Image> {
    return this.startJob(typeof params === 'string' ? { name: params } : params, opts).promise
  }

  private startJob(params: CreateImageParams, opts: PullOptions): Job {
    if (!params || typeof params !== 'object') throw new ValidationError('name', 'an image reference is required')
    const ref = parseReference(params.name, 'name')
    const name = formatReference(ref)
    const platform = params.platform === undefined ? this.platform : parsePlatform(params.platform, 'platform')
    const tags = validateTags(params.tags, 'tags')
    const creds = params.credentials
    if (creds !== undefined && (typeof creds !== 'object' || creds === null)) throw new ValidationError('credentials', 'must be an object')
    const credentialsKey = creds ? JSON.stringify([creds.username, creds.password, creds.registryToken]) : ''
    const existing = this.jobs.get(name)
    if (existing && (existing.status !== 'ready' && existing.status !== 'failed')) {
      if (existing.platform !== formatPlatform(platform) || existing.credentialsKey !== credentialsKey) {
        throw new ConflictError(`a pull of ${name} is already in flight with a different platform or credentials`, { field: 'name' })
      }
      return existing
    }
    const job: Job = {
      name,
      platform: formatPlatform(platform),
      credentialsKey,
      status: 'pending',
      digest: '',
      error: null,
      tags,
      createdAt: new Date().toISOString(),
      queued: false,
      promise: Promise.resolve(undefined as unknown as Image),
    }
    const override = creds && (creds.username !== undefined || creds.registryToken !== undefined)
      ? { ...(creds.username !== undefined ? { username: creds.username, password: creds.password ?? '' } : {}), ...(creds.registryToken ? { token: creds.registryToken } : {}) }
      : undefined
    job.promise = this.runJob(job, ref, platform, override, opts)
    job.promise.then(
      () => this.#settled.emit({ name, status: 'ready' }),
      (err: unknown) => this.#settled.emit({ name, status: 'failed', error: errorMessage(err) }),
    )
    this.jobs.set(name, job)
    return job
  }

  readonly #settled = new Listeners<PullSettled>((err) => this.logger.warn('an onPullSettled listener threw', { error: errorMessage(err) }))

  /**
   * Calls `listener` as each pull this manager starts ends, ready or failed (metrics, a queue of
   * follow-up work); `create` itself answers before that. Returns the unsubscribe. A listener
   * must not throw (a throw is logged).
   */
  onPullSettled(listener: (e: PullSettled) => void): () => void {
    return this.#settled.add(listener)
  }

  private async runJob(job: Job, ref: ImageReference, platform: Platform, creds: RegistryCredentials | undefined, opts: PullOptions): Promise<Image> {
    const client = creds ? this.makeClient(creds) : this.client
    const source: ImageSource = ref.kind === 'oci-layout' ? new LayoutSource(ref) : new RegistrySource(client, ref)
    const ctx: PullContext = {
      store: this.store,
      diskFormat: this.format,
      concurrency: this.opts.downloadConcurrency ?? 3,
      maxUnpackedBytes: this.opts.maxUnpackedBytes ?? 64 * 1024 ** 3,
      ...(opts.signal ? { signal: opts.signal } : {}),
      onProgress: (p) => {
        if (p.phase === 'downloading' || p.phase === 'resolving') job.status = 'pulling'
        else job.status = 'converting'
        opts.onProgress?.({ ...p, name: job.name })
      },
      acquireBuildSlot: () => this.acquireBuildSlot(job),
    }
    try {
      job.status = 'pulling'
      const resolved = await resolve(ctx, source, platform)
      job.digest = resolved.manifestDigest
      let record = await this.store.getRecord(resolved.manifestDigest)
      if (!record) {
        // One build per digest, across names and processes; look again once we hold the lock.
        record = await withFileLock(this.store.lockPath(resolved.manifestDigest), async () => {
          return (await this.store.getRecord(resolved.manifestDigest)) ?? build(ctx, source, platform, resolved, resolved.fetched)
        }, { timeoutMs: 60 * 60_000 })
      }
      const ready = record
      await this.store.withStoreLock(async () => {
        await saveManifests(this.store, resolved.fetched)
        const previous = await this.store.getRef(job.name)
        await this.store.putRef({
          name: job.name,
          digest: ready.digest,
          topDigest: resolved.topDigest,
          platform: ready.platform,
          tags: Object.keys(job.tags).length ? job.tags : (previous?.tags ?? {}),
          createdAt: previous?.digest === ready.digest ? previous.createdAt : ready.createdAt,
        })
      })
      job.status = 'ready'
      this.jobs.delete(job.name)
      return this.toImage((await this.store.getRef(job.name))!, ready)
    } catch (err) {
      job.status = 'failed'
      job.error = err instanceof Error ? err.message : String(err)
      this.logger.warn('image pull failed', { name: job.name, error: job.error })
      throw err
    } finally {
      if (client !== this.client) await client.close()
    }
  }

  private acquireBuildSlot(job: Job): Promise<() => void> {
    const limit = Math.max(1, this.opts.maxConcurrentBuilds ?? 1)
    const release = (): void => {
      this.buildsRunning--
      this.buildQueue.shift()?.()
    }
    if (this.buildsRunning < limit) {
      this.buildsRunning++
      return Promise.resolve(release)
    }
    job.queued = true
    return new Promise((resolveSlot) => {
      this.buildQueue.push(() => {
        job.queued = false
        this.buildsRunning++
        resolveSlot(release)
      })
    })
  }

  private snapshot(job: Job): Image {
    const queued = [...this.jobs.values()].filter((j) => j.queued)
    const position = job.queued ? queued.indexOf(job) + 1 : null
    return {
      name: job.name,
      digest: job.digest,
      platform: job.platform,
      status: job.status,
      queuePosition: position,
      error: job.error,
      sizeBytes: null,
      entrypoint: null,
      cmd: null,
      env: {},
      tags: job.tags,
      workingDir: null,
      createdAt: job.createdAt,
    }
  }

  private toImage(ref: RefRecord, record: ImageRecord): Image {
    return {
      name: ref.name,
      digest: record.digest,
      platform: record.platform,
      status: 'ready',
      queuePosition: null,
      error: null,
      sizeBytes: record.disk.sizeBytes,
      entrypoint: record.config.entrypoint,
      cmd: record.config.cmd,
      env: record.config.env,
      tags: ref.tags,
      workingDir: record.config.workingDir,
      createdAt: ref.createdAt,
    }
  }

  private normalize(name: string): string {
    return formatReference(parseReference(name, 'name'))
  }

  /** The image by name (any form of the reference); an in-flight or failed pull shows its status. */
  /**
   * Makes the boot template of `image` for instances of `shape` ahead of time (pulling the image if
   * needed), so that even the first create of that shape restores instead of booting the kernel.
   */
  async prepare(image: string, shape: TemplateShape = {}, opts: { signal?: AbortSignal } = {}): Promise<Template> {
    if (!this.opts.prepareTemplate) throw new NotSupportedError('prepare: this image manager has no instances to boot a template with', { field: 'image' })
    return this.opts.prepareTemplate(image, shape, opts.signal)
  }

  async get(name: string): Promise<Image> {
    const key = this.normalize(name)
    const job = this.jobs.get(key)
    if (job && job.status !== 'ready') return this.snapshot(job)
    const ref = await this.store.getRef(key)
    const record = ref && (await this.store.getRecord(ref.digest))
    if (!ref || !record) throw new NotFoundError(`image ${key} not found`, { field: 'name' })
    return this.toImage(ref, record)
  }

  async list(filter: { tags?: Record<string, string> } = {}): Promise<Image[]> {
    const out = new Map<string, Image>()
    for (const ref of await this.store.listRefs()) {
      const record = await this.store.getRecord(ref.digest)
      if (record) out.set(ref.name, this.toImage(ref, record))
    }
    for (const job of this.jobs.values()) if (job.status !== 'ready') out.set(job.name, this.snapshot(job))
    return [...out.values()].filter((i) => matchesTags(i.tags, filter.tags)).sort((a, b) => a.name.localeCompare(b.name))
  }

  /** Removes the name; the disk and blobs go too unless another name or an instance still uses them. */
  async delete(name: string): Promise<void> {
    const key = this.normalize(name)
    const job = this.jobs.get(key)
    if (job && job.status !== 'ready' && job.status !== 'failed') throw new ConflictError(`image ${key} is being pulled`, { field: 'name' })
    const ref = await this.store.getRef(key)
    if (!ref) {
      if (job) {
        this.jobs.delete(key)
        return
      }
      throw new NotFoundError(`image ${key} not found`, { field: 'name' })
    }
    const inUse = (await this.opts.inUse?.()) ?? new Set<string>()
    const last = await this.store.withStoreLock(async () => {
      const others = (await this.store.listRefs()).filter((r) => r.name !== key && r.digest === ref.digest)
      if (others.length === 0 && inUse.has(ref.digest)) {
        throw new ImageError('image_in_use', `image ${key} is used by an instance; delete the instance first`)
      }
      await this.store.deleteRef(key)
      await this.store.gc(inUse)
      return others.length === 0
    })
    if (last) await this.opts.removed?.(ref.digest).catch((err: unknown) => this.logger.warn('removing what was made from a deleted image failed', { digest: ref.digest, error: errorMessage(err) }))
    this.jobs.delete(key)
  }

  /** The ready image behind a name, with the path of its disk, for instances. */
  async resolveReady(name: string): Promise<{ image: Image; record: ImageRecord; diskPath: string }> {
    const image = await this.get(name)
    if (image.status !== 'ready') throw new ConflictError(`image ${image.name} is ${image.status}`, { field: 'image' })
    const record = (await this.store.getRecord(image.digest))!
    return { image, record, diskPath: this.store.diskPath(record) }
  }
}
