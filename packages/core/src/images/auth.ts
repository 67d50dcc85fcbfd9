/** `WWW-Authenticate` challenges (RFC 7235) as registries send them, and the bearer token flow. */
import { request, type Dispatcher } from 'undici'
import { ImageError } from '../errors.js'

export interface Challenge {
  scheme: 'basic' | 'bearer'
  params: Record<string, string>
}

export interface RegistryCredentials {
  username?: string
  password?: string
  /** Sent as-is as the bearer token (a registry token or personal access token). */
  token?: string
}

/** Parses the first Basic or Bearer challenge of a WWW-Authenticate header. */
export function parseChallenge(header: string | string[] | undefined): Challenge | null {
  const text = Array.isArray(header) ? header.join(', ') : header
  if (!text) return null
  const m = /^\s*(basic|bearer)\b\s*(.*)$/is.exec(text)
  if (!m) return null
  const params: Record<string, string> = {}
  const re = /\s*([a-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?/giy
  const rest = m[2] ?? ''
  re.lastIndex = 0
  let p: RegExpExecArray | null
  while ((p = re.exec(rest)) !== null) {
    params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '')
    if (re.lastIndex >= rest.length) break
  }
  return { scheme: m[1]!.toLowerCase() as Challenge['scheme'], params }
}

export function basicAuthorization(creds: RegistryCredentials): string | undefined {
  if (creds.username === undefined) return undefined
  return `Basic ${Buffer.from(`${creds.username}:${creds.password ?? ''}`).toString('base64')}`
}

export interface Token {
  token: string
  expiresAt: number
}

/** The token endpoint of the distribution spec: GET realm?service=…&scope=…, Basic credentials when we have them. */
export async function fetchToken(
  challenge: Challenge,
  scope: string | undefined,
  creds: RegistryCredentials | undefined,
  dispatcher: Dispatcher,
  signal?: AbortSignal,
): Promise<Token> {
  const realm = challenge.params.realm
  if (!realm) throw new ImageError('registry_error', 'bearer challenge without a realm')
  let url: URL
  try {
    url = new URL(realm)
  } catch {
    throw new ImageError('registry_error', `bearer challenge realm is not a URL: ${realm}`)
  }
  if (challenge.params.service) url.searchParams.set('service', challenge.params.service)
  for (const s of [scope, challenge.params.scope]) {
    if (s && !url.searchParams.getAll('scope').includes(s)) url.searchParams.append('scope', s)
  }
  const headers: Record<string, string> = {}
  const basic = creds ? basicAuthorization(creds) : undefined
  if (basic) headers.authorization = basic
  const res = await request(url, { method: 'GET', headers, dispatcher, signal })
  const body = await res.body.text()
  if (res.statusCode === 401 || res.statusCode === 403) {
    throw new ImageError('registry_unauthorized', `token server ${url.origin} refused ${basic ? 'the given credentials' : 'anonymous access'} (HTTP ${res.statusCode})`)
  }
  if (res.statusCode !== 200) throw new ImageError('registry_error', `token server ${url.origin} answered HTTP ${res.statusCode}`)
  let doc: { token?: string; access_token?: string; expires_in?: number }
  try {
    doc = JSON.parse(body)
  } catch {
    throw new ImageError('registry_error', `token server ${url.origin} answered with invalid JSON`)
  }
  const token = doc.token ?? doc.access_token
  if (!token) throw new ImageError('registry_error', `token server ${url.origin} returned no token`)
  // The spec's default lifetime is 60 s; renew a little early.
  const lifetime = Math.max(10, (doc.expires_in ?? 60) - 5)
  return { token, expiresAt: Date.now() + lifetime * 1000 }
}
