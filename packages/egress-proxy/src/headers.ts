/**
 * Request and response header rewriting, as pure functions over header lists. Hop-by-hop
 * headers are dropped (RFC 9110 §7.6.1, including those the Connection header names), the
 * policy's headers are set, and placeholders elsewhere are swapped for real values on hosts
 * their credential names. Runs once per request, so it only looks things up.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http'
import { connectionOptions } from './http1.js'
import { PLACEHOLDER_PREFIX, scanPlaceholders } from './placeholders.js'
import type { CompiledCredential, CompiledPolicy, HostPlan } from './policy.js'

const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'proxy-authenticate',
  'transfer-encoding', 'upgrade', 'te', 'trailer', 'http2-settings', 'expect', 'host',
])

export interface RequestRewrite {
  /** Flat name/value list for the upstream request, `host` included. */
  headers: string[]
  /** Credentials whose real value went into the request. */
  injected: string[]
  /** Credentials whose placeholder was found towards a host they do not name (or over plain HTTP). */
  unmatched: CompiledCredential[]
  /** The guest sent a body: a Content-Length (passed on) or chunked framing (re-framed upstream). */
  hasBody: boolean
}

export interface RewriteOptions {
  /** The Host / :authority to send. */
  authority: string
  policy: CompiledPolicy | undefined
  /** The plan for the destination host; undefined over plain HTTP, where nothing is injected. */
  plan: HostPlan | undefined
  /** Keep Upgrade/Connection for a WebSocket handshake. */
  upgrade?: boolean
}

function connectionTokens(raw: readonly string[]): Set<string> | undefined {
  let tokens: Set<string> | undefined
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.length === 10 && raw[i]!.toLowerCase() === 'connection') {
      for (const token of connectionOptions(raw[i + 1]!) ?? []) (tokens ??= new Set()).add(token)
    }
  }
  return tokens
}

/**
 * Request headers that never carry a credential and that servers routinely send back: CORS
 * copies Origin into Access-Control-Allow-Origin and the requested headers into
 * Access-Control-Allow-Headers, tracing echoes request ids, error pages quote Referer, User-Agent
 * or Content-Type. A secret swapped into one would reach the guest in the response, so a
 * placeholder there stays as it is and counts as unmatched.
 */
const ECHOED_BACK = new Set([
  'origin', 'referer', 'user-agent', 'via', 'forwarded', 'x-forwarded-for', 'x-forwarded-host',
  'x-forwarded-proto', 'x-real-ip', 'x-request-id', 'x-correlation-id', 'traceparent', 'tracestate',
  'baggage', 'accept', 'accept-language', 'accept-encoding', 'content-type', 'content-language',
  'content-encoding', 'cache-control', 'pragma', 'range', 'if-match', 'if-none-match',
  'if-modified-since', 'if-unmodified-since', 'if-range', 'dnt',
])
function echoedBack(lower: string): boolean {
  return ECHOED_BACK.has(lower) || lower.startsWith('sec-') || lower.startsWith('access-control-')
}

/** Swaps this policy's placeholders in one header value; records credentials that do not apply. */
function swapPlaceholders(value: string, policy: CompiledPolicy, plan: HostPlan | undefined, out: RequestRewrite): string {
  let result = ''
  let last = 0
  scanPlaceholders(value, (token, at) => {
    const cred = policy.byPlaceholder.get(token)
    if (!cred) return
    const secret = plan?.swap.get(token)
    if (secret === undefined) {
      if (!out.unmatched.includes(cred)) out.unmatched.push(cred)
      return
    }
    result += value.slice(last, at) + secret
    last = at + token.length
    addOnce(out.injected, cred.name)
  })
  return last === 0 ? value : result + value.slice(last)
}

/** A policy has a handful of credentials: a list is cheaper than a Set built per request. */
function addOnce(list: string[], name: string): void {
  if (!list.includes(name)) list.push(name)
}

/**
 * Rewrites a guest request's headers (flat raw list, pseudo-headers excluded) for upstream.
 * HTTP/2 guests may split cookies over several fields; they are joined for HTTP/1.1 upstreams.
 */
export function rewriteRequestHeaders(raw: readonly string[], opts: RewriteOptions): RequestRewrite {
  const out: RequestRewrite = { headers: ['host', opts.authority], injected: [], unmatched: [], hasBody: false }
  const { policy, plan } = opts
  const extraHop = connectionTokens(raw)
  const headers = out.headers
  let cookies: string | undefined
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    let value = raw[i + 1]!
    const lower = name.toLowerCase()
    if (HOP_BY_HOP.has(lower)) {
      if (lower === 'transfer-encoding') out.hasBody = true
      else if (lower === 'te' && value.trim().toLowerCase() === 'trailers') headers.push('te', 'trailers')
      else if (opts.upgrade && lower === 'upgrade') headers.push(name, value)
      continue
    }
    if (extraHop?.has(lower)) continue
    if (lower === 'content-length' && value !== '0') out.hasBody = true
    if (plan?.setLower.has(lower)) continue
    if (policy && value.includes(PLACEHOLDER_PREFIX)) value = swapPlaceholders(value, policy, echoedBack(lower) ? undefined : plan, out)
    if (lower === 'cookie') {
      cookies = cookies === undefined ? value : `${cookies}; ${value}`
      continue
    }
    headers.push(name, value)
  }
  if (cookies !== undefined) headers.push('cookie', cookies)
  if (opts.upgrade) headers.push('connection', 'Upgrade')
  if (plan) {
    for (const s of plan.set) {
      headers.push(s.header, s.value)
      addOnce(out.injected, s.credential)
    }
  }
  return out
}

const RESPONSE_DROP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'http2-settings', 'te'])

/** The fields a response's Connection header names as hop-by-hop; the parser is http1.ts's, for the reason given there. */
function namedByConnection(connection: string | string[] | undefined): string[] | undefined {
  if (connection === undefined) return undefined
  return connectionOptions(typeof connection === 'string' ? connection : connection.join(','))
}

/** Response headers for the guest: hop-by-hop ones removed (HTTP/2 forbids them outright). */
export function rewriteResponseHeaders(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {}
  for (const key in headers) {
    if (RESPONSE_DROP.has(key)) continue
    const value = headers[key]
    if (value !== undefined) out[key] = value
  }
  for (const name of namedByConnection(headers.connection) ?? []) delete out[name]
  return out
}

/** The same for a raw name/value list, names as the upstream spelled them. */
export function rewriteRawResponseHeaders(raw: readonly string[]): string[] {
  let connection: string[] | undefined
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() === 'connection') (connection ??= []).push(raw[i + 1]!)
  const named = namedByConnection(connection)
  const out: string[] = []
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase()
    if (!RESPONSE_DROP.has(lower) && !named?.includes(lower)) out.push(raw[i]!, raw[i + 1]!)
  }
  return out
}
