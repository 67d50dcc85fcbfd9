/**
 * The egress proxy's error codes. Each one carries the HTTP status the proxy answers a client
 * with, so the code a caller branches on and the status a guest sees never drift apart.
 * Messages name hosts, sources and credential names; never a real secret value.
 */
import { CodedError, type HypemanErrorOptions } from '@hypeman-ts/common'

export type EgressErrorCode =
  | 'unregistered_source'
  | 'destination_blocked'
  | 'host_address_blocked'
  | 'port_blocked'
  | 'placeholder_blocked'
  | 'misdirected_request'
  | 'bad_request'
  | 'header_too_large'
  | 'dns_failed'
  | 'upstream_tls'
  | 'upstream_connect'
  | 'upstream_timeout'
  | 'upstream_failed'
  | 'ca_invalid'
  | 'listen_failed'
  | 'proxy_closed'

const STATUS: Record<EgressErrorCode, number> = {
  unregistered_source: 403,
  destination_blocked: 403,
  host_address_blocked: 403,
  port_blocked: 403,
  placeholder_blocked: 403,
  misdirected_request: 421,
  bad_request: 400,
  header_too_large: 431,
  dns_failed: 502,
  upstream_tls: 502,
  upstream_connect: 502,
  upstream_timeout: 504,
  upstream_failed: 502,
  ca_invalid: 500,
  listen_failed: 500,
  proxy_closed: 503,
}

export class EgressError extends CodedError<EgressErrorCode>() {
  /** The HTTP status a client of the proxy receives for this error. */
  readonly status: number

  constructor(code: EgressErrorCode, message: string, opts: HypemanErrorOptions = {}) {
    super(code, message, opts)
    this.status = STATUS[code]
  }
}

export function isEgressError(err: unknown, code?: EgressErrorCode): err is EgressError {
  return err instanceof EgressError && (code === undefined || err.code === code)
}
