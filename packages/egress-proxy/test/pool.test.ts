/**
 * The fast path's upstream connection pool against real TLS servers on loopback: reuse, the
 * per-origin limit, idle expiry, TLS session resumption, verification, and the SSRF guard on
 * the address it dials.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createServer, type Server, type TLSSocket } from 'node:tls'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DestinationGuard } from '../src/guard.js'
import { type PooledConnection, UpstreamPool } from '../src/pool.js'
import { upstreamError } from '../src/upstream-errors.js'
import { upstreamTrust } from '../src/upstream.js'
import { Watchdog } from '../src/watchdog.js'
import { makePki, type TestPki } from './support/pki.js'
import { testLookup } from './support/harness.js'

let dir: string
let pki: TestPki
let good: Server
let goodPort: number
let bad: Server
let badPort: number
const watchdog = new Watchdog(25)

const serverSockets = new Set<TLSSocket>()

async function serve(cert: { cert: string; key: string }, onSocket: (s: TLSSocket) => void): Promise<[Server, number]> {
  const server = createServer({ cert: readFileSync(cert.cert), key: readFileSync(cert.key) }, (s) => {
    serverSockets.add(s)
    s.on('close', () => serverSockets.delete(s))
    onSocket(s)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
  return [server, (server.address() as { port: number }).port]
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-pool-'))
  pki = await makePki(dir)
  ;[good, goodPort] = await serve(pki.good, (s) => {
    s.on('error', () => {})
    s.on('data', (d: Buffer) => {
      if (d.toString() === 'poke') s.write('unsolicited')
    })
  })
  ;[bad, badPort] = await serve(pki.selfSigned, (s) => s.on('error', () => {}))
})
afterAll(async () => {
  watchdog.stop()
  for (const s of serverSockets) s.destroy()
  await new Promise((r) => good?.close(r))
  await new Promise((r) => bad?.close(r))
  await rm(dir, { recursive: true, force: true })
})

function pool(opts: { services?: string[]; ports?: number[]; limit?: number; idleMs?: number; self?: boolean } = {}): UpstreamPool {
  // The servers are on loopback, the proxy's own host: only named host services are dialled.
  const guard = new DestinationGuard({
    allowHostServices: opts.services ?? [`127.0.0.1:${goodPort}`, `127.0.0.1:${badPort}`],
    ...(opts.ports ? { allowPorts: opts.ports } : {}),
    allowDestinations: ['127.0.0.0/8'],
    lookup: testLookup,
  })
  if (opts.self) guard.addListener({ host: '127.0.0.1', port: goodPort })
  return new UpstreamPool({
    guard,
    trust: upstreamTrust(pki.caPem),
    connectTimeoutMs: 5000,
    idleTimeoutMs: opts.idleMs ?? 30_000,
    connectionsPerOrigin: opts.limit ?? 8,
    watchdog,
  })
}

function acquire(p: UpstreamPool, host: string, port: number, fresh = false, partition = '10.0.0.1'): Promise<PooledConnection> {
  return new Promise((resolve, reject) => {
    const waiter = { acquired: (err: Error | null, conn: PooledConnection | null) => (err ? reject(err) : resolve(conn!)) }
    if (fresh) p.acquireFresh(partition, host, port, true, waiter)
    else p.acquire(partition, host, port, true, waiter)
  })
}

const closed = (conn: PooledConnection) => new Promise<void>((resolve) => (conn.socket.destroyed ? resolve() : conn.socket.once('close', () => resolve())))

describe('UpstreamPool', () => {
  it('reuses a released connection, most recent first, and verifies TLS against the name', async () => {
    const p = pool()
    const a = await acquire(p, 'api.test', goodPort)
    const b = await acquire(p, 'api.test', goodPort)
    expect(a).not.toBe(b)
    expect((a.socket as TLSSocket).authorized).toBe(true)
    expect((a.socket as TLSSocket).servername).toBe('api.test')
    p.release(a)
    p.release(b)
    expect(await acquire(p, 'api.test', goodPort)).toBe(b)
    expect(await acquire(p, 'api.test', goodPort)).toBe(a)
    p.destroy()
  })

  it('a connection released while paused reads again for its next user', async () => {
    const p = pool()
    const a = await acquire(p, 'api.test', goodPort)
    a.socket.pause()
    p.release(a)
    const b = await acquire(p, 'api.test', goodPort)
    expect(b).toBe(a)
    const got = new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('nothing read after release')), 3000)
      b.user = {
        onUpstreamData: (chunk) => {
          clearTimeout(timer)
          resolve(chunk.toString())
        },
        onUpstreamEnd: () => {},
        onUpstreamClose: () => {},
        onUpstreamDrain: () => {},
        onUpstreamTimeout: () => {},
      }
    })
    b.socket.write('poke')
    expect(await got).toBe('unsolicited')
    p.destroy()
  })

  it('keeps origins apart by name even when they share an address', async () => {
    const p = pool()
    const a = await acquire(p, 'api.test', goodPort)
    p.release(a)
    const b = await acquire(p, 'other.test', goodPort)
    expect(b).not.toBe(a)
    p.destroy()
  })

  it('resumes the TLS session on a new connection to the same origin', async () => {
    const p = pool()
    const a = await acquire(p, 'api.test', goodPort)
    // TLS 1.3 tickets arrive just after the handshake.
    await new Promise((r) => setTimeout(r, 50))
    const b = await acquire(p, 'api.test', goodPort, true)
    expect((a.socket as TLSSocket).isSessionReused()).toBe(false)
    expect((b.socket as TLSSocket).isSessionReused()).toBe(true)
    p.destroy()
  })

  it('never lends one partition (source) a connection another released, nor makes it wait for one, but shares TLS sessions', async () => {
    const p = pool({ limit: 1 })
    const a = await acquire(p, 'api.test', goodPort, false, '10.0.0.1')
    await new Promise((r) => setTimeout(r, 50))
    // Partition B is not held back by A's connection at the limit: it gets its own.
    const b = await acquire(p, 'api.test', goodPort, false, '10.0.0.2')
    expect(b).not.toBe(a)
    expect((b.socket as TLSSocket).isSessionReused()).toBe(true)
    p.release(a)
    p.release(b)
    expect(await acquire(p, 'api.test', goodPort, false, '10.0.0.2')).toBe(b)
    const c = await acquire(p, 'api.test', goodPort, false, '10.0.0.3')
    expect([a, b]).not.toContain(c)
    expect(await acquire(p, 'api.test', goodPort, false, '10.0.0.1')).toBe(a)
    p.destroy()
  })

  it('makes requests beyond the per-origin limit wait for a released connection', async () => {
    const p = pool({ limit: 1 })
    const a = await acquire(p, 'api.test', goodPort)
    let second: PooledConnection | undefined
    const waiting = acquire(p, 'api.test', goodPort).then((c) => (second = c))
    await new Promise((r) => setTimeout(r, 50))
    expect(second).toBeUndefined()
    p.release(a)
    expect(await waiting).toBe(a)
    // A closed connection frees its slot for the next waiter too.
    const third = acquire(p, 'api.test', goodPort)
    a.socket.destroy()
    expect(await third).not.toBe(a)
    p.destroy()
  })

  it("does not hand a waiter a connection past the upstream's keep-alive: the waiter gets a new one", async () => {
    const p = pool({ limit: 1 })
    const a = await acquire(p, 'api.test', goodPort)
    const waiting = acquire(p, 'api.test', goodPort)
    // Less than the second of margin left of the upstream's Keep-Alive timeout.
    p.release(a, 500)
    const b = await waiting
    expect(b).not.toBe(a)
    expect(a.socket.destroyed).toBe(true)
    p.destroy()
  })

  it('closes connections idle for longer than the idle timeout, and those the upstream closed or wrote to', async () => {
    const p = pool({ idleMs: 100 })
    const a = await acquire(p, 'api.test', goodPort)
    p.release(a)
    await closed(a)
    expect(p.size).toBe(0)

    const b = await acquire(p, 'api.test', goodPort)
    p.release(b)
    b.socket.write('poke')
    await closed(b)
    p.destroy()
  })

  it('refuses a certificate that does not verify, with the code the guest will see', async () => {
    const p = pool()
    const err = await acquire(p, 'api.test', badPort).catch((e: unknown) => e)
    expect(upstreamError(err, 'api.test', badPort)).toMatchObject({ code: 'upstream_tls', message: expect.stringContaining('DEPTH_ZERO_SELF_SIGNED_CERT') })
    p.destroy()
  })

  it('checks the address and port it dials against the guard, and never dials the proxy itself', async () => {
    const strict = pool({ services: [`127.0.0.1:${badPort}`] })
    await expect(acquire(strict, 'api.test', goodPort)).rejects.toMatchObject({ code: 'port_blocked' })
    strict.destroy()
    const unnamed = pool({ services: [], ports: [goodPort] })
    await expect(acquire(unnamed, 'api.test', goodPort)).rejects.toMatchObject({ code: 'host_address_blocked' })
    unnamed.destroy()
    // Named as a host service, and still refused: it is the proxy's own listener.
    const self = pool({ self: true })
    await expect(acquire(self, 'api.test', goodPort)).rejects.toMatchObject({ code: 'host_address_blocked', message: expect.stringContaining('itself') })
    self.destroy()
  })

  it('close() ends idle connections and tells waiters; destroy() ends busy ones', async () => {
    const p = pool({ limit: 1 })
    const busy = await acquire(p, 'api.test', goodPort)
    const waiter = acquire(p, 'api.test', goodPort)
    p.close()
    await expect(waiter).rejects.toMatchObject({ code: 'proxy_closed' })
    expect(busy.socket.destroyed).toBe(false)
    p.destroy()
    await closed(busy)
    await expect(acquire(p, 'api.test', goodPort)).rejects.toMatchObject({ code: 'proxy_closed' })
  })
})

describe('Watchdog', () => {
  it('expires an item once its deadline passes, and never one without a deadline', async () => {
    const w = new Watchdog(10)
    const expired: string[] = []
    const soon = { deadline: performance.now() + 30, expire: () => expired.push('soon') }
    const never = { deadline: Number.POSITIVE_INFINITY, expire: () => expired.push('never') }
    w.add(soon)
    w.add(never)
    await new Promise((r) => setTimeout(r, 120))
    expect(expired).toEqual(['soon'])
    w.stop()
  })
})
