/**
 * One pull: resolve the reference to a platform manifest, and unless the cache already has that
 * digest, download the config and layers (verified, bounded concurrency), apply the layers in
 * order onto a fresh root, build the read-only disk and publish it atomically.
 */
import { link, mkdir, rm } from 'node:fs/promises'
import { createReadStream } from 'node:fs'
import { join } from 'node:path'
import { throwIfAborted, writeFileAtomic } from '@hypeman-ts/common'
import { ImageError } from '../errors.js'
import { buildDisk, type DiskFormat } from './disk.js'
import {
  formatPlatform,
  layerCompression,
  parseImageConfig,
  parseManifest,
  selectPlatform,
  type Descriptor,
  type ImageManifest,
  type Platform,
} from './manifest.js'
import type { FetchedManifest } from './registry.js'
import type { ImageSource } from './source.js'
import type { ImageRecord, ImageStore } from './store.js'
import { decompress, LayerApplier, sniffCompression } from './unpack.js'

export type PullPhase = 'resolving' | 'downloading' | 'unpacking' | 'building'

export interface PullProgress {
  phase: PullPhase
  /** Layer bytes downloaded so far and in all (layers already cached count as done). */
  bytesDone: number
  bytesTotal: number
  /** During unpacking: which layer, 1-based. */
  layer?: number
  layers?: number
}

export interface PullContext {
  store: ImageStore
  diskFormat: DiskFormat
  /** Layers downloaded at once. */
  concurrency: number
  maxUnpackedBytes?: number
  signal?: AbortSignal
  onProgress?: (p: PullProgress) => void
  /** Called before the unpack+build phase; resolves when a build slot is free. */
  acquireBuildSlot?: () => Promise<() => void>
}

export interface Resolved {
  topDigest: string
  manifestDigest: string
  manifest: ImageManifest
}

/** A manifest from the store when we have its bytes (verified on the way in), else from the source. */
async function manifestFor(ctx: PullContext, source: ImageSource, digest: string, top: boolean): Promise<FetchedManifest> {
  const cached = await ctx.store.readBlob(digest)
  if (cached) return { bytes: cached, digest, mediaType: undefined }
  return top ? source.getTop(ctx.signal) : source.getManifest(digest, ctx.signal)
}

/** Resolves a reference to the manifest for `platform`, touching the network as little as it can. */
export async function resolve(ctx: PullContext, source: ImageSource, platform: Platform): Promise<Resolved & { fetched: FetchedManifest[] }> {
  ctx.onProgress?.({ phase: 'resolving', bytesDone: 0, bytesTotal: 0 })
  const fetched: FetchedManifest[] = []
  const head = await source.headDigest(ctx.signal)
  let top: FetchedManifest
  if (head && (await ctx.store.hasBlob(head))) top = await manifestFor(ctx, source, head, true)
  else {
    top = await source.getTop(ctx.signal)
    fetched.push(top)
  }
  let parsed = parseManifest(top.bytes, top.mediaType)
  let manifestDigest = top.digest
  if (parsed.kind === 'index') {
    const desc = selectPlatform(parsed, platform)
    const m = await manifestFor(ctx, source, desc.digest, false)
    if (m.digest !== desc.digest) throw new ImageError('digest_mismatch', `manifest ${desc.digest} hashed to ${m.digest}`)
    if (!(await ctx.store.hasBlob(m.digest))) fetched.push(m)
    parsed = parseManifest(m.bytes, desc.mediaType)
    manifestDigest = desc.digest
    if (parsed.kind !== 'manifest') throw new ImageError('registry_error', `index entry ${desc.digest} is not an image manifest`)
  }
  return { topDigest: top.digest, manifestDigest, manifest: parsed, fetched }
}

/** Downloads what the cache lacks and builds the image; returns its record (already published). */
export async function build(ctx: PullContext, source: ImageSource, platform: Platform, resolved: Resolved, fetched: FetchedManifest[]): Promise<ImageRecord> {
  const { store } = ctx
  const tmp = await store.makeTmpDir()
  try {
    const manifest = resolved.manifest
    for (const l of manifest.layers) layerCompression(l) // refuse unknown layer types before downloading anything
    const configBytes = (await store.readBlob(manifest.config.digest)) ?? (await source.getBlobBytes(manifest.config, ctx.signal))
    const config = parseImageConfig(configBytes)
    if (config.os !== platform.os || config.architecture !== platform.architecture) {
      throw new ImageError('image_not_found', `image is ${config.os}/${config.architecture}, not ${formatPlatform(platform)}`)
    }

    // Layers: reuse what the store holds (hardlinked into tmp so a GC cannot pull them away),
    // download the rest, several at once.
    const layerFiles: string[] = []
    const missing: { desc: Descriptor; file: string }[] = []
    const bytesTotal = manifest.layers.reduce((n, l) => n + l.size, 0)
    let bytesDone = 0
    await mkdir(join(tmp, 'blobs'))
    for (const [i, desc] of manifest.layers.entries()) {
      const file = join(tmp, 'blobs', `${i}`)
      layerFiles.push(file)
      try {
        await link(store.blobPath(desc.digest), file)
        bytesDone += desc.size
      } catch {
        missing.push({ desc, file })
      }
    }
    const report = (): void => ctx.onProgress?.({ phase: 'downloading', bytesDone, bytesTotal })
    report()
    const queue = [...missing]
    const worker = async (): Promise<void> => {
      for (let job = queue.shift(); job; job = queue.shift()) {
        throwIfAborted(ctx.signal, 'image.download')
        await source.fetchBlob(job.desc, job.file, {
          signal: ctx.signal,
          onBytes: (n) => {
            bytesDone += n
            report()
          },
        })
      }
    }
    await Promise.all(Array.from({ length: Math.max(1, Math.min(ctx.concurrency, missing.length)) }, worker))

    const release = ctx.acquireBuildSlot ? await ctx.acquireBuildSlot() : () => {}
    let diskSize: number
    try {
      const root = join(tmp, 'rootfs')
      await mkdir(root, { mode: 0o755 })
      const applier = new LayerApplier(root)
      for (const [i, desc] of manifest.layers.entries()) {
        throwIfAborted(ctx.signal, 'image.unpack')
        ctx.onProgress?.({ phase: 'unpacking', bytesDone, bytesTotal, layer: i + 1, layers: manifest.layers.length })
        const file = layerFiles[i]!
        const compression = await sniffCompression(file, layerCompression(desc))
        await applier.apply(decompress(createReadStream(file), compression, ctx.signal), {
          ...(ctx.signal ? { signal: ctx.signal } : {}),
          ...(ctx.maxUnpackedBytes ? { maxBytes: ctx.maxUnpackedBytes } : {}),
        })
      }
      ctx.onProgress?.({ phase: 'building', bytesDone, bytesTotal })
      const diskFile = `rootfs.${ctx.diskFormat}`
      const disk = join(tmp, 'image')
      await mkdir(disk)
      diskSize = await buildDisk(ctx.diskFormat, root, join(disk, diskFile), { usage: applier.usage, ...(ctx.signal ? { signal: ctx.signal } : {}) })
      const record: ImageRecord = {
        digest: resolved.manifestDigest,
        platform: formatPlatform({ os: config.os, architecture: config.architecture, ...(config.variant ? { variant: config.variant } : {}) }),
        config,
        configDigest: manifest.config.digest,
        layers: manifest.layers,
        disk: { format: ctx.diskFormat, file: diskFile, sizeBytes: diskSize },
        createdAt: new Date().toISOString(),
      }
      await store.withStoreLock(async () => {
        for (const { desc, file } of missing) await store.commitBlob(file, desc.digest)
        if (!(await store.hasBlob(manifest.config.digest))) await writeFileAtomic(store.blobPath(manifest.config.digest), configBytes)
        await saveManifests(store, fetched)
        await store.commitDisk(disk, record)
      })
      return record
    } finally {
      release()
    }
  } finally {
    // The unpacked tree is thousands of files: remove it behind the caller's back (a crash
    // leaves it to the reaping of tmp/ at the next open).
    void rm(tmp, { recursive: true, force: true }).catch(() => {})
  }
}

export async function saveManifests(store: ImageStore, fetched: FetchedManifest[]): Promise<void> {
  for (const m of fetched) {
    if (!(await store.hasBlob(m.digest))) await writeFileAtomic(store.blobPath(m.digest), m.bytes)
  }
}
