import { createHmac } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { mintToken, verifyToken } from '../src/jwt.js'

const secret = Buffer.from('a-secret-of-at-least-16-bytes')
const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url')
const signed = (header: unknown, claims: unknown, key = secret) => {
  const head = `${b64(header)}.${b64(claims)}`
  return `${head}.${createHmac('sha256', key).update(head).digest('base64url')}`
}

describe('HS256 tokens', () => {
  it('verifies what it mints, with its claims', () => {
    const t = mintToken(secret, { subject: 'ci', ttlSeconds: 60, now: 1_000_000_000_000 })
    expect(verifyToken(t, secret, 1_000_000_030_000)).toMatchObject({ sub: 'ci', iat: 1_000_000_000, exp: 1_000_000_060 })
  })

  it('accepts a token signed by another HS256 implementation (jwt.io form)', () => {
    expect(verifyToken(signed({ alg: 'HS256', typ: 'JWT' }, { sub: 'x' }), secret)).toEqual({ sub: 'x' })
  })

  it.each([
    ['another secret', () => mintToken(Buffer.from('another-secret-another-secret'))],
    ['a changed claim', () => { const [h, , s] = mintToken(secret).split('.'); return `${h}.${b64({ sub: 'admin' })}.${s}` }],
    ['alg none', () => `${b64({ alg: 'none' })}.${b64({ sub: 'x' })}.`],
    ['alg HS512', () => signed({ alg: 'HS512' }, { sub: 'x' })],
    ['two parts', () => 'abc.def'],
    ['garbage', () => 'not.a.jwt'],
    ['claims that are not an object', () => signed({ alg: 'HS256' }, 42)],
  ])('refuses %s', (_what, token) => {
    expect(() => verifyToken(token(), secret)).toThrow(expect.objectContaining({ code: 'unauthorized' }))
  })

  it('refuses an expired token and one not yet valid, with a little leeway for clock skew', () => {
    const now = 2_000_000_000_000
    const expired = mintToken(secret, { ttlSeconds: 60, now: now - 120_000 })
    expect(() => verifyToken(expired, secret, now)).toThrow('token expired')
    expect(verifyToken(mintToken(secret, { ttlSeconds: 60, now: now - 80_000 }), secret, now).exp).toBe(now / 1000 - 20)
    const future = signed({ alg: 'HS256' }, { nbf: now / 1000 + 120 })
    expect(() => verifyToken(future, secret, now)).toThrow('token not yet valid')
    expect(() => verifyToken(signed({ alg: 'HS256' }, { exp: 'tomorrow' }), secret, now)).toThrow('token expired')
  })
})
