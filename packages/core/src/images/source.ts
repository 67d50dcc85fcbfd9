/**
 * Where image content comes from: a registry (over the distribution protocol) or a local OCI
 * image layout directory. The pull pipeline only speaks this interface.
 */
import { createReadStream, createWriteStream } from 'node:fs'
import { readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { ImageError } from '../errors.js'
import type { Descriptor } from './manifest.js'
import { MAX_MANIFEST_BYTES } from './manifest.js'
import { type LayoutReference, type RegistryReference, isDigest, manifestRef } from './reference.js'
import { DigestStream, type FetchedManifest, type RegistryClient, sha256, verify } from './registry.js'

export interface ImageSource {
  /** The digest the reference points at now (index or manifest), cheaply if the source can. */
  headDigest(signal?: AbortSignal): Promise<string | null>
  /** The manifest (or index) the reference points at. */
  getTop(signal?: AbortSignal): Promise<FetchedManifest>
  getManifest(digest: string, signal?: AbortSignal): Promise<FetchedManifest>
  getBlobBytes(desc: Descriptor, signal?: AbortSignal): Promise<Buffer>
  /** Copies a blob to `dest`, verified; `dest` does not exist after a failure. */
  fetchBlob(desc: Descriptor, dest: string, opts: { signal?: AbortSignal; onBytes?: (n: number) => void }): Promise<void>
}

export class RegistrySource implements ImageSource {
  constructor(
    private readonly client: RegistryClient,
    private readonly ref: RegistryReference,
  ) {}

  async headDigest(signal?: AbortSignal): Promise<string | null> {
    if (this.ref.digest) return this.ref.digest
    return this.client.headManifest(this.ref.registry, this.ref.repository, manifestRef(this.ref), signal)
  }

  getTop(signal?: AbortSignal): Promise<FetchedManifest> {
    return this.client.getManifest(this.ref.registry, this.ref.repository, manifestRef(this.ref), signal)
  }

  getManifest(digest: string, signal?: AbortSignal): Promise<FetchedManifest> {
    return this.client.getManifest(this.ref.registry, this.ref.repository, digest, signal)
  }

  getBlobBytes(desc: Descriptor, signal?: AbortSignal): Promise<Buffer> {
    return this.client.getBlobBytes(this.ref.registry, this.ref.repository, desc, signal)
  }

  fetchBlob(desc: Descriptor, dest: string, opts: { signal?: AbortSignal; onBytes?: (n: number) => void }): Promise<void> {
    return this.client.downloadBlob(this.ref.registry, this.ref.repository, desc, dest, opts)
  }
}

/** An OCI image layout directory (the `oci:` transport of skopeo/umoci), for offline use. */
export class LayoutSource implements ImageSource {
  constructor(private readonly ref: LayoutReference) {}

  private blobPath(digest: string): string {
    const [alg, hex] = digest.split(':') as [string, string]
    return join(this.ref.path, 'blobs', alg, hex)
  }

  private async index(): Promise<{ manifests?: Descriptor[] }> {
    let layoutFile: string
    try {
      layoutFile = await readFile(join(this.ref.path, 'oci-layout'), 'utf8')
    } catch {
      throw new ImageError('image_not_found', `${this.ref.path} is not an OCI image layout (no oci-layout file)`)
    }
    const version = (JSON.parse(layoutFile) as { imageLayoutVersion?: string }).imageLayoutVersion
    if (version !== '1.0.0') throw new ImageError('unsupported_media_type', `OCI layout version ${version} is not supported`)
    return JSON.parse(await readFile(join(this.ref.path, 'index.json'), 'utf8')) as { manifests?: Descriptor[] }
  }

  private async topDescriptor(): Promise<Descriptor> {
    const index = await this.index()
    const found = (index.manifests ?? []).find((m) =>
      isDigest(this.ref.ref) ? m.digest === this.ref.ref : m.annotations?.['org.opencontainers.image.ref.name'] === this.ref.ref,
    )
    if (!found) throw new ImageError('image_not_found', `no image named "${this.ref.ref}" in the OCI layout ${this.ref.path}`)
    return found
  }

  async headDigest(): Promise<string | null> {
    return (await this.topDescriptor()).digest
  }

  async getTop(): Promise<FetchedManifest> {
    const d = await this.topDescriptor()
    const m = await this.getManifest(d.digest)
    return { ...m, mediaType: d.mediaType }
  }

  async getManifest(digest: string): Promise<FetchedManifest> {
    const bytes = await this.readVerified({ mediaType: '', digest, size: MAX_MANIFEST_BYTES }, true)
    return { bytes, digest, mediaType: undefined }
  }

  getBlobBytes(desc: Descriptor): Promise<Buffer> {
    return this.readVerified(desc, false)
  }

  /** A whole blob into memory; `sizeIsLimit` when the size is a bound (manifests we have no descriptor for). */
  private async readVerified(desc: Descriptor, sizeIsLimit: boolean): Promise<Buffer> {
    let bytes: Buffer
    try {
      bytes = await readFile(this.blobPath(desc.digest))
    } catch {
      throw new ImageError('image_not_found', `blob ${desc.digest} is missing from the OCI layout ${this.ref.path}`)
    }
    if (sizeIsLimit ? bytes.length > desc.size : bytes.length !== desc.size) {
      throw new ImageError('digest_mismatch', `blob ${desc.digest} in ${this.ref.path} has ${bytes.length} bytes, expected ${desc.size}`)
    }
    if (desc.digest.startsWith('sha256:') && sha256(bytes) !== desc.digest) {
      throw new ImageError('digest_mismatch', `blob ${desc.digest} in ${this.ref.path} does not match its digest`)
    }
    return bytes
  }

  async fetchBlob(desc: Descriptor, dest: string, opts: { signal?: AbortSignal; onBytes?: (n: number) => void }): Promise<void> {
    const check = new DigestStream(desc.digest.split(':')[0]!, desc.size)
    check.on('data', (c: Buffer) => opts.onBytes?.(c.length))
    try {
      await pipeline(createReadStream(this.blobPath(desc.digest)), check, createWriteStream(dest), { signal: opts.signal })
      verify(desc, check)
    } catch (err) {
      await rm(dest, { force: true })
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new ImageError('image_not_found', `blob ${desc.digest} is missing from the OCI layout ${this.ref.path}`)
      }
      throw err
    }
  }
}
