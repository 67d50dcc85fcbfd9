/**
 * The transparent listener, reached the way a firewall-redirected connection arrives: the
 * client believes it talks to the real host (its TLS SNI or Host header names it) but the TCP
 * connection lands on the proxy. curl's --connect-to and Node's lookup option do exactly that.
 */
import { connect as http2Connect } from 'node:http2'
import { request as httpsRequest } from 'node:https'
import type { LookupFunction } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import { Agent } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { curl } from './support/clients.js'
import { bearerPolicy, type Harness, SECRET, startHarness } from './support/harness.js'

let h: Harness
let ph: string
let tp: number

beforeAll(async () => {
  h = await startHarness()
  tp = h.proxy.transparentAddress!.port
  ph = h.proxy.policies.set('127.0.0.1', bearerPolicy(['api.test'])).placeholders.OPENAI_API_KEY!
})
afterAll(() => h?.close())

/** Sends every name to the transparent listener, as the host firewall's redirect would. */
const toProxy: LookupFunction = (_host, opts, cb) => {
  if ((opts as { all?: boolean }).all) (cb as (e: null, a: Array<{ address: string; family: number }>) => void)(null, [{ address: '127.0.0.1', family: 4 }])
  else (cb as (e: null, a: string, f: number) => void)(null, '127.0.0.1', 4)
}
const seen = (body: string) => JSON.parse(body) as { headers: Record<string, string>; httpVersion: string }

describe('transparent TLS (destination from SNI)', () => {
  it.each([['--http1.1'], ['--http2']])('curl %s: the header lands with the real value', async (version) => {
    const r = await curl([version, '--cacert', h.proxy.caPath, '--connect-to', `api.test:443:127.0.0.1:${tp}`, 'https://api.test/echo', '-H', `X-Key: ${ph}`])
    expect(r.status).toBe(200)
    const s = seen(r.body)
    expect(s.headers.authorization).toBe(`Bearer ${SECRET}`)
    expect(s.headers['x-key']).toBe(SECRET)
    expect(s.httpVersion).toBe(version === '--http2' ? '2.0' : '1.1')
  })

  it.each([['--http1.1'], ['--http2']])('curl %s: a Host naming another site than the SNI gets no secret (421)', async (version) => {
    const r = await curl([version, '--cacert', h.proxy.caPath, '--connect-to', `api.test:443:127.0.0.1:${tp}`, 'https://api.test/echo', '-H', 'Host: attacker.example', '-H', `X-Key: ${ph}`])
    expect(r.status).toBe(421)
    expect(r.body).not.toContain(SECRET)
    expect(h.audit).toContainEqual(expect.objectContaining({ type: 'denied', reason: 'misdirected_request', host: 'api.test' }))
  })

  it("Node's fetch (which ignores proxy variables) through a redirected connection", async () => {
    const dispatcher = new Agent({ connect: { ca: h.proxy.caPem, lookup: toProxy } })
    try {
      const res = await fetch(`https://api.test:${tp}/echo`, { dispatcher, headers: { authorization: `Bearer ${ph}` } } as unknown as RequestInit)
      expect(res.status).toBe(200)
      expect(((await res.json()) as { headers: Record<string, string> }).headers.authorization).toBe(`Bearer ${SECRET}`)
    } finally {
      await dispatcher.close()
    }
  })

  it("Node's https through a redirected connection", async () => {
    const body = await new Promise<string>((resolve, reject) => {
      const req = httpsRequest({ host: 'api.test', port: tp, path: '/echo', ca: h.proxy.caPem, lookup: toProxy, agent: false }, (res) => {
        let b = ''
        res.on('data', (d: Buffer) => (b += d.toString()))
        res.on('end', () => resolve(b))
      })
      req.on('error', reject)
      req.end()
    })
    expect(seen(body).headers.authorization).toBe(`Bearer ${SECRET}`)
  })

  it('a host the policy does not name keeps the placeholder', async () => {
    const r = await curl(['--cacert', h.proxy.caPath, '--connect-to', `other.test:443:127.0.0.1:${tp}`, 'https://other.test/echo', '-H', `Authorization: Bearer ${ph}`])
    expect(seen(r.body).headers.authorization).toBe(`Bearer ${ph}`)
  })

  it('HTTP/2 end to end with trailers, as gRPC needs', async () => {
    const session = http2Connect(`https://api.test:${tp}`, {
      createConnection: () => tlsConnect({ host: '127.0.0.1', port: tp, servername: 'api.test', ca: h.proxy.caPem, ALPNProtocols: ['h2'] }),
    })
    try {
      const result = await new Promise<{ status: number; body: string; trailers: Record<string, unknown> }>((resolve, reject) => {
        const stream = session.request({ ':path': '/trailers', ':method': 'POST', te: 'trailers', 'content-type': 'application/grpc', 'x-key': ph })
        let status = 0
        let body = ''
        let trailers: Record<string, unknown> = {}
        stream.on('response', (hd) => (status = Number(hd[':status'])))
        stream.on('data', (d: Buffer) => (body += d.toString()))
        stream.on('trailers', (t) => (trailers = t))
        stream.on('end', () => resolve({ status, body, trailers }))
        stream.on('error', reject)
        stream.end('request-bytes')
      })
      expect(result).toMatchObject({ status: 200, body: 'payload', trailers: { 'grpc-status': '0', 'grpc-message': 'fine' } })
      const up = h.https.seen.at(-1)!
      expect(up.httpVersion).toBe('2.0')
      expect(up.headers['x-key']).toBe(SECRET)
      expect(up.headers.te).toBe('trailers')
      expect(up.bodyBytes).toBe('request-bytes'.length)
    } finally {
      session.close()
    }
  })

  it('a session from an earlier connection is not resumed: the destination is always the SNI of this handshake', async () => {
    // A resumed handshake skips the SNI callback that sets the destination; resumption would
    // route the request by its Host header, as plain HTTP.
    const once = async (servername: string, session?: Buffer) => {
      const s = tlsConnect({ host: '127.0.0.1', port: tp, servername, ca: h.proxy.caPem, ALPNProtocols: ['http/1.1'], ...(session ? { session } : {}) })
      let ticket: Buffer | undefined
      s.on('session', (b: Buffer) => (ticket = b))
      await new Promise((resolve, reject) => {
        s.once('secureConnect', resolve)
        s.once('error', reject)
      })
      const reused = s.isSessionReused()
      s.write(`GET /echo HTTP/1.1\r\nHost: ${servername}\r\nConnection: close\r\n\r\n`)
      let text = ''
      s.on('data', (d: Buffer) => (text += d.toString()))
      await new Promise((resolve) => s.once('close', resolve))
      return { reused, ticket, echo: seen(text.slice(text.indexOf('\r\n\r\n') + 4)) }
    }
    const first = await once('api.test')
    expect(first.ticket).toBeDefined()
    for (const name of ['api.test', 'other.test']) {
      const again = await once(name, first.ticket)
      expect(again.reused).toBe(false)
      // Over TLS to the HTTPS upstream (the plain one would answer without ALPN), with the secret only for api.test.
      expect((again.echo as { alpn?: string }).alpn).toBe('http/1.1')
      expect(again.echo.headers.authorization).toBe(name === 'api.test' ? `Bearer ${SECRET}` : undefined)
    }
  })

  it('a client that sends no SNI cannot be routed and is refused at the handshake', async () => {
    const before = h.proxy.metrics().match(/hypeman_egress_denied_total\{reason="no_sni"\} (\d+)/)?.[1] ?? '0'
    const r = await curl(['--cacert', h.proxy.caPath, `https://127.0.0.1:${tp}/echo`])
    expect(r.exitCode).not.toBe(0)
    expect(Number(h.proxy.metrics().match(/hypeman_egress_denied_total\{reason="no_sni"\} (\d+)/)?.[1])).toBe(Number(before) + 1)
  })

  it('an unregistered source gets 403 after the handshake', async () => {
    const r = await curl(['--interface', '127.0.0.3', '--cacert', h.proxy.caPath, '--connect-to', `api.test:443:127.0.0.1:${tp}`, 'https://api.test/echo', '-D', '-'])
    expect(r.status).toBe(403)
    expect(r.body).toContain('x-hypeman-egress-error: unregistered_source')
  })
})

describe('transparent plain HTTP (destination from Host)', () => {
  it('is forwarded without any secret', async () => {
    const r = await curl(['--connect-to', `plain.test:80:127.0.0.1:${tp}`, 'http://plain.test/echo', '-H', `Authorization: Bearer ${ph}`])
    expect(r.status).toBe(200)
    expect(seen(r.body).headers.authorization).toBe(`Bearer ${ph}`)
    expect(JSON.stringify(h.http.seen)).not.toContain(SECRET)
  })

  it('honours a port in the Host header', async () => {
    const r = await curl(['--connect-to', `plain.test:${h.http.port}:127.0.0.1:${tp}`, `http://plain.test:${h.http.port}/echo`])
    expect(r.status).toBe(200)
    expect(seen(r.body).headers.host).toBe(`plain.test:${h.http.port}`)
  })

  it('a request without a Host header is a 400', async () => {
    const r = await curl(['--http1.0', '-H', 'Host:', '--connect-to', `plain.test:80:127.0.0.1:${tp}`, 'http://plain.test/echo', '-D', '-'])
    expect(r.status).toBe(400)
  })
})
