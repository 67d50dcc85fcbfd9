/**
 * `Authorization: Bearer <JWT>` on every route but /health, as hypeman checks it: HS256 with the
 * server's secret, exp/nbf honoured, and hypeman's registry tokens (claims `repos`, `scope`,
 * `build_id`) refused for the API. A refusal says why in general terms; the token itself is
 * never logged or echoed.
 */
import type { FastifyRequest } from 'fastify'
import { TokenError, verifyToken, type TokenClaims } from './jwt.js'

/** Routes any client may call (the spec gives them no `security`). */
export const PUBLIC_ROUTES = new Set(['/health'])

const REGISTRY_CLAIMS = ['repos', 'scope', 'build_id']

export function authenticate(req: FastifyRequest, secret: Buffer): TokenClaims {
  const header = req.headers.authorization
  if (!header) throw new TokenError('authorization header required')
  const m = /^Bearer +(\S+)\s*$/i.exec(header)
  if (!m) throw new TokenError('invalid authorization header format')
  const claims = verifyToken(m[1]!, secret)
  if (REGISTRY_CLAIMS.some((c) => c in claims)) throw new TokenError('invalid token type')
  return claims
}
