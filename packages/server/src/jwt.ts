/**
 * HS256 JSON Web Tokens, as hypeman's server accepts them (`Authorization: Bearer <JWT>`,
 * signed with `JWT_SECRET`). Only HS256: the algorithm comes from our configuration, never from
 * the token's header, so a token saying `alg: none` (or an RSA/HMAC confusion) is refused.
 * Small enough to own with node:crypto; the signature compare is constant-time.
 */
import { createHmac, timingSafeEqual } from 'node:crypto'
import { HypemanError } from '@hypeman-ts/common'

export interface TokenClaims {
  sub?: string
  /** Seconds since the epoch. */
  exp?: number
  nbf?: number
  iat?: number
  [claim: string]: unknown
}

/** Why a token was refused: the message says which check, never the token. */
export class TokenError extends HypemanError {
  constructor(message: string) {
    super('unauthorized', message)
  }
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url')

function sign(input: string, secret: Buffer): Buffer {
  return createHmac('sha256', secret).update(input).digest()
}

export interface MintOptions {
  subject?: string
  /** Lifetime in seconds; omit for a token that does not expire. */
  ttlSeconds?: number
  now?: number
}

export function mintToken(secret: Buffer, opts: MintOptions = {}): string {
  const now = Math.floor((opts.now ?? Date.now()) / 1000)
  const claims: TokenClaims = { sub: opts.subject ?? 'hypeman-ts', iat: now }
  if (opts.ttlSeconds !== undefined) claims.exp = now + opts.ttlSeconds
  const head = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}`
  return `${head}.${b64url(sign(head, secret))}`
}

/** Leeway for clocks that disagree a little, on exp and nbf. */
const SKEW_SECONDS = 30

export function verifyToken(token: string, secret: Buffer, now = Date.now()): TokenClaims {
  const parts = token.split('.')
  if (parts.length !== 3) throw new TokenError('malformed token')
  const [head, body, sig] = parts as [string, string, string]
  let header: { alg?: unknown }
  let claims: TokenClaims
  try {
    header = JSON.parse(Buffer.from(head, 'base64url').toString('utf8'))
    claims = JSON.parse(Buffer.from(body, 'base64url').toString('utf8'))
  } catch {
    throw new TokenError('malformed token')
  }
  if (header?.alg !== 'HS256') throw new TokenError('token algorithm must be HS256')
  const expected = sign(`${head}.${body}`, secret)
  const given = Buffer.from(sig, 'base64url')
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw new TokenError('invalid token signature')
  if (!claims || typeof claims !== 'object' || Array.isArray(claims)) throw new TokenError('malformed token claims')
  const nowSec = now / 1000
  if (claims.exp !== undefined && (typeof claims.exp !== 'number' || nowSec > claims.exp + SKEW_SECONDS)) throw new TokenError('token expired')
  if (claims.nbf !== undefined && (typeof claims.nbf !== 'number' || nowSec + SKEW_SECONDS < claims.nbf)) throw new TokenError('token not yet valid')
  return claims
}
