/**
 * The explicit proxy (HTTP_PROXY / HTTPS_PROXY) with real clients: curl over HTTP/1.1 and
 * HTTP/2, Python's urllib, Node's https over a CONNECT tunnel and Node's fetch (undici's
 * ProxyAgent), against real local upstreams with their own CA.
 */
import { join } from 'node:path'
import { ProxyAgent } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { curl, nodeHttpsViaConnect, pythonGet } from './support/clients.js'
import { bearerPolicy, type Harness, SECRET, startHarness } from './support/harness.js'
import { startHttpsUpstream, type Upstream } from './support/upstream.js'

let h: Harness<{ badSelfSigned: Upstream; badName: Upstream }>
let ph: string
let caFile: string
let badSelfSigned: Upstream
let badName: Upstream

beforeAll(async () => {
  h = await startHarness({}, async (pki) => ({ badSelfSigned: await startHttpsUpstream(pki.selfSigned), badName: await startHttpsUpstream(pki.wrongName) }))
  ;({ badSelfSigned, badName } = h.extra)
  caFile = h.proxy.caPath
  ph = h.proxy.policies.set('127.0.0.1', bearerPolicy(['api.test', '*.example.test'])).placeholders.OPENAI_API_KEY!
})
afterAll(async () => {
  await h?.close()
})

const upstreamUrl = (host: string, path = '/echo') => `https://${host}:${h.https.port}${path}`
const seenBody = (body: string) => JSON.parse(body) as { headers: Record<string, string>; httpVersion: string }

describe('explicit proxy with curl', () => {
  it.each([['--http1.1'], ['--http2']])('injects the real value on a matching host (%s)', async (version) => {
    const r = await curl([version, '--cacert', caFile, '-x', h.proxy.url!, upstreamUrl('api.test'), '-H', `Authorization: Bearer ${ph}`, '-H', `X-Echo: key=${ph}`])
    expect(r.status).toBe(200)
    const seen = seenBody(r.body)
    expect(seen.headers.authorization).toBe(`Bearer ${SECRET}`)
    expect(seen.headers['x-echo']).toBe(`key=${SECRET}`)
    expect(r.body).not.toContain(ph)
  })

  it('sets the header even when the client sent none', async () => {
    const r = await curl(['--cacert', caFile, '-x', h.proxy.url!, upstreamUrl('api.test')])
    expect(seenBody(r.body).headers.authorization).toBe(`Bearer ${SECRET}`)
  })

  it.each([
    ['a.example.test', true],
    ['B.EXAMPLE.TEST', true],
    ['example.test', false],
    ['deep.a.example.test', false],
    ['other.test', false],
  ])('wildcard edge %s injects: %s', async (host, injects) => {
    const r = await curl(['--cacert', caFile, '-x', h.proxy.url!, upstreamUrl(host), '-H', `Authorization: Bearer ${ph}`])
    expect(r.status).toBe(200)
    expect(seenBody(r.body).headers.authorization).toBe(injects ? `Bearer ${SECRET}` : `Bearer ${ph}`)
  })

  it('a trailing dot in the destination still matches', async () => {
    const r = await curl(['--cacert', caFile, '-x', h.proxy.url!, upstreamUrl('api.test.'), '-H', `Authorization: Bearer ${ph}`])
    expect(seenBody(r.body).headers.authorization).toBe(`Bearer ${SECRET}`)
  })

  it('a non-matching host gets the placeholder untouched, with an audit event', async () => {
    const before = h.audit.length
    const r = await curl(['--cacert', caFile, '-x', h.proxy.url!, upstreamUrl('other.test'), '-H', `X-Api-Key: ${ph}`])
    expect(seenBody(r.body).headers['x-api-key']).toBe(ph)
    expect(h.audit.slice(before)).toContainEqual(expect.objectContaining({ type: 'placeholder_unmatched', host: 'other.test', credential: 'OPENAI_API_KEY', action: 'forwarded', source: '127.0.0.1' }))
  })

  it.each([['--http1.1'], ['--http2']])('TRACE gets no real secret, as its response echoes the request (%s)', async (version) => {
    const before = h.audit.length
    const r = await curl([version, '--cacert', caFile, '-x', h.proxy.url!, '-X', 'TRACE', upstreamUrl('api.test'), '-H', `Authorization: Bearer ${ph}`])
    expect(r.status).toBe(200)
    expect(seenBody(r.body).headers.authorization).toBe(`Bearer ${ph}`)
    expect(r.body).not.toContain(SECRET)
    const events = h.audit.slice(before)
    expect(events).toContainEqual(expect.objectContaining({ type: 'placeholder_unmatched', host: 'api.test', scheme: 'https', method: 'TRACE', action: 'forwarded' }))
    expect(events.filter((e) => e.type === 'injected')).toEqual([])
  })

  it.each([['--http1.1'], ['--http2']])('a Host header naming another site than the tunnel gets no secret: 421 (%s)', async (version) => {
    const before = h.https.seen.length
    const r = await curl([version, '--cacert', caFile, '-x', h.proxy.url!, upstreamUrl('api.test'), '-H', 'Host: attacker.example', '-D', '-'])
    expect(r.status).toBe(421)
    expect(r.body).toMatch(/x-hypeman-egress-error: misdirected_request/i)
    expect(r.body).toContain('OPENAI_API_KEY')
    expect(r.body).not.toContain(SECRET)
    expect(h.https.seen.slice(before)).toEqual([])
  })

  it('a placeholder in Origin is not swapped: CORS would echo the secret back in Access-Control-Allow-Origin', async () => {
    const before = h.audit.length
    const r = await curl(['--cacert', caFile, '-x', h.proxy.url!, upstreamUrl('api.test'), '-H', `Origin: ${ph}`])
    expect(r.status).toBe(200)
    const seen = seenBody(r.body)
    expect(seen.headers.origin).toBe(ph)
    expect(seen.headers.authorization).toBe(`Bearer ${SECRET}`)
    expect(h.audit.slice(before)).toContainEqual(expect.objectContaining({ type: 'placeholder_unmatched', host: 'api.test', credential: 'OPENAI_API_KEY', action: 'forwarded' }))
  })

  it('plain HTTP never carries a real secret', async () => {
    const r = await curl(['-x', h.proxy.url!, `http://api.test:${h.http.port}/echo`, '-H', `Authorization: Bearer ${ph}`])
    expect(r.status).toBe(200)
    const seen = seenBody(r.body)
    expect(seen.headers.authorization).toBe(`Bearer ${ph}`)
    expect(JSON.stringify(h.http.seen)).not.toContain(SECRET)
  })

  it('plain HTTP through a CONNECT tunnel (curl -p) carries no secret either', async () => {
    const r = await curl(['-p', '-x', h.proxy.url!, `http://api.test:${h.http.port}/echo`, '-H', `Authorization: Bearer ${ph}`])
    expect(r.status).toBe(200)
    expect(seenBody(r.body).headers.authorization).toBe(`Bearer ${ph}`)
  })

  it.each([
    ['self-signed', () => badSelfSigned.port, 'DEPTH_ZERO_SELF_SIGNED_CERT'],
    ['wrong name', () => badName.port, 'ERR_TLS_CERT_ALTNAME_INVALID'],
  ])('a bad upstream certificate (%s) is a 502 naming the reason', async (_what, port, reason) => {
    const r = await curl(['--cacert', caFile, '-x', h.proxy.url!, `https://api.test:${port()}/echo`, '-D', '-', '-H', `Authorization: Bearer ${ph}`])
    expect(r.status).toBe(502)
    expect(r.body).toContain('x-hypeman-egress-error: upstream_tls')
    expect(r.body).toContain(reason)
    expect(r.body).not.toContain(SECRET)
  })

  it('a source without a policy gets 403 at CONNECT', async () => {
    const r = await curl(['--interface', '127.0.0.3', '--cacert', caFile, '-x', h.proxy.url!, upstreamUrl('api.test'), '-v'])
    expect(r.exitCode).not.toBe(0)
    expect(r.stderr).toMatch(/CONNECT tunnel failed, response 403|403/)
    const plain = await curl(['--interface', '127.0.0.3', '-x', h.proxy.url!, `http://api.test:${h.http.port}/echo`, '-D', '-'])
    expect(plain.status).toBe(403)
    expect(plain.body).toContain('unregistered_source')
  })

  it('sources are told apart by address: each gets its own placeholder and secret', async () => {
    const p2 = h.proxy.policies.set('127.0.0.2', bearerPolicy(['api.test'], 'sk-second-source')).placeholders.OPENAI_API_KEY!
    expect(p2).not.toBe(ph)
    const r = await curl(['--interface', '127.0.0.2', '--cacert', caFile, '-x', h.proxy.url!, upstreamUrl('api.test'), '-H', `X-Mine: ${p2}`, '-H', `X-Theirs: ${ph}`])
    const seen = seenBody(r.body)
    expect(seen.headers.authorization).toBe('Bearer sk-second-source')
    expect(seen.headers['x-mine']).toBe('sk-second-source')
    expect(seen.headers['x-theirs']).toBe(ph)
    h.proxy.policies.delete('127.0.0.2')
  })

  it('two sources never share an upstream connection, even HTTP/2 which multiplexes (one source does)', async () => {
    h.proxy.policies.set('127.0.0.2', bearerPolicy(['api.test'], 'sk-second-source'))
    const portOf = async (from: string) => {
      const before = h.https.seen.length
      const r = await curl(['--http2', '--interface', from, '--cacert', caFile, '-x', h.proxy.url!, upstreamUrl('api.test')])
      expect(r.status).toBe(200)
      const seen = h.https.seen.slice(before)
      expect(seen.map((x) => x.httpVersion)).toEqual(['2.0'])
      return seen[0]!.remotePort
    }
    const first = await portOf('127.0.0.1')
    expect(await portOf('127.0.0.1')).toBe(first)
    expect(await portOf('127.0.0.2')).not.toBe(first)
    h.proxy.policies.delete('127.0.0.2')
  })

  it('CONNECT to a malformed target is a 400', async () => {
    const r = await curl(['-x', h.proxy.url!, '--request-target', 'nonsense', '-X', 'CONNECT', 'http://x/', '-D', '-'])
    expect([400, 0]).toContain(r.status)
  })
})

describe('explicit proxy with other clients', () => {
  it("Python's urllib", async () => {
    const r = await pythonGet(h.proxy.url!, upstreamUrl('api.test'), caFile, { Authorization: `Bearer ${ph}` })
    expect(r.status).toBe(200)
    expect(seenBody(r.body).headers.authorization).toBe(`Bearer ${SECRET}`)
  })

  it("Node's https over a CONNECT tunnel", async () => {
    const r = await nodeHttpsViaConnect(h.proxy.address!, { host: 'api.test', port: h.https.port, path: '/echo' }, h.proxy.caPem, { 'x-key': ph })
    expect(r.status).toBe(200)
    expect(seenBody(r.body).headers['x-key']).toBe(SECRET)
  })

  it("Node's fetch with undici's ProxyAgent", async () => {
    const dispatcher = new ProxyAgent({ uri: h.proxy.url!, requestTls: { ca: h.proxy.caPem } })
    try {
      const res = await fetch(upstreamUrl('api.test'), { dispatcher, headers: { authorization: `Bearer ${ph}` } } as unknown as RequestInit)
      expect(res.status).toBe(200)
      expect(((await res.json()) as { headers: Record<string, string> }).headers.authorization).toBe(`Bearer ${SECRET}`)
    } finally {
      await dispatcher.close()
    }
  })
})

describe('bodies', () => {
  it('streams a large request body and a large response through', async () => {
    const file = join(h.dir, 'upload.bin')
    await import('node:fs/promises').then((fs) => fs.writeFile(file, Buffer.alloc(8 * 1024 * 1024, 7)))
    const up = await curl(['--cacert', caFile, '-x', h.proxy.url!, upstreamUrl('api.test'), '--data-binary', `@${file}`, '-H', 'content-type: application/octet-stream'])
    expect(up.stderr).toBe('')
    expect(up.status).toBe(200)
    expect(JSON.parse(up.body).bodyBytes).toBe(8 * 1024 * 1024)
    // curl fails (exit 18) when fewer bytes arrive than Content-Length announced.
    const down = await curl(['--cacert', caFile, '-x', h.proxy.url!, upstreamUrl('api.test', `/bytes?n=${16 * 1024 * 1024}`), '-o', '/dev/null'])
    expect(down.exitCode).toBe(0)
    expect(down.status).toBe(200)
  })
})
