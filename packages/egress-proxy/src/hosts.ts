/**
 * Host names as the proxy compares them: lower case, no trailing dot, no port, IPv6 without
 * brackets in its canonical short form. Everything that names a destination (CONNECT target,
 * TLS SNI, Host header, policy pattern) goes through normalizeHost, so matching is plain string
 * equality on the hot path.
 */
import { isIP } from 'node:net'
import { domainToASCII } from 'node:url'
import { ValidationError } from '@hypeman-ts/common'

const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/
const PORT = /^\d{1,5}$/

function canonicalIPv6(host: string): string | null {
  try {
    return new URL(`http://[${host}]/`).hostname.slice(1, -1)
  } catch {
    return null
  }
}

function validName(host: string): boolean {
  if (host.length === 0 || host.length > 253) return false
  for (const label of host.split('.')) if (!LABEL.test(label)) return false
  return true
}

/** Splits "host:port", "[v6]:port", "v6" or "host" into its parts; port 0 when absent. */
export function splitHostPort(input: string): { host: string; port: number } | null {
  let host = input
  let port = ''
  if (input.startsWith('[')) {
    const end = input.indexOf(']')
    if (end < 0) return null
    host = input.slice(1, end)
    const rest = input.slice(end + 1)
    if (rest !== '') {
      if (!rest.startsWith(':')) return null
      port = rest.slice(1)
    }
    if (isIP(host) !== 6) return null
  } else {
    const colon = input.indexOf(':')
    if (colon >= 0 && input.indexOf(':', colon + 1) < 0) {
      host = input.slice(0, colon)
      port = input.slice(colon + 1)
    }
  }
  let portNumber = 0
  if (port !== '') {
    if (!PORT.test(port)) return null
    portNumber = Number(port)
    if (portNumber < 1 || portNumber > 65535) return null
  }
  return { host, port: portNumber }
}

/**
 * The canonical form of a host (a port, if present, is dropped), or null when it is not a valid
 * DNS name or IP literal. Non-ASCII names become their punycode form, as they appear in SNI.
 */
export function normalizeHost(input: string): string | null {
  const split = splitHostPort(input)
  if (!split) return null
  let host = split.host.toLowerCase()
  if (host.endsWith('.')) host = host.slice(0, -1)
  const family = isIP(host)
  if (family === 4) return host
  if (family === 6) return canonicalIPv6(host)
  if (/[^\x00-\x7f]/.test(host)) host = domainToASCII(host)
  return validName(host) ? host : null
}

/** A URL authority for a canonical host: IPv6 literals get their brackets back. */
export function hostForUrl(host: string): string {
  return host.includes(':') ? `[${host}]` : host
}

/** A compiled host pattern list. `any` means the policy named no hosts: every destination matches. */
export interface HostMatcher {
  readonly any: boolean
  readonly exact: ReadonlySet<string>
  /** For `*.example.com`, the parent `example.com`: a host matches when removing its first label leaves a parent. */
  readonly wildcardParents: ReadonlySet<string>
  /** The patterns as given, canonicalised, for messages and listings. */
  readonly patterns: readonly string[]
}

export const MATCH_ANY: HostMatcher = { any: true, exact: new Set(), wildcardParents: new Set(), patterns: [] }

/**
 * Compiles `api.example.com` / `*.example.com` / IP literal patterns. Case, a trailing dot and a
 * port are ignored. `*.example.com` matches exactly one extra label: `a.example.com`, never
 * `example.com` nor `a.b.example.com`. An absent or empty list matches every host.
 */
export function compileHostPatterns(patterns: unknown, field: string): HostMatcher {
  if (patterns === undefined || patterns === null) return MATCH_ANY
  if (!Array.isArray(patterns)) throw new ValidationError(field, 'must be a list of host patterns')
  if (patterns.length === 0) return MATCH_ANY
  const exact = new Set<string>()
  const wildcardParents = new Set<string>()
  const canonical: string[] = []
  patterns.forEach((pattern, i) => {
    const f = `${field}[${i}]`
    if (typeof pattern !== 'string' || pattern.trim() === '') throw new ValidationError(f, 'must be a non-empty host pattern')
    const p = pattern.trim()
    if (p.includes('://') || p.includes('/')) {
      throw new ValidationError(f, `"${p}" is a URL; a host pattern is a name like "api.example.com" or "*.example.com"`)
    }
    if (p === '*') throw new ValidationError(f, '"*" is not a pattern; omit hosts (or give an empty list) to match every host')
    if (p.startsWith('*.')) {
      const parent = normalizeHost(p.slice(2))
      if (!parent || isIP(parent)) throw new ValidationError(f, `"${p}" is not a valid wildcard pattern (expected "*.example.com")`)
      wildcardParents.add(parent)
      canonical.push(`*.${parent}`)
      return
    }
    if (p.includes('*')) {
      throw new ValidationError(f, `"${p}": a wildcard is only allowed as the whole first label, as in "*.example.com"`)
    }
    const host = normalizeHost(p)
    if (!host) throw new ValidationError(f, `"${p}" is not a valid host name or IP address`)
    exact.add(host)
    canonical.push(host)
  })
  return { any: false, exact, wildcardParents, patterns: canonical }
}

/** Whether a canonical host (see normalizeHost) matches. */
export function hostMatches(matcher: HostMatcher, host: string): boolean {
  if (matcher.any || matcher.exact.has(host)) return true
  if (matcher.wildcardParents.size === 0 || isIP(host)) return false
  const dot = host.indexOf('.')
  return dot > 0 && matcher.wildcardParents.has(host.slice(dot + 1))
}
