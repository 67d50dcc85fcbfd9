/**
 * How a failed upstream exchange becomes one of the proxy's errors, for every path alike. The
 * fast path, the pool and the upgrade dial raise the proxy's own codes (upstreamTimeout,
 * upstreamClosed); undici's codes are read only where undici raised them (the general path), and
 * map to the same errors with the same words, so a guest cannot tell which path served it.
 */
import { EgressError } from './errors.js'

const TLS_VERIFY_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN',
  'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'ERR_TLS_CERT_ALTNAME_INVALID', 'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED', 'CERT_REJECTED',
  'INVALID_CA', 'PATH_LENGTH_EXCEEDED', 'INVALID_PURPOSE', 'HOSTNAME_MISMATCH', 'CERT_REVOKED',
])

const CONNECT_FAILURES = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'ETIMEDOUT'])

export type UpstreamPhase = 'connect' | 'headers' | 'body'

/** The upstream took longer than its limit to connect, to send the response head, or between body bytes. */
export function upstreamTimeout(host: string, port: number, phase: UpstreamPhase, cause?: unknown): EgressError {
  const where = `${host}:${port}`
  const message =
    phase === 'connect' ? `connecting to ${where} timed out` : phase === 'headers' ? `${where} sent no response headers in time` : `${where} stalled while sending the response body`
  return new EgressError('upstream_timeout', message, { ...(cause === undefined ? {} : { cause }), details: { host } })
}

/** The upstream closed its connection before the response (or, `midResponse`, its body) was complete. */
export function upstreamClosed(host: string, port: number, midResponse: boolean): EgressError {
  return new EgressError('upstream_failed', `upstream ${host}:${port} closed the connection ${midResponse ? 'mid-response' : 'without answering'}`, { details: { host } })
}

/** Names what went wrong upstream, in words a guest's developer can act on. */
export function upstreamError(err: unknown, host: string, port: number): EgressError {
  if (err instanceof EgressError) return err
  const e = err as NodeJS.ErrnoException & { reason?: string }
  const code = e?.code ?? ''
  const where = `${host}:${port}`
  if (TLS_VERIFY_CODES.has(code)) {
    return new EgressError('upstream_tls', `upstream ${where} presented a certificate that does not verify: ${code}: ${e.message}`, { cause: err, details: { host, tlsCode: code } })
  }
  if (code.startsWith('ERR_SSL') || code === 'ERR_TLS_HANDSHAKE_TIMEOUT' || (/SSL|TLS/.test(e?.message ?? '') && code === '')) {
    return new EgressError('upstream_tls', `TLS with upstream ${where} failed: ${e.message}`, { cause: err, details: { host, tlsCode: code } })
  }
  // undici's codes, from the general path's agents.
  if (code === 'UND_ERR_CONNECT_TIMEOUT') return upstreamTimeout(host, port, 'connect', err)
  if (code === 'UND_ERR_HEADERS_TIMEOUT') return upstreamTimeout(host, port, 'headers', err)
  if (code === 'UND_ERR_BODY_TIMEOUT') return upstreamTimeout(host, port, 'body', err)
  if (CONNECT_FAILURES.has(code)) return new EgressError('upstream_connect', `cannot connect to ${where}: ${code}`, { cause: err, details: { host } })
  return new EgressError('upstream_failed', `upstream ${where} failed: ${code ? `${code}: ` : ''}${e?.message ?? String(err)}`, { cause: err, details: { host } })
}
