/**
 * From an error to the spec's `Error` body (`{code, message, details?}`) and its HTTP status:
 * one table, so the code a client branches on and the status it sees cannot drift apart.
 *
 * Codes are core's own (`not_found`, `invalid_input`, `conflict`, `ambiguous` for an id prefix
 * of several instances, ...), with one exception taken from hypeman so its clients can branch
 * the same way: a wrong-state conflict is `invalid_state`.
 */
import { HypemanError } from '@hypeman-ts/common'

const STATUS: Record<string, number> = {
  invalid_input: 400,
  bad_request: 400,
  invalid_platform: 400,
  unsupported_media_type: 400,
  unsafe_layer: 400,
  unsafe_archive: 400,
  archive_too_large: 400,
  gpu_profile_not_found: 400,
  iommu_unavailable: 400,
  unauthorized: 401,
  body_too_large: 413,
  not_found: 404,
  image_not_found: 404,
  volume_not_found: 404,
  device_not_found: 404,
  conflict: 409,
  invalid_state: 409,
  ambiguous: 409,
  image_in_use: 409,
  volume_in_use: 409,
  volume_busy: 409,
  volume_exists: 409,
  device_exists: 409,
  device_in_use: 409,
  iommu_group_conflict: 409,
  gpu_profile_exhausted: 409, // hypeman's 409 for insufficient resources
  agent_disabled: 409,
  address_pool_exhausted: 409, // hypeman's 409 for insufficient resources
  registry_rate_limited: 429,
  not_supported: 501,
  vfio_unavailable: 501, // this host cannot do it as it is set up
  not_implemented: 501,
  registry_unauthorized: 502,
  registry_error: 502,
  digest_mismatch: 502,
  agent_unreachable: 503,
  shutting_down: 503,
  timeout: 504,
}

export interface WireError {
  status: number
  body: { code: string; message: string; details?: { code: string; message: string }[] }
  /** Set on every 409: all of ours are deterministic, and the SDK retries a 409 unless told not to. */
  headers: Record<string, string>
}

export function toWireError(err: unknown): WireError {
  if (!(err instanceof HypemanError)) {
    return { status: 500, body: { code: 'internal_error', message: 'internal error' }, headers: {} }
  }
  const code = err.code === 'conflict' && err.field === 'state' ? 'invalid_state' : err.code
  const status = STATUS[code] ?? 500
  const body = err.toWire()
  body.code = code
  if (err.field) body.details = [{ code: 'field', message: wireField(err.field) }]
  return { status, body, headers: status === 409 ? { 'x-should-retry': 'false' } : {} }
}

/** A 501 for what the spec has and this server does not do (yet): never a silent fake. */
export function notImplemented(what: string): HypemanError {
  return new HypemanError('not_implemented', `${what} is not implemented by hypeman-ts yet`)
}

/**
 * Core names fields in camelCase (`network.bandwidthUpload`); clients of the API wrote
 * snake_case. Keys of user maps (`env.myVar`, `tags.someKey`) are left as they were sent.
 */
export function wireField(field: string): string {
  const parts = field.split('.')
  const out: string[] = []
  for (const [i, p] of parts.entries()) {
    out.push(p.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`))
    if (['env', 'tags', 'credentials'].includes(p)) return [...out, ...parts.slice(i + 1)].join('.')
  }
  return out.join('.')
}
