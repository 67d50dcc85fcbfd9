/**
 * The HTTP/1.1 fast path end to end: a raw guest through a CONNECT tunnel, and an upstream whose
 * answers are written byte by byte, so each framing case (Content-Length, chunked, close,
 * bodiless, interim responses), each failure (malformed, truncated, stalled, a kept-alive
 * connection that died) and each hand-off to the general path is checked on the wire.
 */
import { createHash, randomBytes } from 'node:crypto'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import type { EgressProxy } from '../src/index.js'
import { curl } from './support/clients.js'
import { RawGuest } from './support/guest.js'
import { bearerPolicy, type Harness, SECRET, startHarness } from './support/harness.js'
import { ok, type RawUpstream, startRawUpstream } from './support/raw-upstream.js'
import { startHttpsUpstream, type Upstream } from './support/upstream.js'

let h: Harness<{ up: RawUpstream; plainUp: RawUpstream; echo: Upstream }>
let up: RawUpstream
let plainUp: RawUpstream
let timeouts: EgressProxy
let ph: string
const guests: RawGuest[] = []

beforeAll(async () => {
  h = await startHarness({}, async (pki) => ({ up: await startRawUpstream(pki.good), plainUp: await startRawUpstream(null), echo: await startHttpsUpstream(pki.good) }))
  ;({ up, plainUp } = h.extra)
  ph = h.proxy.policies.set('127.0.0.1', bearerPolicy(['api.test'])).placeholders.OPENAI_API_KEY!
  h.proxy.policies.set('127.0.0.2', { ...bearerPolicy(['api.test']), unmatchedPlaceholder: 'block' })
  timeouts = await h.another({ limits: { upstreamHeadersTimeout: '300ms', upstreamBodyTimeout: '300ms' } })
  timeouts.policies.set('127.0.0.1', bearerPolicy(['api.test']))
})
afterAll(async () => {
  for (const g of guests) g.destroy()
  await h?.close()
})
beforeEach(() => {
  up.respond = (_req, socket) => socket.write(ok())
})

async function guest(proxy: EgressProxy = h.proxy, target = `api.test:${up.port}`, localAddress?: string): Promise<RawGuest> {
  const g = await RawGuest.open(proxy, target, localAddress)
  guests.push(g)
  return g
}

const handoffs = (proxy: EgressProxy = h.proxy) =>
  [...proxy.metrics().matchAll(/hypeman_egress_http1_handoffs_total\{reason="([a-z_]+)"\} (\d+)/g)].reduce<Record<string, number>>((acc, m) => ({ ...acc, [m[1]!]: Number(m[2]) }), {})

describe('fast path exchanges', () => {
  it('serves kept-alive requests over one pooled upstream connection, with the credential injected', async () => {
    const before = { requests: up.requests.length, connections: up.connections, handoffs: handoffs() }
    const a = await guest()
    for (let i = 0; i < 3; i++) {
      a.send(`GET /n/${i} HTTP/1.1\r\nHost: api.test\r\nX-Key: ${ph}\r\n\r\n`)
      const r = await a.response()
      expect(r.status).toBe(200)
      expect(r.body).toBe('ok')
    }
    const b = await guest()
    b.send('GET /other HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect((await b.response()).status).toBe(200)
    const seen = up.requests.slice(before.requests)
    expect(seen.map((r) => r.target)).toEqual(['/n/0', '/n/1', '/n/2', '/other'])
    expect(new Set(seen.map((r) => r.connection)).size).toBe(1)
    expect(up.connections).toBeLessThanOrEqual(before.connections + 1)
    for (const r of seen) expect(r.headers.authorization).toBe(`Bearer ${SECRET}`)
    expect(seen[0]!.headers['x-key']).toBe(SECRET)
    expect(seen[0]!.headers.host).toBe('api.test')
    expect(handoffs()).toEqual(before.handoffs)
  })

  it('forwards a chunked body byte for byte, dropping the Content-Length it overrides', async () => {
    const chunked = '4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nX-Sum: 7\r\n\r\n'
    up.respond = (_req, socket) => {
      socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n4;ext=1\r\nab')
      setTimeout(() => socket.write('cd\r\n3\r\nefg\r\n0\r\nX-Sum: 7\r\n\r\n'), 30)
    }
    const g = await guest()
    g.send('GET /chunked HTTP/1.1\r\nHost: api.test\r\n\r\n')
    const r = await g.response()
    expect(r.headers['transfer-encoding']).toBe('chunked')
    expect(r.headers['content-length']).toBeUndefined()
    expect(r.body).toBe(chunked)
    // The connection's framing is intact: a second exchange works.
    up.respond = (_req, socket) => socket.write(ok('again'))
    g.send('GET /next HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect((await g.response()).body).toBe('again')
  })

  it('a real client decodes what it forwards (curl, chunked with trailers)', async () => {
    up.respond = (_req, socket) => socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n')
    const r = await curl(['--http1.1', '--cacert', h.proxy.caPath, '-x', h.proxy.url!, `https://api.test:${up.port}/c`])
    expect(r.status).toBe(200)
    expect(r.body).toBe('hello world')
  })

  it('a close-delimited body ends the guest connection too, and its upstream connection is not reused', async () => {
    up.respond = (req, socket) => {
      if (req.target === '/close') socket.end('HTTP/1.1 200 OK\r\nX-Kind: close\r\n\r\nuntil the end')
      else socket.write(ok())
    }
    const g = await guest()
    g.send('GET /close HTTP/1.1\r\nHost: api.test\r\n\r\n')
    const r = await g.response()
    expect(r.headers.connection).toBe('close')
    expect(r.body).toBe('until the end')
    expect(g.closed).toBe(true)
    const closedOn = up.requests.at(-1)!.connection
    const g2 = await guest()
    g2.send('GET /after HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect((await g2.response()).status).toBe(200)
    expect(up.requests.at(-1)!.connection).not.toBe(closedOn)
  })

  it.each([
    ['HEAD', 'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n', true],
    ['GET', 'HTTP/1.1 204 No Content\r\n\r\n', false],
    ['GET', 'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n', false],
  ])('%s answered with %j has no body, and the next exchange still lines up', async (method, answer, bodiless) => {
    up.respond = (req, socket) => socket.write(req.target === '/first' ? answer : ok('second'))
    const g = await guest()
    g.send(`${method} /first HTTP/1.1\r\nHost: api.test\r\n\r\nGET /second HTTP/1.1\r\nHost: api.test\r\n\r\n`)
    const first = await g.response({ bodiless })
    expect(first.status).toBe(Number(answer.slice(9, 12)))
    expect(first.body).toBe('')
    if (method === 'HEAD') expect(first.headers['content-length']).toBe('10')
    expect((await g.response()).body).toBe('second')
  })

  it('interim responses are not relayed; the final one is', async () => {
    up.respond = (_req, socket) => socket.write('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n' + ok('final'))
    const g = await guest()
    g.send('GET /hints HTTP/1.1\r\nHost: api.test\r\n\r\n')
    const r = await g.response()
    expect(r.status).toBe(200)
    expect(r.body).toBe('final')
    expect(g.unread).toBe('')
  })

  it('a response head that arrives in several reads is put together intact', async () => {
    const pieces = ['HTTP/1.1 200 OK\r\nX-First: one', '\r\nX-Second: two\r\nContent-Le', 'ngth: 5\r\n\r\nsplit']
    up.respond = (_req, socket) => {
      // Apart in time, so each piece is its own TLS record and its own read at the proxy.
      pieces.forEach((p, i) => setTimeout(() => socket.write(p), i * 30))
    }
    const g = await guest()
    g.send('GET /split HTTP/1.1\r\nHost: api.test\r\n\r\n')
    const r = await g.response()
    expect(r.status).toBe(200)
    expect(r.headers['x-first']).toBe('one')
    expect(r.headers['x-second']).toBe('two')
    expect(r.body).toBe('split')
  })

  it('hop-by-hop response headers stay on the upstream hop', async () => {
    up.respond = (_req, socket) => socket.write('HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=30\r\nX-Hop: secret-ish\r\nX-End: 1\r\nContent-Length: 2\r\n\r\nok')
    const g = await guest()
    g.send('GET /hop HTTP/1.1\r\nHost: api.test\r\n\r\n')
    const r = await g.response()
    expect(r.head).toBe('HTTP/1.1 200 OK\r\nX-End: 1\r\nContent-Length: 2')
  })

  it('hop-by-hop request headers are dropped and the policy header replaces the guest one', async () => {
    const g = await guest()
    g.send('GET /req HTTP/1.1\r\nHost: api.test\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: 5\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\nAuthorization: Bearer guest\r\nX-Keep: 1\r\n\r\n')
    await g.response()
    const seen = up.requests.at(-1)!
    expect(seen.names).toEqual(['host', 'te', 'X-Keep', 'Authorization'])
    expect(seen.headers.authorization).toBe(`Bearer ${SECRET}`)
  })

  it('streams a request body, split however it arrives, then serves a pipelined request after it', async () => {
    up.respond = (req, socket) => socket.write(ok(`${req.method} ${req.body.length}`))
    const g = await guest()
    const body = Buffer.alloc(300_000, 'b')
    g.send(Buffer.concat([Buffer.from(`POST /upload HTTP/1.1\r\nHost: api.test\r\nContent-Length: ${body.length}\r\n\r\n`), body.subarray(0, 1000)]))
    await new Promise((r) => setTimeout(r, 50))
    g.send(Buffer.concat([body.subarray(1000), Buffer.from('GET /after-body HTTP/1.1\r\nHost: api.test\r\n\r\n')]))
    expect((await g.response()).body).toBe(`POST ${body.length}`)
    expect((await g.response()).body).toBe('GET 0')
    const uploads = up.requests.filter((r) => r.target === '/upload')
    expect(uploads.at(-1)!.body.equals(body)).toBe(true)
  })

  it('an upstream that answers before the body is all there gets no more of it; the guest connection carries on', async () => {
    up.early = (target) => target === '/early'
    up.respond = (req, socket) => {
      if (req.target === '/early') socket.end('HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!')
      else socket.write(ok())
    }
    try {
      const g = await guest()
      g.send('POST /early HTTP/1.1\r\nHost: api.test\r\nContent-Length: 10\r\n\r\n01')
      const r = await g.response()
      expect(r.status).toBe(413)
      expect(r.body).toBe('big!')
      g.send('23456789GET /later HTTP/1.1\r\nHost: api.test\r\n\r\n')
      expect((await g.response()).status).toBe(200)
      expect(up.requests.at(-1)!.target).toBe('/later')
    } finally {
      up.early = undefined
    }
  })

  it.each(['TRACE', 'TRACK', 'trace'])('%s gets no injected header: the response would echo it to the guest', async (method) => {
    const before = up.requests.length
    const a = await guest()
    a.send(`${method} /echo HTTP/1.1\r\nHost: api.test\r\nX-Key: ${ph}\r\n\r\n`)
    expect((await a.response()).status).toBe(200)
    const seen = up.requests.slice(before)
    expect(seen.map((r) => r.method)).toEqual([method])
    expect(seen[0]!.headers['x-key']).toBe(ph)
    expect(seen[0]!.headers.authorization).toBeUndefined()
    expect(JSON.stringify(seen)).not.toContain(SECRET)
  })

  it('a Host naming another site than the connection is a 421 when a credential is at stake; the connection carries on', async () => {
    const before = { requests: up.requests.length, audit: h.audit.length }
    const g = await guest()
    g.send(`GET /fronted HTTP/1.1\r\nHost: attacker.example\r\nX-Key: ${ph}\r\n\r\n`)
    const r = await g.response()
    expect(r.status).toBe(421)
    expect(r.headers['x-hypeman-egress-error']).toBe('misdirected_request')
    expect(h.audit.slice(before.audit)).toContainEqual(expect.objectContaining({ type: 'denied', reason: 'misdirected_request', host: 'api.test' }))
    g.send(`GET /named HTTP/1.1\r\nHost: API.test.:${up.port}\r\n\r\n`)
    expect((await g.response()).status).toBe(200)
    const seen = up.requests.slice(before.requests)
    expect(seen.map((x) => x.target)).toEqual(['/named'])
    expect(seen[0]!.headers.authorization).toBe(`Bearer ${SECRET}`)
  })

  it('a Host naming another site is passed on untouched where no credential is at stake', async () => {
    const before = up.requests.length
    const g = await guest(h.proxy, `other.test:${up.port}`)
    g.send('GET /fronted HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n')
    expect((await g.response()).status).toBe(200)
    expect(up.requests.slice(before).map((x) => [x.target, x.headers.host])).toEqual([['/fronted', 'elsewhere.example']])
  })

  it('Connection cannot strip Content-Length from a request, so its body cannot turn into a request of its own upstream', async () => {
    const before = up.requests.length
    const smuggled = 'POST /echo HTTP/1.1\r\nHost: api.test\r\nContent-Length: 300\r\n\r\n'
    const g = await guest()
    g.send(`POST /first HTTP/1.1\r\nHost: api.test\r\nConnection: content-length, x-drop\r\nX-Drop: 1\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`)
    expect((await g.response()).status).toBe(200)
    g.send('GET /second HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect((await g.response()).status).toBe(200)
    const seen = up.requests.slice(before)
    expect(seen.map((x) => x.target)).toEqual(['/first', '/second'])
    expect(seen[0]!.headers['content-length']).toBe(String(smuggled.length))
    expect(seen[0]!.body.toString('latin1')).toBe(smuggled)
    expect(seen[0]!.headers['x-drop']).toBeUndefined()
  })

  it('Connection cannot strip Content-Length from a response either: the guest frames it as the proxy does', async () => {
    up.respond = (req, socket) => socket.write(req.target === '/named' ? 'HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello' : ok('next'))
    const g = await guest()
    g.send('GET /named HTTP/1.1\r\nHost: api.test\r\n\r\n')
    const r = await g.response()
    expect(r.headers['content-length']).toBe('5')
    expect(r.body).toBe('hello')
    g.send('GET /after HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect((await g.response()).body).toBe('next')
  })

  it('bytes an upstream sends after a HEAD response never answer a later request, of this source or another', async () => {
    const stray = 'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nJUNK'
    up.respond = (req, socket) => {
      if (req.method === 'HEAD') {
        // A server bug seen in the wild: the body of a HEAD response, sent anyway, later.
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${stray.length}\r\n\r\n`)
        setTimeout(() => socket.write(stray), 100)
      } else setTimeout(() => socket.write(ok(`for ${req.target}`)), 200)
    }
    const before = up.requests.length
    const a = await guest()
    a.send('HEAD /a HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect((await a.response({ bodiless: true })).status).toBe(200)
    const b = await guest(h.proxy, `api.test:${up.port}`, '127.0.0.2')
    b.send('GET /b HTTP/1.1\r\nHost: api.test\r\n\r\n')
    a.send('GET /a2 HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect((await b.response()).body).toBe('for /b')
    expect((await a.response()).body).toBe('for /a2')
    // Three connections: none reused after the HEAD, and none shared between the two sources.
    const on = Object.fromEntries(up.requests.slice(before).map((r) => [r.target, r.connection]))
    expect(new Set([on['/a'], on['/b'], on['/a2']]).size).toBe(3)
  })

  it('Connection: close from the guest closes after the response', async () => {
    const g = await guest()
    g.send('GET /bye HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n')
    const r = await g.response()
    expect(r.headers.connection).toBe('close')
    expect(await g.closes()).toBe(true)
  })

  it('plain HTTP through a tunnel takes the fast path too, and carries no secret', async () => {
    const g = await guestPlain()
    g.send(`GET /plain HTTP/1.1\r\nHost: api.test\r\nX-Key: ${ph}\r\n\r\n`)
    expect((await g.response()).status).toBe(200)
    const seen = plainUp.requests.at(-1)!
    expect(seen.headers['x-key']).toBe(ph)
    expect(seen.headers.authorization).toBeUndefined()
  })
})

describe('fast path large bodies', () => {
  /** Reads in short bursts until `done` settles, so the proxy's write budget fills again and again. */
  async function readSlowly<T>(g: RawGuest, done: Promise<T>): Promise<T> {
    let reading = true
    g.socket.pause()
    const ticker = setInterval(() => {
      g.socket.resume()
      setTimeout(() => reading && g.socket.pause(), 2)
    }, 10)
    try {
      return await done
    } finally {
      reading = false
      clearInterval(ticker)
      g.socket.resume()
    }
  }
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

  it.each([
    ['TLS', false],
    ['plain', true],
  ])('a large body reaches a slow %s guest byte for byte, and the upstream connection carries the next request', async (_kind, plain) => {
    const body = randomBytes(6 * 1024 * 1024 + 7)
    const upstream = plain ? plainUp : up
    upstream.respond = (req, socket) => {
      if (req.target !== '/big') return void socket.write(ok('after'))
      socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`)
      socket.write(body)
    }
    try {
      const g = plain ? await guestPlain() : await guest()
      g.send('GET /big HTTP/1.1\r\nHost: api.test\r\n\r\n')
      const r = await readSlowly(g, g.response({ ms: 60_000 }))
      expect(r.status).toBe(200)
      expect(r.body.length).toBe(body.length)
      expect(sha(Buffer.from(r.body, 'latin1'))).toBe(sha(body))
      const bigOn = upstream.requests.at(-1)!.connection
      g.send('GET /after HTTP/1.1\r\nHost: api.test\r\n\r\n')
      expect((await g.response()).body).toBe('after')
      expect(upstream.requests.at(-1)!.connection).toBe(bigOn)
    } finally {
      upstream.respond = (_req, socket) => socket.write(ok())
    }
  })

  it('a large close-delimited body reaches a slow guest whole before its connection ends', async () => {
    const body = randomBytes(5 * 1024 * 1024 + 3)
    up.respond = (_req, socket) => {
      socket.write('HTTP/1.1 200 OK\r\n\r\n')
      socket.end(body)
    }
    const g = await guest()
    g.send('GET /close-big HTTP/1.1\r\nHost: api.test\r\n\r\n')
    const r = await readSlowly(g, g.response({ ms: 60_000 }))
    expect(g.closed).toBe(true)
    expect(sha(Buffer.from(r.body, 'latin1'))).toBe(sha(body))
  })

  it('a large chunked body reaches a slow guest with its framing byte for byte', async () => {
    const sizes = [1, 16383, 16384, 16385, 65536, 300_000, 1_000_003, 7, 2_000_000]
    const pieces = sizes.map((n) => randomBytes(n))
    const wire = Buffer.concat([...pieces.flatMap((p) => [Buffer.from(`${p.length.toString(16)}\r\n`), p, Buffer.from('\r\n')]), Buffer.from('0\r\n\r\n')])
    up.respond = (req, socket) => {
      if (req.target !== '/chunked') return void socket.write(ok('after'))
      socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n')
      // Written in odd slices, so chunk boundaries fall anywhere within the proxy's reads.
      for (let at = 0; at < wire.length; at += 77_777) socket.write(wire.subarray(at, at + 77_777))
    }
    const g = await guest()
    g.send('GET /chunked HTTP/1.1\r\nHost: api.test\r\n\r\n')
    const r = await readSlowly(g, g.response({ ms: 60_000 }))
    expect(r.headers['transfer-encoding']).toBe('chunked')
    expect(sha(Buffer.from(r.body, 'latin1'))).toBe(sha(wire))
    g.send('GET /after HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect((await g.response()).body).toBe('after')
  })
})

/** A plain-HTTP guest inside a CONNECT tunnel (what `curl -p` does). */
async function guestPlain(): Promise<PlainGuest> {
  const { connect } = await import('node:net')
  const raw = connect({ host: '127.0.0.1', port: h.proxy.address!.port })
  await new Promise<void>((resolve) => raw.once('connect', () => resolve()))
  raw.write(`CONNECT api.test:${plainUp.port} HTTP/1.1\r\n\r\n`)
  await new Promise<void>((resolve) => raw.once('data', () => resolve()))
  const g = new RawGuest(raw as never)
  guests.push(g)
  return g
}
type PlainGuest = RawGuest

describe('fast path failures', () => {
  it('a response head the proxy cannot frame is a 502, and the guest connection survives', async () => {
    up.respond = (req, socket) => socket.write(req.target === '/bad' ? 'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx' : ok())
    const g = await guest()
    g.send('GET /bad HTTP/1.1\r\nHost: api.test\r\n\r\n')
    const r = await g.response()
    expect(r.status).toBe(502)
    expect(r.headers['x-hypeman-egress-error']).toBe('upstream_failed')
    expect(r.body).toContain('cannot frame')
    g.send('GET /good HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect((await g.response()).status).toBe(200)
  })

  it('chunked framing the proxy cannot follow is a 502 when it shows in the first read, a cut connection later', async () => {
    up.respond = (req, socket) => {
      // One write is one TLS record, which the proxy reads at once.
      const head = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n'
      if (req.target === '/bad-now') socket.write(`${head}zz\r\n`)
      else {
        socket.write(head)
        setTimeout(() => socket.write('zz\r\n'), 50)
      }
    }
    const g = await guest()
    g.send('GET /bad-now HTTP/1.1\r\nHost: api.test\r\n\r\n')
    const r = await g.response()
    expect(r.status).toBe(502)
    expect(r.headers['x-hypeman-egress-error']).toBe('upstream_failed')
    g.send('GET /bad-later HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect(await g.closes()).toBe(true)
    expect(g.unread).toMatch(/^HTTP\/1\.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n$/)
  })

  it('an upstream that closes mid-body cuts the guest connection (never a short success)', async () => {
    up.respond = (_req, socket) => socket.end('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part')
    const r = await curl(['--http1.1', '--cacert', h.proxy.caPath, '-x', h.proxy.url!, `https://api.test:${up.port}/short`])
    expect(r.exitCode).not.toBe(0)
    expect(h.proxy.metrics()).toMatch(/hypeman_egress_requests_total\{listener="explicit",scheme="https",status="aborted"\} [1-9]/)
  })

  it('an upstream that closes without answering is a 502', async () => {
    up.respond = (_req, socket) => socket.destroy()
    const g = await guest()
    g.send('POST /nothing HTTP/1.1\r\nHost: api.test\r\nContent-Length: 2\r\n\r\nhi')
    const r = await g.response()
    expect(r.status).toBe(502)
    expect(r.headers['x-hypeman-egress-error']).toBe('upstream_failed')
    expect(r.body).toBe(`upstream api.test:${up.port} closed the connection without answering\n`)
  })

  it('a kept-alive upstream connection that turns out dead is retried on a new one for a GET, not for a POST', async () => {
    const g = await guest()
    g.send('GET /warm HTTP/1.1\r\nHost: api.test\r\n\r\n')
    await g.response()
    const warm = up.requests.at(-1)!.connection
    // The next request on that connection is dropped unanswered, as a server that timed the
    // connection out at that moment would; requests on new connections are answered.
    up.respond = (req, socket) => (req.connection === warm && req.index > 1 ? socket.destroy() : socket.write(ok('fresh')))
    g.send('GET /retry HTTP/1.1\r\nHost: api.test\r\n\r\n')
    const r = await g.response()
    expect(r.status).toBe(200)
    expect(r.body).toBe('fresh')
    expect(up.requests.filter((x) => x.target === '/retry').map((x) => x.connection === warm)).toEqual([true, false])

    g.send('GET /warm-again HTTP/1.1\r\nHost: api.test\r\n\r\n')
    await g.response()
    const warm2 = up.requests.at(-1)!.connection
    up.respond = (req, socket) => (req.connection === warm2 && req.index > 1 ? socket.destroy() : socket.write(ok('fresh')))
    g.send('POST /no-replay HTTP/1.1\r\nHost: api.test\r\nContent-Length: 1\r\n\r\nx')
    expect((await g.response()).status).toBe(502)
    expect(up.requests.filter((x) => x.target === '/no-replay')).toHaveLength(1)
  })

  it('honours the upstream Keep-Alive timeout: an expired connection is not reused', async () => {
    up.respond = (_req, socket) => socket.write(ok('ka', 'Keep-Alive: timeout=1\r\n'))
    const g = await guest()
    g.send('GET /ka1 HTTP/1.1\r\nHost: api.test\r\n\r\n')
    await g.response()
    g.send('GET /ka2 HTTP/1.1\r\nHost: api.test\r\n\r\n')
    await g.response()
    const [a, b] = up.requests.filter((x) => x.target.startsWith('/ka')).map((x) => x.connection)
    // timeout=1 leaves no margin (a second of it is kept back), so each request gets a new connection.
    expect(a).not.toBe(b)
  })

  it('counts the upstream Keep-Alive timeout from the response head, not from the end of a slow body', async () => {
    // The upstream's clock may start long before the proxy has the last byte: a body written at
    // once waits in kernel buffers while a slow guest drains it. Here the body ends 1.2 s after
    // the head, past what timeout=2 leaves after its second of margin, so the connection is
    // not reused: a request sent on it could meet the upstream's close (and a POST cannot be replayed).
    up.respond = (req, socket) => {
      if (req.target !== '/ka-slow') return void socket.write(ok('next'))
      socket.write('HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2\r\nContent-Length: 4\r\n\r\nsl')
      setTimeout(() => socket.write('ow'), 1200)
    }
    const g = await guest()
    g.send('GET /ka-slow HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect((await g.response()).body).toBe('slow')
    g.send('GET /ka-next HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect((await g.response()).body).toBe('next')
    const [a, b] = ['/ka-slow', '/ka-next'].map((t) => up.requests.find((x) => x.target === t)!.connection)
    expect(a).not.toBe(b)
  })

  it('an upstream that never answers is a 504 after upstreamHeadersTimeout', async () => {
    up.respond = () => {}
    const g = await guest(timeouts)
    const t0 = Date.now()
    g.send('GET /silent HTTP/1.1\r\nHost: api.test\r\n\r\n')
    const r = await g.response()
    expect(r.status).toBe(504)
    expect(r.headers['x-hypeman-egress-error']).toBe('upstream_timeout')
    expect(r.body).toBe(`api.test:${up.port} sent no response headers in time\n`)
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250)
    up.respond = (_req, socket) => socket.write(ok())
    g.send('GET /after-timeout HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect((await g.response()).status).toBe(200)
  })

  it('a body that stalls longer than upstreamBodyTimeout cuts the guest connection', async () => {
    up.respond = (_req, socket) => socket.write('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc')
    const g = await guest(timeouts)
    g.send('GET /stall HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect(await g.closes(3000)).toBe(true)
    expect(g.unread).toMatch(/abc$/)
  })

  it('an unreachable upstream is a 502 naming the failure', async () => {
    // Named, so the guard lets it through: nothing listens there.
    const p = await h.another({ allowHostServices: ['127.0.0.1:1'] })
    p.policies.set('127.0.0.1', bearerPolicy(['api.test']))
    const g = await guest(p, 'api.test:1')
    g.send('GET / HTTP/1.1\r\nHost: api.test\r\n\r\n')
    const r = await g.response()
    expect(r.status).toBe(502)
    expect(r.headers['x-hypeman-egress-error']).toBe('upstream_connect')
  })

  it('a refused request with a body is answered, its body read and dropped, and the connection carries on', async () => {
    const p2 = h.proxy.placeholderFor('127.0.0.2', 'OPENAI_API_KEY')
    const before = up.requests.length
    const g = await guest(h.proxy, `other.test:${up.port}`, '127.0.0.2')
    g.send(`POST /blocked HTTP/1.1\r\nHost: other.test\r\nX-Key: ${p2}\r\nContent-Length: 5\r\n\r\n12`)
    const r = await g.response()
    expect(r.status).toBe(403)
    expect(r.headers['x-hypeman-egress-error']).toBe('placeholder_blocked')
    g.send('345GET /fine HTTP/1.1\r\nHost: other.test\r\n\r\n')
    expect((await g.response()).status).toBe(200)
    expect(up.requests.slice(before).map((x) => x.target)).toEqual(['/fine'])
  })
})

describe('hand-off to the general path', () => {
  it.each([
    ['Expect: 100-continue', ['--http1.1', '-H', 'Expect: 100-continue', '--data-binary', 'payload'], 'expect'],
    ['a chunked upload', ['--http1.1', '-H', 'Transfer-Encoding: chunked', '--data-binary', 'payload'], 'transfer_encoding'],
  ])('%s is served by the general path', async (_what, args, reason) => {
    const before = handoffs()[reason] ?? 0
    const r = await curl([...args, '--cacert', h.proxy.caPath, '-x', h.proxy.url!, `https://api.test:${h.extra.echo.port}/echo`])
    expect(r.status).toBe(200)
    const seen = JSON.parse(r.body) as { bodyBytes: number; headers: Record<string, string> }
    expect(seen.bodyBytes).toBe('payload'.length)
    expect(seen.headers.authorization).toBe(`Bearer ${SECRET}`)
    expect(handoffs()[reason]).toBe(before + 1)
  })

  it('an HTTP/1.0 request is served by the general path', async () => {
    const before = handoffs().request_line ?? 0
    up.respond = (req, socket) => socket.write(ok(`${req.method} ${req.body.toString()}`))
    const g = await guest()
    g.send('POST /old HTTP/1.0\r\nHost: api.test\r\nContent-Length: 3\r\n\r\nabc')
    const r = await g.response()
    expect(r.body).toBe('POST abc')
    expect(up.requests.at(-1)!.headers.authorization).toBe(`Bearer ${SECRET}`)
    expect(handoffs().request_line).toBe(before + 1)
  })

  it('a connection that starts on the fast path hands off mid-way with its unread bytes intact', async () => {
    up.respond = (req, socket) => socket.write(ok(`${req.method} ${req.target}`))
    const g = await guest()
    g.send('GET /fast HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect((await g.response()).body).toBe('GET /fast')
    const before = handoffs().transfer_encoding ?? 0
    // A chunked upload (general path) pipelined with a GET behind it, in one write.
    g.send('POST /slow HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /then HTTP/1.1\r\nHost: api.test\r\n\r\n')
    expect((await g.response()).body).toBe('POST /slow')
    expect((await g.response()).body).toBe('GET /then')
    expect(handoffs().transfer_encoding).toBe(before + 1)
    expect(up.requests.find((r) => r.target === '/slow')!.body.toString()).toBe('abc')
  })
})

describe('http1FastPath: false', () => {
  it('serves everything through the general path, with the same result', async () => {
    const general = await h.another({ http1FastPath: false })
    general.policies.set('127.0.0.1', bearerPolicy(['api.test']))
    const g = await guest(general)
    g.send(`GET /general HTTP/1.1\r\nHost: api.test\r\nX-Key: ${ph}\r\n\r\n`)
    const r = await g.response()
    expect(r.status).toBe(200)
    const seen = up.requests.at(-1)!
    expect(seen.target).toBe('/general')
    expect(seen.headers.authorization).toBe(`Bearer ${SECRET}`)
    expect(general.metrics()).not.toMatch(/hypeman_egress_http1_handoffs_total\{/)
    await general.close()
  })

  it('keeps a Content-Length that Connection names there too, and drops the fields it names', async () => {
    const general = await h.another({ http1FastPath: false })
    general.policies.set('127.0.0.1', bearerPolicy(['api.test']))
    up.respond = (_req, socket) => socket.write('HTTP/1.1 200 OK\r\nConnection: content-length, x-hop\r\nX-Hop: 1\r\nContent-Length: 5\r\n\r\nhello')
    const g = await guest(general)
    g.send('GET /named HTTP/1.1\r\nHost: api.test\r\n\r\n')
    const r = await g.response()
    expect(r.headers['content-length']).toBe('5')
    expect(r.headers['transfer-encoding']).toBeUndefined()
    expect(r.headers['x-hop']).toBeUndefined()
    expect(r.body).toBe('hello')
    await general.close()
  })

  it('rejects a non-boolean value', async () => {
    await expect(h.another({ http1FastPath: 'yes' as never })).rejects.toMatchObject({ code: 'invalid_input', field: 'http1FastPath' })
  })
})
