/**
 * WebSocket upgrades pass through: the handshake request gets the credential like any request,
 * then frames flow untouched. undici's WebSocket client is the guest, through the explicit
 * proxy (wss:// via CONNECT, ws:// via an absolute URI) and through a redirected connection.
 */
import type { LookupFunction } from 'node:net'
import { Agent, ProxyAgent, WebSocket } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { RawGuest } from './support/guest.js'
import { bearerPolicy, type Harness, SECRET, startHarness } from './support/harness.js'

let h: Harness
let ph: string

beforeAll(async () => {
  h = await startHarness()
  ph = h.proxy.policies.set('127.0.0.1', bearerPolicy(['api.test'])).placeholders.OPENAI_API_KEY!
})
afterAll(() => h?.close())

/** Opens a socket, sends one message and resolves with the echo (or the failure). */
function roundTrip(url: string, dispatcher: Agent | ProxyAgent, headers: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { dispatcher, headers } as never)
    const timer = setTimeout(() => reject(new Error('no echo in time')), 10_000)
    ws.addEventListener('open', () => ws.send('hello'))
    ws.addEventListener('message', (e) => {
      clearTimeout(timer)
      resolve(String(e.data))
      ws.close()
    })
    ws.addEventListener('error', (e) => {
      clearTimeout(timer)
      reject(new Error(`websocket error: ${(e as unknown as { message?: string }).message ?? 'failed'}`))
    })
  })
}

describe('WebSocket', () => {
  it('wss:// through CONNECT: the handshake carries the real value, frames flow', async () => {
    const dispatcher = new ProxyAgent({ uri: h.proxy.url!, requestTls: { ca: h.proxy.caPem } })
    try {
      const echo = await roundTrip(`wss://api.test:${h.https.port}/ws`, dispatcher, { authorization: `Bearer ${ph}` })
      expect(echo).toBe(`Bearer ${SECRET}|hello`)
      const handshake = h.https.seen.at(-1)!
      expect(handshake.headers.upgrade).toBe('websocket')
      expect(handshake.headers.authorization).toBe(`Bearer ${SECRET}`)
    } finally {
      await dispatcher.close()
    }
  })

  it('wss:// through a redirected connection', async () => {
    const toProxy: LookupFunction = (_h, opts, cb) => {
      if ((opts as { all?: boolean }).all) (cb as (e: null, a: Array<{ address: string; family: number }>) => void)(null, [{ address: '127.0.0.1', family: 4 }])
      else (cb as (e: null, a: string, f: number) => void)(null, '127.0.0.1', 4)
    }
    const dispatcher = new Agent({ connect: { ca: h.proxy.caPem, lookup: toProxy } })
    try {
      expect(await roundTrip(`wss://api.test:${h.proxy.transparentAddress!.port}/ws`, dispatcher)).toBe(`Bearer ${SECRET}|hello`)
    } finally {
      await dispatcher.close()
    }
  })

  it('ws:// (plain) passes through without the secret', async () => {
    const dispatcher = new ProxyAgent({ uri: h.proxy.url! })
    try {
      expect(await roundTrip(`ws://api.test:${h.http.port}/ws`, dispatcher, { authorization: `Bearer ${ph}` })).toBe(`Bearer ${ph}|hello`)
    } finally {
      await dispatcher.close()
    }
  })

  it('a handshake the proxy refuses is answered with its own status line (421 Misdirected Request) and the connection closed', async () => {
    const g = await RawGuest.open(h.proxy, `api.test:${h.https.port}`)
    try {
      const before = h.https.seen.length
      g.send('GET /ws HTTP/1.1\r\nHost: other.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')
      const r = await g.response()
      expect(r.head.split('\r\n')[0]).toBe('HTTP/1.1 421 Misdirected Request')
      expect(r.headers['x-hypeman-egress-error']).toBe('misdirected_request')
      expect(r.body).toContain('other.test')
      expect(await g.closes()).toBe(true)
      expect(h.https.seen.length).toBe(before)
    } finally {
      g.destroy()
    }
  })

  it('a refused upgrade loses the fields its Connection header names, never its Content-Length', async () => {
    const g = await RawGuest.open(h.proxy, `api.test:${h.https.port}`)
    try {
      g.send('GET /ws-refuse-hop HTTP/1.1\r\nHost: api.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')
      const r = await g.response()
      expect(r.status).toBe(403)
      expect(r.headers['x-kept']).toBe('1')
      expect(r.headers['x-hop']).toBeUndefined()
      expect(r.headers['content-length']).toBe('7')
      expect(r.headers.connection).toBe('close')
      expect(r.body).toBe('refused')
    } finally {
      g.destroy()
    }
  })

  it('a refused upgrade reaches the client as the upstream answered it', async () => {
    const dispatcher = new ProxyAgent({ uri: h.proxy.url!, requestTls: { ca: h.proxy.caPem } })
    try {
      await expect(roundTrip(`wss://api.test:${h.https.port}/ws-refuse`, dispatcher)).rejects.toThrow(/websocket error/)
      expect(h.https.seen.at(-1)!.url).toBe('/ws-refuse')
      expect(h.proxy.metrics()).toMatch(/hypeman_egress_requests_total\{listener="explicit",scheme="https",status="4xx"\} [1-9]/)
    } finally {
      await dispatcher.close()
    }
  })
})
