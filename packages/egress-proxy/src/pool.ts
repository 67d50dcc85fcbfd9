/**
 * Kept-alive upstream connections for the HTTP/1.1 fast path, pooled per source and origin
 * (scheme, host as the guest named it, port): a connection never carries two sources' requests
 * (see acquire); only TLS sessions, which carry nothing of a guest's, are resumed across sources.
 * A connection is dialled through the SSRF guard (the checked address is the one dialled), and
 * TLS is verified against the host name with the proxy's trust store. Each socket carries one set of
 * listeners for its whole life; they hand events to whichever exchange holds the socket, so
 * lending a socket out costs no listener churn.
 *
 * Response bytes are read with `onread` into one buffer the pool owns rather than as 'data'
 * events, and exchanges get views into it: no Buffer per chunk and none of the Readable stream
 * machinery a 'data' chunk goes through (bench/proxy: together most of what the proxy spent per
 * relayed MiB beyond TLS itself). An exchange copies what it keeps past the call.
 */
import { connect as netConnect, isIP, type OnReadOpts, type Socket } from 'node:net'
import { type ConnectionOptions, connect as tlsConnect, type SecureContext } from 'node:tls'
import { EgressError } from './errors.js'
import type { DestinationGuard } from './guard.js'
import { upstreamTimeout } from './upstream-errors.js'
import type { Watchdog, Watched } from './watchdog.js'

/** What an exchange holding an upstream connection is told. */
export interface UpstreamUser {
  /** `chunk` is a view into the pool's read buffer, valid only during this call: copy what you keep. */
  onUpstreamData(chunk: Buffer): void
  /** The upstream ended its side (close-delimited bodies end here). */
  onUpstreamEnd(): void
  /** The socket is gone; `error` when it failed. Always the last event. */
  onUpstreamClose(error: Error | undefined): void
  onUpstreamDrain(): void
  /** The deadline the exchange set (`deadline`) passed. */
  onUpstreamTimeout(): void
}

export interface PoolOptions {
  guard: DestinationGuard
  trust: SecureContext
  connectTimeoutMs: number
  /** How long an idle connection is kept (shortened by the upstream's own Keep-Alive timeout). */
  idleTimeoutMs: number
  connectionsPerOrigin: number
  /** Checks idle expiry and the deadlines exchanges set. */
  watchdog: Watchdog
}

export class PooledConnection implements Watched {
  user: UpstreamUser | null = null
  /** Requests this connection has carried; above 0 it is a reused connection. */
  uses = 0
  /**
   * performance.now() after which the connection is dropped when idle, or its exchange told
   * (headers or body timeout); Infinity while nothing is due.
   */
  deadline = Number.POSITIVE_INFINITY
  private error: Error | undefined

  constructor(
    readonly socket: Socket,
    readonly key: string,
    pool: UpstreamPool,
  ) {
    socket.on('end', () => {
      if (this.user) this.user.onUpstreamEnd()
      else socket.destroy()
    })
    socket.on('drain', () => this.user?.onUpstreamDrain())
    socket.on('error', (err) => {
      this.error ??= err
      socket.destroy()
    })
    socket.on('close', () => {
      pool.forget(this)
      const user = this.user
      this.user = null
      user?.onUpstreamClose(this.error)
    })
  }

  /** Bytes read from the upstream, valid only during this call. */
  data(chunk: Buffer): void {
    if (this.user) this.user.onUpstreamData(chunk)
    // Bytes nobody asked for: the connection's framing can no longer be trusted.
    else this.socket.destroy()
  }

  get alive(): boolean {
    return !this.socket.destroyed && this.socket.writable && this.socket.readable
  }

  expire(): void {
    if (this.user) this.user.onUpstreamTimeout()
    else this.socket.destroy()
  }
}

/** Who asked for a connection; an object rather than a callback, so asking allocates nothing. */
export interface PoolWaiter {
  acquired(err: Error | null, conn: PooledConnection | null): void
}

interface Origin {
  idle: PooledConnection[]
  open: number
  waiting: Array<{ partition: string; host: string; port: number; tls: boolean; cb: PoolWaiter }>
}

const SESSION_CACHE_MAX = 1000

/** Larger than a TLS record (16 KiB) and than what one TCP read usually brings. */
const READ_BUFFER_BYTES = 64 * 1024

/** An origin's key; the pool's entries add the partition, its TLS sessions do not. */
const originKey = (host: string, port: number, tls: boolean): string => `${tls ? 's' : 'p'}|${host}|${port}`

export class UpstreamPool {
  private readonly origins = new Map<string, Origin>()
  private readonly all = new Set<PooledConnection>()
  private readonly sessions = new Map<string, Buffer>()
  /** Every socket's `onread` target: callbacks run one at a time, and nothing keeps a view past one. */
  private readonly readBuffer = Buffer.allocUnsafe(READ_BUFFER_BYTES)
  private closed = false

  constructor(private readonly opts: PoolOptions) {}

  /** Idle and busy connections, for tests and metrics. */
  get size(): number {
    return this.all.size
  }

  /**
   * Lends a connection to `host:port` (TLS or not): an idle one when there is one (the most
   * recently used), else a new one, else (at the per-origin limit) the next one released.
   * Connections are never shared between partitions (the proxy's sources): an upstream that
   * sends bytes after a complete response (a body after a HEAD, say) would otherwise have one
   * guest read the response to another's request, credential and all.
   */
  acquire(partition: string, host: string, port: number, tls: boolean, cb: PoolWaiter): void {
    const found = this.origin(partition, host, port, tls, cb)
    if (!found) return
    const { key, origin } = found
    const now = performance.now()
    while (origin.idle.length > 0) {
      const conn = origin.idle.pop()!
      if (conn.alive && conn.deadline > now) {
        conn.deadline = Number.POSITIVE_INFINITY
        cb.acquired(null, conn)
        return
      }
      conn.socket.destroy()
    }
    if (origin.open >= this.opts.connectionsPerOrigin) {
      origin.waiting.push({ partition, host, port, tls, cb })
      return
    }
    this.dial(key, origin, host, port, tls, cb)
  }

  /** A fresh connection, never an idle one (a request that cannot be retried on a stale socket). */
  acquireFresh(partition: string, host: string, port: number, tls: boolean, cb: PoolWaiter): void {
    const found = this.origin(partition, host, port, tls, cb)
    if (found) this.dial(found.key, found.origin, host, port, tls, cb)
  }

  /** The origin's entry, made on first use; none (and `cb` told) once the pool is closed. */
  private origin(partition: string, host: string, port: number, tls: boolean, cb: PoolWaiter): { key: string; origin: Origin } | undefined {
    if (this.closed) {
      cb.acquired(new EgressError('proxy_closed', 'the proxy is shutting down'), null)
      return undefined
    }
    const key = `${originKey(host, port, tls)}|${partition}`
    let origin = this.origins.get(key)
    if (!origin) {
      origin = { idle: [], open: 0, waiting: [] }
      this.origins.set(key, origin)
    }
    return { key, origin }
  }

  /** Takes a connection back after a complete exchange; `keepAliveMs` is what is left of the upstream's own limit. */
  release(conn: PooledConnection, keepAliveMs?: number): void {
    conn.user = null
    conn.uses++
    // An exchange may have paused reading (its guest was behind) and completed on bytes decrypted
    // before the pause took hold; an idle connection must read, or the next exchange waits forever
    // and a close or stray bytes from the upstream go unnoticed.
    conn.socket.resume()
    conn.deadline = Number.POSITIVE_INFINITY
    const origin = this.origins.get(conn.key)
    if (this.closed || !origin || !conn.alive) {
      conn.socket.destroy()
      return
    }
    // Leave a second of margin before the upstream's own timeout, as undici does. One past it
    // goes even with exchanges waiting: its close brings a waiter a fresh dial (forget).
    const ttl = keepAliveMs === undefined ? this.opts.idleTimeoutMs : Math.min(this.opts.idleTimeoutMs, keepAliveMs - 1000)
    if (ttl <= 0) {
      conn.socket.destroy()
      return
    }
    const waiter = origin.waiting.shift()
    if (waiter) {
      waiter.cb.acquired(null, conn)
      return
    }
    conn.deadline = performance.now() + ttl
    origin.idle.push(conn)
  }

  /** Called once per connection when its socket closed. */
  forget(conn: PooledConnection): void {
    if (!this.all.delete(conn)) return
    this.opts.watchdog.delete(conn)
    const origin = this.origins.get(conn.key)
    if (!origin) return
    origin.open--
    const at = origin.idle.indexOf(conn)
    if (at >= 0) origin.idle.splice(at, 1)
    const waiter = origin.waiting.shift()
    if (waiter && !this.closed) this.dial(conn.key, origin, waiter.host, waiter.port, waiter.tls, waiter.cb)
    else if (origin.open === 0 && origin.waiting.length === 0) this.origins.delete(conn.key)
  }

  private dial(key: string, origin: Origin, host: string, port: number, tls: boolean, cb: PoolWaiter): void {
    origin.open++
    let settled = false
    const fail = (err: Error) => {
      if (settled) return
      settled = true
      origin.open--
      if (origin.open === 0 && origin.idle.length === 0 && origin.waiting.length === 0) this.origins.delete(key)
      cb.acquired(err, null)
      // A waiter behind a failed dial gets its own attempt (and most likely the same answer).
      const next = origin.waiting.shift()
      if (next) this.acquire(next.partition, next.host, next.port, next.tls, next.cb)
    }
    this.opts.guard.resolve(host, port).then(({ address }) => {
      if (this.closed) return fail(new EgressError('proxy_closed', 'the proxy is shutting down'))
      // TLS sessions carry nothing of a guest's, so every partition resumes the origin's.
      const session = tls ? this.sessions.get(originKey(host, port, tls)) : undefined
      let conn: PooledConnection | undefined
      const onread: OnReadOpts = {
        buffer: this.readBuffer,
        callback: (n: number, buf: Buffer) => {
          if (conn) conn.data(buf.subarray(0, n))
          // Before the connection is lent out nothing was asked: unsolicited bytes, as above.
          else socket.destroy()
          return true
        },
      }
      const socket: Socket = tls
        ? tlsConnect({
            host: address,
            port,
            secureContext: this.opts.trust,
            // SNI and the identity check use the name the guest asked for, never the address.
            ...(isIP(host) === 0 ? { servername: host } : {}),
            ALPNProtocols: ['http/1.1'],
            ...(session ? { session } : {}),
            // tls.connect takes `onread` (documented in its options); @types/node omits it.
            onread,
          } as ConnectionOptions)
        : netConnect({ host: address, port, onread })
      const timer = setTimeout(
        () => socket.destroy(upstreamTimeout(host, port, 'connect')),
        this.opts.connectTimeoutMs,
      )
      const onError = (err: Error) => {
        clearTimeout(timer)
        socket.destroy()
        fail(err)
      }
      socket.once('error', onError)
      if (tls) {
        socket.on('session', (s: Buffer) => {
          if (this.sessions.size >= SESSION_CACHE_MAX) this.sessions.clear()
          this.sessions.set(originKey(host, port, tls), s)
        })
      }
      socket.once(tls ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer)
        socket.removeListener('error', onError)
        if (settled) {
          socket.destroy()
          return
        }
        settled = true
        socket.setNoDelay(true)
        conn = new PooledConnection(socket, key, this)
        this.all.add(conn)
        this.opts.watchdog.add(conn)
        if (this.closed) {
          socket.destroy()
          cb.acquired(new EgressError('proxy_closed', 'the proxy is shutting down'), null)
          return
        }
        cb.acquired(null, conn)
      })
    }, fail)
  }

  /** Closes idle connections; busy ones close when their exchange ends. */
  close(): void {
    this.closed = true
    for (const origin of this.origins.values()) {
      for (const conn of origin.idle) conn.socket.destroy()
      for (const w of origin.waiting.splice(0)) w.cb.acquired(new EgressError('proxy_closed', 'the proxy is shutting down'), null)
    }
  }

  /** Closes every connection at once. */
  destroy(): void {
    this.close()
    for (const conn of this.all) conn.socket.destroy()
  }
}
