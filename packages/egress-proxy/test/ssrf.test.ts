/**
 * The SSRF guard end to end: without allow_destinations, a destination that is (or resolves
 * to) a loopback or private address is refused, in both modes, before any byte reaches it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { curl } from './support/clients.js'
import { bearerPolicy, type Harness, startHarness } from './support/harness.js'
import type { EgressProxy } from '../src/index.js'

let h: Harness
let strict: EgressProxy

beforeAll(async () => {
  h = await startHarness()
  // The same test names (resolving to 127.0.0.1), and one name resolving to a private address.
  strict = await h.another({
    allowDestinations: [],
    lookup: async (host) => (host === 'internal.test' ? [{ address: '10.20.30.40', family: 4 }] : [{ address: '127.0.0.1', family: 4 }]),
  })
  strict.policies.set('127.0.0.1', bearerPolicy(['api.test']))
})
afterAll(() => h?.close())

describe('SSRF guard', () => {
  it.each([
    ['a name resolving to loopback', 'api.test', 'loopback'],
    ['a loopback literal', '127.0.0.1', 'loopback'],
    ['an IPv6 loopback literal', '[::1]', 'loopback'],
    ['a name resolving to a private address', 'internal.test', 'private'],
    ['the metadata address', '169.254.169.254', 'link-local'],
  ])('refuses %s at CONNECT', async (_what, host, range) => {
    const seenBefore = h.https.seen.length
    const r = await curl(['-v', '--cacert', strict.caPath, '-x', strict.url!, `https://${host}:${h.https.port}/echo`])
    expect(r.exitCode).not.toBe(0)
    expect(r.stderr).toMatch(/CONNECT tunnel failed, response 403/)
    expect(h.https.seen.length).toBe(seenBefore)
    const plain = await curl(['-x', strict.url!, `http://${host}:${h.http.port}/echo`, '-D', '-'])
    expect(plain.status).toBe(403)
    expect(plain.body).toContain('x-hypeman-egress-error: destination_blocked')
    expect(plain.body).toContain(range)
  })

  it('refuses a transparent connection whose SNI resolves to loopback', async () => {
    const seenBefore = h.https.seen.length
    const r = await curl(['--cacert', strict.caPath, '--connect-to', `api.test:443:127.0.0.1:${strict.transparentAddress!.port}`, 'https://api.test/echo', '-D', '-'])
    expect(r.status).toBe(403)
    expect(r.body).toContain('destination_blocked')
    expect(h.https.seen.length).toBe(seenBefore)
  })

  it('the same request passes where allow_destinations covers it', async () => {
    h.proxy.policies.set('127.0.0.1', bearerPolicy(['api.test']))
    const r = await curl(['--cacert', h.proxy.caPath, '-x', h.proxy.url!, `https://api.test:${h.https.port}/echo`])
    expect(r.status).toBe(200)
  })

  it('refuses to connect to itself even where loopback is allowed', async () => {
    const r = await curl(['-x', h.proxy.url!, `http://127.0.0.1:${h.proxy.address!.port}/`, '-D', '-'])
    expect(r.status).toBe(403)
    expect(r.body).toContain('refusing to connect to itself')
  })
})
