/**
 * Limits that keep the proxy alive under abuse: oversized and malformed requests, slow or
 * silent clients, too many connections, and a client that stops reading (the response must
 * not pile up in the proxy). Ends with a fuzz run (fixed seed, bounded count) over every way
 * in; the proxy must still answer a good request afterwards.
 */
import { connect as netConnect, type Socket } from 'node:net'
import { connect as tlsConnect, type TLSSocket } from 'node:tls'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { EgressProxy } from '../src/index.js'
import { curl } from './support/clients.js'
import { guestTls } from './support/guest.js'
import { bearerPolicy, type Harness, startHarness } from './support/harness.js'
import { streamed } from './support/upstream.js'

let h: Harness
let tight: EgressProxy

beforeAll(async () => {
  h = await startHarness({ limits: { maxHeaderSize: '8KB' } })
  h.proxy.policies.set('127.0.0.1', bearerPolicy(['api.test']))
  tight = await h.another({
    limits: { maxHeaderSize: '8KB', headersTimeout: '600ms', idleTimeout: '700ms', handshakeTimeout: '500ms', maxConnectionsPerSource: 3 },
  })
  tight.policies.set('127.0.0.1', bearerPolicy(['api.test']))
})
afterAll(() => h?.close())

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = netConnect({ host: '127.0.0.1', port }, () => resolve(s))
    s.on('error', reject)
  })
}

/** Everything the peer sends until it closes (or `ms` pass), and whether it closed. */
function drain(s: Socket | TLSSocket, ms: number): Promise<{ data: string; closed: boolean }> {
  return new Promise((resolve) => {
    let data = ''
    const done = (closed: boolean) => {
      clearTimeout(timer)
      s.removeAllListeners('data')
      resolve({ data, closed })
    }
    const timer = setTimeout(() => done(false), ms)
    s.on('data', (d: Buffer) => (data += d.toString('latin1')))
    s.once('close', () => done(true))
    s.on('error', () => {})
  })
}

function tunnel(proxy: EgressProxy, target: string): Promise<TLSSocket> {
  return guestTls({ port: proxy.address!.port, ca: proxy.caPem, target, via: 'connect' })
}

describe('limits', () => {
  it('an oversized request head is a 431, in the clear and inside TLS', async () => {
    const big = `X-Big: ${'a'.repeat(10 * 1024)}`
    const plain = await curl(['-x', h.proxy.url!, `http://api.test:${h.http.port}/echo`, '-H', big, '-D', '-'])
    expect(plain.status).toBe(431)
    const tls = await curl(['--http1.1', '--cacert', h.proxy.caPath, '-x', h.proxy.url!, `https://api.test:${h.https.port}/echo`, '-H', big, '-D', '-'])
    expect(tls.status).toBe(431)
    const h2 = await curl(['--http2', '--cacert', h.proxy.caPath, '-x', h.proxy.url!, `https://api.test:${h.https.port}/echo`, '-H', big])
    // Over HTTP/2 the proxy advertises the limit in SETTINGS; a client may refuse to send at all.
    expect(h2.status === 431 || (h2.exitCode !== 0 && h2.status === 0)).toBe(true)
    expect(h.https.seen.some((s) => s.headers['x-big'])).toBe(false)
  })

  it('a malformed request is a 400', async () => {
    const s = await open(h.proxy.address!.port)
    s.write('GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\nBad Header Line\r\n\r\n')
    expect((await drain(s, 2000)).data).toMatch(/^HTTP\/1\.1 400/)
  })

  it('a client that never finishes its headers is cut off', async () => {
    const s = await open(tight.address!.port)
    s.write('GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\nX-Slow: ')
    const r = await drain(s, 5000)
    expect(r.closed).toBe(true)
  })

  it('a client that connects and says nothing is cut off, in both modes', async () => {
    for (const port of [tight.transparentAddress!.port]) {
      const s = await open(port)
      expect((await drain(s, 5000)).closed).toBe(true)
    }
    const s = await open(tight.address!.port)
    s.write(`CONNECT api.test:${h.https.port} HTTP/1.1\r\n\r\n`)
    const r = await drain(s, 5000)
    expect(r.data).toMatch(/^HTTP\/1\.1 200/)
    expect(r.closed).toBe(true)
  })

  it('the explicit listener: a silent client is cut off, a CONNECT split over reads and one with the first bytes of the tunnel behind it both tunnel', async () => {
    const silent = await open(tight.address!.port)
    const t0 = performance.now()
    expect((await drain(silent, 5000)).closed).toBe(true)
    expect(performance.now() - t0).toBeLessThan(3000)
    // A head that is not whole in the first read goes to Node's HTTP server, with the bytes read.
    const split = await open(h.proxy.address!.port)
    split.write(`CONNECT api.test:${h.https.port} HT`)
    await new Promise((r) => setTimeout(r, 50))
    split.write('TP/1.1\r\nHost: api.test\r\n\r\n')
    const splitAnswer = await new Promise<string>((resolve) => split.once('data', (d: Buffer) => resolve(d.toString('latin1'))))
    expect(splitAnswer).toMatch(/^HTTP\/1\.1 200/)
    split.destroy()
    // Bytes after the head (a client that does not wait for the 200) are the tunnel's first bytes.
    const eager = await open(h.proxy.address!.port)
    eager.write(`CONNECT api.test:${h.http.port} HTTP/1.1\r\n\r\nGET /echo HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n`)
    expect((await drain(eager, 5000)).data).toMatch(/^HTTP\/1\.1 200 Connection Established\r\n\r\nHTTP\/1\.1 200 /)
  })

  it('an idle kept-alive connection is closed', async () => {
    const tls = await tunnel(tight, `api.test:${h.https.port}`)
    tls.write(`GET /echo HTTP/1.1\r\nHost: api.test\r\n\r\n`)
    const r = await drain(tls, 5000)
    expect(r.data).toMatch(/^HTTP\/1\.1 200/)
    expect(r.closed).toBe(true)
  })

  it('drops connections beyond the per-source limit', async () => {
    const held = await Promise.all([open(tight.address!.port), open(tight.address!.port), open(tight.address!.port)])
    const extra = await open(tight.address!.port)
    expect((await drain(extra, 2000)).closed).toBe(true)
    expect(tight.metrics()).toMatch(/hypeman_egress_denied_total\{reason="too_many_connections"\} [1-9]/)
    for (const s of held) s.destroy()
  })

  it('a client that stops reading does not make the proxy buffer the response', async () => {
    const tls = await tunnel(h.proxy, `api.test:${h.https.port}`)
    const total = 512 * 1024 * 1024
    const before = streamed.bytes
    tls.write(`GET /stream?n=${total} HTTP/1.1\r\nHost: api.test\r\n\r\n`)
    let received = 0
    await new Promise<void>((resolve) => {
      tls.on('data', (d: Buffer) => {
        received += d.length
        if (received > 1024 * 1024) {
          tls.pause()
          resolve()
        }
      })
    })
    await new Promise((r) => setTimeout(r, 1500))
    const sent = streamed.bytes - before
    // Socket buffers on both legs hold a few MiB; a proxy buffering the body would have taken it all.
    expect(sent).toBeLessThan(64 * 1024 * 1024)
    tls.destroy()
  })
})

/** mulberry32: a tiny PRNG, so the fuzz run is the same every time. */
function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

describe('fuzz', () => {
  it('400 mutated requests over every way in never take the proxy down', { timeout: 120_000 }, async () => {
    const rand = prng(0x5eed)
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!
    const seeds = [
      `GET http://api.test:${h.http.port}/echo HTTP/1.1\r\nHost: api.test\r\nAccept: */*\r\n\r\n`,
      `CONNECT api.test:${h.https.port} HTTP/1.1\r\nHost: api.test\r\n\r\n`,
      `POST /echo HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 5\r\n\r\nhello`,
      `GET /echo HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n`,
      `GET /ws HTTP/1.1\r\nHost: api.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\n\r\n`,
      `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00`,
      '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03',
    ]
    const noise = ['\r\n', '\n', '\r', '\x00', ':', ' ', '\t', 'Host: ', 'Content-Length: 99999999999\r\n', 'Transfer-Encoding: chunked\r\n', '\xff', '%', '[', ']', 'a'.repeat(9000)]
    const mutate = (input: string): string => {
      let s = input
      const edits = 1 + Math.floor(rand() * 6)
      for (let i = 0; i < edits; i++) {
        const at = Math.floor(rand() * (s.length + 1))
        const op = rand()
        if (op < 0.35) s = s.slice(0, at) + pick(noise) + s.slice(at)
        else if (op < 0.6) s = s.slice(0, at) + s.slice(at + 1 + Math.floor(rand() * 8))
        else if (op < 0.85) s = s.slice(0, at) + String.fromCharCode(Math.floor(rand() * 256)) + s.slice(at + 1)
        else s = s.slice(0, at)
      }
      return s
    }
    const ways = ['explicit', 'transparent', 'tunnel-tls', 'transparent-tls'] as const
    const one = async (): Promise<void> => {
      const way = pick(ways)
      const payload = Buffer.from(mutate(pick(seeds)), 'latin1')
      let socket: Socket | TLSSocket
      try {
        if (way === 'explicit') socket = await open(h.proxy.address!.port)
        else if (way === 'transparent') socket = await open(h.proxy.transparentAddress!.port)
        else if (way === 'tunnel-tls') socket = await tunnel(h.proxy, `api.test:${h.https.port}`)
        else {
          socket = tlsConnect({ host: '127.0.0.1', port: h.proxy.transparentAddress!.port, servername: 'api.test', ca: h.proxy.caPem, ALPNProtocols: [pick(['h2', 'http/1.1'])] })
          await new Promise<void>((resolve, reject) => {
            socket.once('secureConnect', () => resolve())
            socket.once('error', reject)
          })
        }
      } catch {
        return
      }
      socket.on('error', () => {})
      socket.write(payload)
      if (rand() < 0.3) socket.end()
      await drain(socket, 300)
      socket.destroy()
    }
    for (let round = 0; round < 50; round++) await Promise.all(Array.from({ length: 8 }, one))
    const ok = await curl(['--cacert', h.proxy.caPath, '-x', h.proxy.url!, `https://api.test:${h.https.port}/echo`])
    expect(ok.status).toBe(200)
    expect(h.proxy.metrics()).toMatch(/hypeman_egress_denied_total\{reason="malformed_request"\} [1-9]/)
  })
})
