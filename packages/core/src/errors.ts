/**
 * Error codes of @hypeman-ts/core, on the shared classes of @hypeman-ts/common.
 * Callers match on `code`; the message is for humans.
 */
import { CodedError } from '@hypeman-ts/common'

export type ImageErrorCode =
  | 'image_not_found' // the registry or layout has no such repository, tag, digest or platform
  | 'invalid_platform'
  | 'registry_unauthorized' // credentials missing or refused
  | 'registry_rate_limited'
  | 'registry_error' // the registry answered something we cannot use (5xx, bad JSON, ...)
  | 'digest_mismatch' // content did not hash to the digest that named it
  | 'unsupported_media_type'
  | 'unsafe_layer' // a layer tried to write outside its root, or is malformed
  | 'image_build_failed'
  | 'image_in_use'

export class ImageError extends CodedError<ImageErrorCode>() {}

export type EgressEventsErrorCode =
  | 'events_overflow' // a reader of hm.egress.events() fell further behind than maxBuffered

export class EgressEventsError extends CodedError<EgressEventsErrorCode>() {}

export type InstanceLookupErrorCode =
  | 'ambiguous' // an id prefix that more than one instance's id starts with (hypeman's 409)

export class InstanceLookupError extends CodedError<InstanceLookupErrorCode>() {}
