/**
 * The decision every path asks for, as a table: who is refused and why, where a request goes,
 * and what leaves with it. It records nothing (outcome.test.ts covers what is recorded).
 */
import { describe, expect, it } from 'vitest'
import type { Conn, ProxyContext } from '../src/context.js'
import { decide, findHost } from '../src/decision.js'
import { derivePlaceholder } from '../src/placeholders.js'
import { compilePolicy } from '../src/policy.js'
import { canonicalSource, SourceTable } from '../src/sources.js'
import { bearerPolicy, SECRET } from './support/harness.js'

const key = Buffer.alloc(32, 7)
const sources = new SourceTable()
for (const [source, block] of [['10.0.0.5', false], ['10.0.0.6', true]] as const) {
  const s = canonicalSource(source, 'source')
  sources.set(s, compilePolicy({ ...bearerPolicy(['api.test']), ...(block ? { unmatchedPlaceholder: 'block' as const } : {}) }, (c) => derivePlaceholder(key, s.key, c)))
}
const ph = (source: string) => derivePlaceholder(key, source, 'OPENAI_API_KEY')
const ctx = { sources, transparentPorts: { https: 443, http: 80 } } as unknown as ProxyContext
const conn = (source: string, target?: Conn['target']): Conn =>
  ({ id: 1, listener: target ? 'transparent' : 'explicit', source, raw: null, entry: undefined, version: -1, active: 0, closed: false, ...(target ? { target } : {}) }) as unknown as Conn
const tls = { host: 'api.test', port: 443, tls: true }

describe('decide', () => {
  it('forwards with the credential put in, to the connection\'s destination', () => {
    const d = decide(ctx, conn('10.0.0.5', tls), 'GET', '/v1', 'api.test', ['Host', 'api.test', 'Authorization', `Bearer ${ph('10.0.0.5')}`])
    expect(d).toMatchObject({ kind: 'forward', dest: { scheme: 'https', host: 'api.test', port: 443, path: '/v1', authority: 'api.test' } })
    if (d.kind !== 'forward') throw new Error('refused')
    expect(d.rewrite.injected).toEqual(['OPENAI_API_KEY'])
    expect(d.rewrite.headers).toEqual(['host', 'api.test', 'Authorization', `Bearer ${SECRET}`])
  })

  it.each([
    ['an unregistered source', conn('10.0.0.9', tls), 'GET', '/', 'api.test', 'unregistered_source', false],
    ['a target that is neither a path nor a URI', conn('10.0.0.5', tls), 'GET', 'nonsense', 'api.test', 'bad_request', false],
    ['an explicit request without an absolute URI', conn('10.0.0.5'), 'GET', '/', 'api.test', 'bad_request', false],
    ['a Host naming another site when a credential is at stake', conn('10.0.0.5', tls), 'GET', '/', 'other.test', 'misdirected_request', true],
  ])('refuses %s', (_what, c, method, url, host, code, withDest) => {
    const d = decide(ctx, c, method, url, host, ['Host', host])
    expect(d).toMatchObject({ kind: 'refuse', err: { code } })
    expect('dest' in d && d.dest !== undefined).toBe(withDest)
  })

  it('judges each request\'s Host on a kept-alive connection, whatever the one before it named', () => {
    const c = conn('10.0.0.5', tls)
    const hosts = ['API.test.', 'other.test', 'api.test:443', 'other.test', 'api.test']
    expect(hosts.map((h) => decide(ctx, c, 'GET', '/', h, ['Host', h]).kind)).toEqual(['forward', 'refuse', 'forward', 'refuse', 'forward'])
  })

  it('a placeholder towards a host its credential does not name: forwarded untouched, or refused naming the credential', () => {
    const to = { host: 'other.test', port: 443, tls: true }
    const forwarded = decide(ctx, conn('10.0.0.5', to), 'GET', '/', 'other.test', ['X-Key', ph('10.0.0.5')])
    expect(forwarded.kind).toBe('forward')
    if (forwarded.kind === 'forward') expect(forwarded.rewrite.unmatched.map((c) => c.name)).toEqual(['OPENAI_API_KEY'])
    const blocked = decide(ctx, conn('10.0.0.6', to), 'GET', '/', 'other.test', ['X-Key', ph('10.0.0.6')])
    expect(blocked).toMatchObject({ kind: 'refuse', err: { code: 'placeholder_blocked' }, dest: { host: 'other.test' } })
    if (blocked.kind === 'refuse') expect(blocked.blocked?.map((c) => c.name)).toEqual(['OPENAI_API_KEY'])
  })

  it.each(['TRACE', 'track'])('%s gets no real value, as plain HTTP does not', (method) => {
    const d = decide(ctx, conn('10.0.0.5', tls), method, '/', 'api.test', ['Authorization', `Bearer ${ph('10.0.0.5')}`])
    expect(d.kind).toBe('forward')
    if (d.kind === 'forward') expect(d.rewrite.injected).toEqual([])
  })
})

describe('findHost', () => {
  it('finds Host however it is spelled', () => {
    expect(findHost(['Accept', '*/*', 'HOST', 'api.test'])).toBe('api.test')
    expect(findHost(['Accept', '*/*'])).toBeUndefined()
  })
})
