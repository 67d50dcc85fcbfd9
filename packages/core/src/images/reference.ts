/**
 * Image references, normalised the way docker and containerd do it:
 * `alpine` → `docker.io/library/alpine:latest`, `localhost:5000/x@sha256:…`, `ghcr.io/o/r:tag@sha256:…`.
 * A local OCI image layout is named with skopeo's transport syntax: `oci:/path/to/layout[:ref]`.
 */
import { isAbsolute } from 'node:path'
import { ValidationError } from '@hypeman-ts/common'

export const DEFAULT_REGISTRY = 'docker.io'
const LEGACY_REGISTRY = 'index.docker.io'

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/
const DOMAIN =
  /^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$/
const TAG = /^[\w][\w.-]{0,127}$/
const DIGEST = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/
const MAX_NAME = 255

export interface RegistryReference {
  kind: 'registry'
  /** Host and optional port, e.g. `docker.io`, `localhost:5000`. */
  registry: string
  /** Repository path, e.g. `library/alpine`. */
  repository: string
  tag?: string
  digest?: string
}

export interface LayoutReference {
  kind: 'oci-layout'
  /** Absolute path of the OCI image layout directory. */
  path: string
  /** `org.opencontainers.image.ref.name` to select from index.json, or a digest. */
  ref: string
}

export type ImageReference = RegistryReference | LayoutReference

export function isDigest(value: string): boolean {
  return DIGEST.test(value)
}

/** The manifest reference to fetch: the digest when there is one (it pins the content), else the tag. */
export function manifestRef(ref: RegistryReference): string {
  return ref.digest ?? ref.tag ?? 'latest'
}

export function formatReference(ref: ImageReference): string {
  if (ref.kind === 'oci-layout') return `oci:${ref.path}:${ref.ref}`
  let s = `${ref.registry}/${ref.repository}`
  if (ref.tag) s += `:${ref.tag}`
  if (ref.digest) s += `@${ref.digest}`
  return s
}

/** The same image addressed by digest only. */
export function withDigest(ref: RegistryReference, digest: string): RegistryReference {
  return { kind: 'registry', registry: ref.registry, repository: ref.repository, digest }
}

export function parseReference(input: unknown, field = 'image'): ImageReference {
  if (typeof input !== 'string' || input.trim() === '') {
    throw new ValidationError(field, 'an image reference is required (e.g. "docker.io/library/alpine:latest")')
  }
  const text = input.trim()
  if (text.startsWith('oci:')) return parseLayoutReference(text.slice(4), field)
  return parseRegistryReference(text, field)
}

function parseLayoutReference(rest: string, field: string): LayoutReference {
  // `oci:/path:ref`: the ref is after the last colon, unless that colon belongs to a digest.
  let path = rest
  let ref = 'latest'
  const digestAt = rest.search(/:sha(256|512):[a-f0-9]+$/)
  const colon = digestAt >= 0 ? digestAt : rest.lastIndexOf(':')
  if (colon > 0 && !rest.slice(colon + 1).includes('/')) {
    path = rest.slice(0, colon)
    ref = rest.slice(colon + 1)
  }
  if (!isAbsolute(path)) throw new ValidationError(field, `OCI layout path must be absolute: "oci:${rest}"`)
  if (ref === '' || (!TAG.test(ref) && !isDigest(ref) && !/^[\w][\w.:/-]*$/.test(ref))) {
    throw new ValidationError(field, `"${ref}" is not a valid OCI layout reference name`)
  }
  return { kind: 'oci-layout', path, ref }
}

function parseRegistryReference(text: string, field: string): RegistryReference {
  if (text.length > MAX_NAME + 72 + 129) throw new ValidationError(field, 'reference is too long')
  let rest = text
  let digest: string | undefined
  const at = rest.indexOf('@')
  if (at >= 0) {
    digest = rest.slice(at + 1)
    rest = rest.slice(0, at)
    if (!isDigest(digest)) throw new ValidationError(field, `"${digest}" is not a valid digest (expected sha256:<64 hex>)`)
  }
  let tag: string | undefined
  const lastSlash = rest.lastIndexOf('/')
  const lastColon = rest.lastIndexOf(':')
  if (lastColon > lastSlash) {
    tag = rest.slice(lastColon + 1)
    rest = rest.slice(0, lastColon)
    if (!TAG.test(tag)) throw new ValidationError(field, `"${tag}" is not a valid tag`)
  }

  let registry = DEFAULT_REGISTRY
  let repository = rest
  const slash = rest.indexOf('/')
  if (slash >= 0) {
    const first = rest.slice(0, slash)
    if (/[.:]/.test(first) || first === 'localhost' || first.toLowerCase() !== first) {
      registry = first
      repository = rest.slice(slash + 1)
    }
  }
  if (!DOMAIN.test(registry)) throw new ValidationError(field, `"${registry}" is not a valid registry host`)
  if (registry === LEGACY_REGISTRY) registry = DEFAULT_REGISTRY
  if (registry === DEFAULT_REGISTRY && !repository.includes('/')) repository = `library/${repository}`
  if (repository === '') throw new ValidationError(field, `"${text}" has no repository name`)
  for (const component of repository.split('/')) {
    if (!PATH_COMPONENT.test(component)) {
      const hint = component.toLowerCase() !== component ? ' (repository names must be lowercase)' : ''
      throw new ValidationError(field, `"${text}" is not a valid image reference${hint}`)
    }
  }
  if (`${registry}/${repository}`.length > MAX_NAME) throw new ValidationError(field, 'repository name is longer than 255 characters')
  if (!tag && !digest) tag = 'latest'
  return { kind: 'registry', registry, repository, ...(tag ? { tag } : {}), ...(digest ? { digest } : {}) }
}

/** Loopback registries are spoken to over plain HTTP, as Docker does. */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registry.startsWith('[') ? registry.slice(1, registry.indexOf(']')) : registry.split(':')[0]!
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host)
}
