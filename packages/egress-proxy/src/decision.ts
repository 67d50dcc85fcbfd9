/**
 * What the proxy does with one request, whichever path carries it (fast path, Node's server and
 * undici, an upgrade): the source's policy, where the request goes, whether it is refused, and
 * the headers it leaves with. It records nothing and writes nothing; the exchange's outcome
 * (src/outcome.ts) records the decision, so a refusal or an injection is counted and audited the
 * same way on every path.
 */
import { type Conn, entryOf, type ProxyContext } from './context.js'
import { EgressError } from './errors.js'
import { rewriteRequestHeaders, type RequestRewrite } from './headers.js'
import { hostForUrl, normalizeHost, splitHostPort } from './hosts.js'
import type { CompiledCredential } from './policy.js'

export interface Destination {
  scheme: 'http' | 'https'
  host: string
  port: number
  /** Origin-form request target. */
  path: string
  /** Host / :authority to send upstream. */
  authority: string
}

export type Decision =
  | { kind: 'forward'; dest: Destination; rewrite: RequestRewrite }
  | {
      kind: 'refuse'
      err: EgressError
      /** Where the request would have gone, when that was worked out before the refusal. */
      dest?: Destination
      /** The credentials whose placeholders made the policy block the request. */
      blocked?: CompiledCredential[]
    }

function authorityOf(host: string, port: number, scheme: 'http' | 'https'): string {
  const h = hostForUrl(host)
  return port === (scheme === 'https' ? 443 : 80) ? h : `${h}:${port}`
}

/**
 * Where a request goes. A tunnel or a transparent TLS connection has a fixed target; an
 * explicit-proxy request names it in its absolute URI; a transparent plain-HTTP request in
 * its Host header. The Host header never chooses where a secret goes on a TLS connection.
 */
function destinationOf(ctx: ProxyContext, conn: Conn, url: string, hostHeader: string | undefined): Destination | EgressError {
  const t = conn.target
  if (t) {
    const scheme = t.tls ? 'https' : 'http'
    let path = url
    if (!url.startsWith('/') && url !== '*') {
      try {
        const u = new URL(url)
        path = u.pathname + u.search
      } catch {
        return new EgressError('bad_request', 'the request target is neither a path nor an absolute URI')
      }
    }
    return { scheme, host: t.host, port: t.port, path, authority: hostHeader || authorityOf(t.host, t.port, scheme) }
  }
  if (conn.listener === 'explicit') {
    let u: URL
    try {
      u = new URL(url)
    } catch {
      return new EgressError('bad_request', 'this is a proxy: send an absolute URI (http://host/path) or use CONNECT')
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return new EgressError('bad_request', `the proxy does not forward ${u.protocol} URLs`)
    const host = normalizeHost(u.hostname)
    if (!host) return new EgressError('bad_request', 'the request URI has an invalid host')
    const scheme = u.protocol === 'https:' ? 'https' : 'http'
    const port = u.port ? Number(u.port) : scheme === 'https' ? 443 : 80
    return { scheme, host, port, path: u.pathname + u.search, authority: u.host }
  }
  const split = hostHeader ? splitHostPort(hostHeader) : null
  const host = split ? normalizeHost(split.host) : null
  if (!split || !host) return new EgressError('bad_request', 'a transparent plain-HTTP request needs a valid Host header')
  const port = split.port || ctx.transparentPorts.http
  return { scheme: 'http', host, port, path: url, authority: hostHeader! }
}

/**
 * Whether the Host header (or :authority) sent upstream names the destination's host. Ports are
 * not compared: a transparent connection's real port is not known (it is `transparentPorts`),
 * and front ends pick a site by name.
 */
function namesDestination(conn: Conn, dest: Destination): boolean {
  let seen = conn.authority
  if (seen === undefined || seen.raw !== dest.authority) seen = conn.authority = { raw: dest.authority, host: normalizeHost(dest.authority) }
  return seen.host === dest.host
}

/**
 * Methods whose response echoes the request back (RFC 9110 §9.3.8 TRACE, and TRACK, its IIS
 * twin): a real secret put in one would reach the guest in the response body, so they get none,
 * exactly as plain HTTP does. Compared case-insensitively, as some servers treat methods.
 */
const ECHOING_METHODS = new Set(['TRACE', 'TRACK'])

/** The decision for one request: forward it with these headers, or refuse it with this error. */
export function decide(ctx: ProxyContext, conn: Conn, method: string, url: string, hostHeader: string | undefined, raw: readonly string[], upgrade = false): Decision {
  const entry = entryOf(ctx, conn)
  if (!entry) return { kind: 'refuse', err: new EgressError('unregistered_source', `no policy is registered for source ${conn.source}`) }
  const dest = destinationOf(ctx, conn, url, hostHeader)
  if (dest instanceof EgressError) return { kind: 'refuse', err: dest }
  const policy = entry.policy
  const plan = dest.scheme === 'https' && !ECHOING_METHODS.has(method.toUpperCase()) ? policy.planFor(dest.host) : undefined
  if (plan && plan.credentials.length > 0 && !namesDestination(conn, dest)) {
    // Domain fronting: behind a shared front end (a CDN) the Host header, not the TLS name,
    // picks the site, so a secret for the connection's host would reach the site the guest named.
    const err = new EgressError(
      'misdirected_request',
      `the request names ${JSON.stringify(dest.authority)} but its connection goes to ${authorityOf(dest.host, dest.port, dest.scheme)}; a request that gets ${plan.credentials.join(', ')} must name the host it goes to`,
    )
    return { kind: 'refuse', err, dest }
  }
  const rewrite = rewriteRequestHeaders(raw, { authority: dest.authority, policy, plan, upgrade })
  if (rewrite.unmatched.length > 0 && policy.unmatchedPlaceholder === 'block') {
    const names = rewrite.unmatched.map((c) => c.name).join(', ')
    const err = new EgressError(
      'placeholder_blocked',
      `the request carries the placeholder of ${names} towards ${dest.scheme}://${dest.host}, which ${rewrite.unmatched.length > 1 ? 'those credentials do' : 'that credential does'} not name; this source's policy blocks such requests`,
    )
    return { kind: 'refuse', err, dest, blocked: rewrite.unmatched }
  }
  return { kind: 'forward', dest, rewrite }
}

/** The Host header of a raw header list, without building the parsed headers object. */
export function findHost(raw: readonly string[]): string | undefined {
  for (let i = 0; i < raw.length; i += 2) {
    const n = raw[i]!
    if (n.length === 4 && n.toLowerCase() === 'host') return raw[i + 1]
  }
  return undefined
}
