/**
 * OCI / Docker schema-2 manifests and indexes: media types, validation of what a registry or
 * layout hands us, and platform selection from an index.
 */
import { ValidationError } from '@hypeman-ts/common'
import { ImageError } from '../errors.js'
import { isDigest } from './reference.js'

export const MediaType = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const

/** What we ask registries for, best first. */
export const MANIFEST_ACCEPT = [MediaType.ociIndex, MediaType.ociManifest, MediaType.dockerList, MediaType.dockerManifest]

export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024

export interface Descriptor {
  mediaType: string
  digest: string
  size: number
  urls?: string[]
  annotations?: Record<string, string>
  platform?: Platform
}

export interface Platform {
  os: string
  architecture: string
  variant?: string
}

export interface ImageManifest {
  kind: 'manifest'
  mediaType: string
  config: Descriptor
  layers: Descriptor[]
}

export interface ImageIndex {
  kind: 'index'
  mediaType: string
  manifests: Descriptor[]
}

export type Manifest = ImageManifest | ImageIndex

export type LayerCompression = 'gzip' | 'zstd' | 'none'

const LAYER_TYPES: Record<string, LayerCompression> = {
  'application/vnd.oci.image.layer.v1.tar': 'none',
  'application/vnd.oci.image.layer.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd': 'zstd',
  'application/vnd.oci.image.layer.nondistributable.v1.tar': 'none',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd': 'zstd',
  'application/vnd.docker.image.rootfs.diff.tar.gzip': 'gzip',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': 'gzip',
}

export function layerCompression(desc: Descriptor): LayerCompression {
  const c = LAYER_TYPES[desc.mediaType]
  if (!c) throw new ImageError('unsupported_media_type', `layer ${desc.digest} has unsupported media type ${desc.mediaType}`)
  return c
}

function fail(message: string): never {
  throw new ImageError('registry_error', `invalid manifest: ${message}`)
}

function parseDescriptor(value: unknown, where: string): Descriptor {
  if (!value || typeof value !== 'object') fail(`${where} is not an object`)
  const d = value as Record<string, unknown>
  if (typeof d.mediaType !== 'string') fail(`${where}.mediaType is missing`)
  if (typeof d.digest !== 'string' || !isDigest(d.digest)) fail(`${where}.digest is not a valid digest`)
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) fail(`${where}.size is not a size`)
  const out: Descriptor = { mediaType: d.mediaType, digest: d.digest, size: d.size }
  if (Array.isArray(d.urls)) out.urls = d.urls.filter((u): u is string => typeof u === 'string')
  if (d.annotations && typeof d.annotations === 'object') out.annotations = d.annotations as Record<string, string>
  if (d.platform && typeof d.platform === 'object') {
    const p = d.platform as Record<string, unknown>
    if (typeof p.os === 'string' && typeof p.architecture === 'string') {
      out.platform = { os: p.os, architecture: p.architecture, ...(typeof p.variant === 'string' ? { variant: p.variant } : {}) }
    }
  }
  return out
}

/**
 * Parses manifest bytes. `contentType` is what the server said; the document's own mediaType
 * wins when present (some registries send application/json).
 */
export function parseManifest(bytes: Buffer, contentType?: string): Manifest {
  let doc: Record<string, unknown>
  try {
    doc = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>
  } catch {
    fail('not JSON')
  }
  if (!doc || typeof doc !== 'object') fail('not an object')
  const declared = typeof doc.mediaType === 'string' ? doc.mediaType : contentType?.split(';')[0]?.trim()
  if (doc.schemaVersion === 1 || declared === MediaType.dockerSchema1 || declared === MediaType.dockerSchema1Signed) {
    throw new ImageError('unsupported_media_type', 'Docker schema 1 manifests are deprecated and not supported; push the image again with a current client')
  }
  if (doc.schemaVersion !== 2) fail(`schemaVersion ${String(doc.schemaVersion)} is not 2`)
  if (Array.isArray(doc.manifests)) {
    return {
      kind: 'index',
      mediaType: declared ?? MediaType.ociIndex,
      manifests: doc.manifests.map((m, i) => parseDescriptor(m, `manifests[${i}]`)),
    }
  }
  if (!Array.isArray(doc.layers)) fail('neither layers nor manifests')
  const config = parseDescriptor(doc.config, 'config')
  const layers = doc.layers.map((l, i) => parseDescriptor(l, `layers[${i}]`))
  return { kind: 'manifest', mediaType: declared ?? MediaType.ociManifest, config, layers }
}

const PLATFORM_RE = /^[a-z0-9]+\/[a-z0-9]+(\/[a-z0-9.]+)?$/

/** Parses "linux/amd64" or "linux/arm64/v8" (the spec's grammar); only linux on amd64/arm64 runs here. */
export function parsePlatform(input: unknown, field = 'platform'): Platform {
  if (typeof input !== 'string' || !PLATFORM_RE.test(input)) {
    throw new ValidationError(field, `${JSON.stringify(input)} is not a platform like "linux/amd64" or "linux/arm64/v8"`)
  }
  const [os, architecture, variant] = input.split('/') as [string, string, string | undefined]
  if (os !== 'linux' || (architecture !== 'amd64' && architecture !== 'arm64')) {
    throw new ImageError('invalid_platform', `platform "${input}" is not supported: only linux/amd64 and linux/arm64 images can run`, { field })
  }
  return { os, architecture, ...(variant ? { variant } : {}) }
}

export function formatPlatform(p: Platform): string {
  return p.variant ? `${p.os}/${p.architecture}/${p.variant}` : `${p.os}/${p.architecture}`
}

// arm64 images often omit their (only) variant v8; amd64 variants (v2, v3...) are compatible upward.
function normalizeVariant(p: Platform): string | undefined {
  if (p.architecture === 'arm64') return p.variant ?? 'v8'
  return p.variant
}

/** Picks the manifest for `want` from an index, as containerd's platform matcher does. */
export function selectPlatform(index: ImageIndex, want: Platform): Descriptor {
  const candidates = index.manifests.filter(
    (m) =>
      m.platform &&
      m.platform.os === want.os &&
      m.platform.architecture === want.architecture &&
      (m.mediaType === MediaType.ociManifest || m.mediaType === MediaType.dockerManifest),
  )
  const wantVariant = normalizeVariant(want)
  const exact = candidates.find((m) => normalizeVariant(m.platform!) === wantVariant)
  const chosen = exact ?? (want.variant ? undefined : candidates[0])
  if (!chosen) {
    const available = index.manifests
      .map((m) => (m.platform ? formatPlatform(m.platform) : null))
      .filter(Boolean)
      .join(', ')
    throw new ImageError('image_not_found', `no manifest for platform ${formatPlatform(want)} in the image index (available: ${available || 'none'})`)
  }
  return chosen
}

/** The parts of an image config (OCI or Docker) that instances use. */
export interface ImageConfig {
  architecture: string
  os: string
  variant?: string
  entrypoint: string[] | null
  cmd: string[] | null
  env: Record<string, string>
  workingDir: string | null
  user: string | null
  /** Layer diff IDs (digests of the uncompressed layers), in order. */
  diffIds: string[]
}

export function parseImageConfig(bytes: Buffer): ImageConfig {
  let doc: Record<string, unknown>
  try {
    doc = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>
  } catch {
    throw new ImageError('registry_error', 'invalid image config: not JSON')
  }
  const c = (doc.config ?? {}) as Record<string, unknown>
  const strings = (v: unknown): string[] | null =>
    Array.isArray(v) && v.every((x) => typeof x === 'string') ? (v as string[]) : null
  const env: Record<string, string> = {}
  for (const kv of strings(c.Env) ?? []) {
    const eq = kv.indexOf('=')
    if (eq > 0) env[kv.slice(0, eq)] = kv.slice(eq + 1)
  }
  const rootfs = (doc.rootfs ?? {}) as Record<string, unknown>
  return {
    architecture: typeof doc.architecture === 'string' ? doc.architecture : 'amd64',
    os: typeof doc.os === 'string' ? doc.os : 'linux',
    ...(typeof doc.variant === 'string' ? { variant: doc.variant } : {}),
    entrypoint: strings(c.Entrypoint),
    cmd: strings(c.Cmd),
    env,
    workingDir: typeof c.WorkingDir === 'string' && c.WorkingDir !== '' ? c.WorkingDir : null,
    user: typeof c.User === 'string' && c.User !== '' ? c.User : null,
    diffIds: strings(rootfs.diff_ids) ?? [],
  }
}
