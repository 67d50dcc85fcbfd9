/**
 * The client side: the explicit-proxy listener (CONNECT and absolute-URI requests), the
 * transparent listener (connections the host firewall redirected; the destination is the TLS
 * SNI or the Host header), TLS interception, and the bookkeeping that limits and closes
 * connections. Both listeners feed the same two internal servers (HTTP/1.1 and HTTP/2), which
 * never listen themselves: the proxy hands them sockets once it knows what they carry.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer } from 'node:http'
import { createServer as createH2Server, type Http2Server, type IncomingHttpHeaders, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2'
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { type SecureContext, TLSSocket, type TLSSocketOptions } from 'node:tls'
import { type Conn, entryOf, kConn, type ListenerKind, type ProxyContext } from './context.js'
import { errorAnswer, http1Answer, type ProxyAnswer, statusAnswer } from './error-response.js'
import { EgressError } from './errors.js'
import { normalizeHost, splitHostPort } from './hosts.js'
import { serveFastH1 } from './fastpath.js'
import { Outcomes } from './outcome.js'
import { handleH1, handleH2 } from './pipeline.js'
import { sourceAddress } from './sources.js'
import { handleUpgrade } from './upgrade.js'

const TLS_HANDSHAKE = 0x16
const GUEST_BUFFER = 64 * 1024

function connOf(socket: unknown): Conn {
  return (socket as { [kConn]: Conn })[kConn]
}

/** Answers on the socket itself (a refused CONNECT, a request Node's parser rejected) and closes it. */
function rawAnswer(socket: Duplex, answer: ProxyAnswer): void {
  socket.end(http1Answer(answer, { close: true }))
}

/** The first bytes a client sends, to tell TLS from plain HTTP; null if it sends nothing in time. */
function firstChunk(socket: Socket, timeoutMs: number): Promise<Buffer | null> {
  return new Promise((resolve) => {
    let done = false
    const finish = (chunk: Buffer | null) => {
      if (done) return
      done = true
      clearTimeout(timer)
      socket.removeListener('readable', onReadable)
      socket.removeListener('end', onEnd)
      socket.removeListener('close', onEnd)
      resolve(chunk)
    }
    const onReadable = () => {
      const chunk = socket.read() as Buffer | null
      if (chunk) finish(chunk)
    }
    const onEnd = () => finish(null)
    const timer = setTimeout(onEnd, timeoutMs)
    socket.on('readable', onReadable)
    socket.once('end', onEnd)
    socket.once('close', onEnd)
  })
}

function httpServerOptions(limits: ProxyContext['limits']) {
  return {
    maxHeaderSize: limits.maxHeaderSize,
    headersTimeout: limits.headersTimeoutMs,
    // Bodies stream for as long as they move; the idle timeout ends them when they stop.
    requestTimeout: 0,
    keepAliveTimeout: limits.idleTimeoutMs,
    // Node checks the headers timeout on this period (30 s by default, too coarse for short timeouts).
    connectionsCheckingInterval: Math.max(100, Math.min(30_000, Math.floor(limits.headersTimeoutMs / 4))),
    requireHostHeader: false,
  }
}

export interface ListenAddress {
  host: string
  port: number
}

export class Frontend {
  readonly conns = new Set<Conn>()
  private readonly perSource = new Map<string, number>()
  private nextId = 1
  private readonly h1: HttpServer
  private readonly outcomes: Outcomes
  private readonly h2: Http2Server
  explicit?: HttpServer
  transparent?: NetServer

  constructor(private readonly ctx: ProxyContext) {
    const { limits } = ctx
    const outcomes = (this.outcomes = new Outcomes(ctx, (conn) => this.closeConn(conn)))
    this.h1 = createHttpServer(httpServerOptions(limits))
    this.h1.timeout = limits.idleTimeoutMs
    this.h1.on('request', (req, res) => handleH1(ctx, connOf(req.socket), req, res, outcomes))
    this.h1.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => handleUpgrade(ctx, connOf(socket), req, socket, head, outcomes))
    this.h1.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.clientError(err, socket))
    // The headers timeout and closeIdleConnections work on connections the server tracks,
    // and a server starts tracking when it starts listening. This one never listens.
    this.h1.emit('listening')

    this.h2 = createH2Server({
      settings: { maxConcurrentStreams: 128, maxHeaderListSize: limits.maxHeaderSize },
      maxHeaderListPairs: 256,
      maxSessionMemory: 16,
    })
    this.h2.on('session', (session: ServerHttp2Session) => {
      const conn = connOf(session.socket)
      conn.session = session
      ;(session as unknown as { [kConn]: Conn })[kConn] = conn
      session.on('error', () => session.destroy())
      session.setTimeout(limits.idleTimeoutMs, () => session.close())
      if (ctx.closing) session.close()
    })
    this.h2.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, _flags: number, rawHeaders: string[]) =>
      handleH2(ctx, connOf(stream.session), stream, headers, rawHeaders, outcomes),
    )
    this.h2.on('sessionError', () => {})
  }

  /** Starts the explicit-proxy listener. */
  async listenExplicit(at: ListenAddress): Promise<ListenAddress> {
    const { limits } = this.ctx
    const server = createHttpServer({ ...httpServerOptions(limits), noDelay: true })
    server.timeout = limits.idleTimeoutMs
    server.on('connection', (raw: Socket) => this.accept(raw, 'explicit'))
    server.on('request', (req, res) => handleH1(this.ctx, connOf(req.socket), req, res, this.outcomes))
    server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.onConnect(req, socket as Socket, head))
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => handleUpgrade(this.ctx, connOf(socket), req, socket, head, this.outcomes))
    server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.clientError(err, socket))
    this.explicit = server
    return listen(server, at)
  }

  /** Starts the transparent listener. */
  async listenTransparent(at: ListenAddress): Promise<ListenAddress> {
    const server = createNetServer({ noDelay: true }, (raw) => {
      const conn = this.accept(raw, 'transparent')
      if (conn) void this.route(conn, raw, null)
    })
    this.transparent = server
    return listen(server, at)
  }

  /** Admits a new client connection, or drops it when a limit is reached. */
  private accept(raw: Socket, listener: ListenerKind): Conn | undefined {
    const { ctx } = this
    raw.on('error', () => {})
    const source = sourceAddress(raw.remoteAddress)
    const refuse = (reason: string, message: string) => {
      ctx.metrics.denied.inc([reason])
      ctx.audit.emit({ type: 'denied', source, reason, message })
      raw.destroy()
      return undefined
    }
    if (ctx.closing) return refuse('closing', 'the proxy is shutting down')
    if (this.conns.size >= ctx.limits.maxConnections) return refuse('too_many_connections', `the proxy already has ${this.conns.size} connections`)
    const count = this.perSource.get(source) ?? 0
    if (count >= ctx.limits.maxConnectionsPerSource) return refuse('too_many_connections', `source ${source} already has ${count} connections`)
    const conn: Conn = { id: this.nextId++, listener, source, raw, entry: undefined, version: -1, active: 0, closed: false }
    ;(raw as unknown as { [kConn]: Conn })[kConn] = conn
    this.conns.add(conn)
    this.perSource.set(source, count + 1)
    ctx.metrics.connections.inc([listener])
    raw.once('close', () => this.release(conn))
    return conn
  }

  private release(conn: Conn): void {
    if (conn.closed) return
    conn.closed = true
    this.conns.delete(conn)
    const n = (this.perSource.get(conn.source) ?? 1) - 1
    if (n <= 0) this.perSource.delete(conn.source)
    else this.perSource.set(conn.source, n)
    conn.raw.destroy()
    conn.tls?.destroy()
    this.drained?.()
  }

  /** A CONNECT request on the explicit listener: authorise, check the target, open the tunnel. */
  private onConnect(req: IncomingMessage, raw: Socket, head: Buffer): void {
    const { ctx } = this
    const conn = connOf(raw)
    raw.setTimeout(0)
    const split = splitHostPort(req.url ?? '')
    const host = split ? normalizeHost(split.host) : null
    if (!split || !host || split.port === 0) {
      rawAnswer(raw, errorAnswer(new EgressError('bad_request', 'CONNECT needs a target of the form host:port')))
      return
    }
    if (!entryOf(ctx, conn)) {
      const err = new EgressError('unregistered_source', `no policy is registered for source ${conn.source}`)
      this.outcomes.refusal(conn, err, host)
      rawAnswer(raw, errorAnswer(err))
      return
    }
    // Refuse a forbidden destination before the tunnel exists; the dial checks again on the
    // address it actually connects to, with the host's addresses read afresh.
    ctx.guard.resolve(host, split.port, { hostsMaxAgeMs: 1000 }).then(
      () => {
        if (raw.destroyed) return
        conn.target = { host, port: split.port, tls: true }
        raw.write('HTTP/1.1 200 Connection Established\r\n\r\n')
        if (head.length > 0) raw.unshift(head)
        void this.route(conn, raw, host)
      },
      (error: unknown) => {
        // A tunnel refused for its name not resolving is a denial too: nothing was dialled.
        const err = error instanceof EgressError ? error : new EgressError('dns_failed', `cannot resolve ${host}`)
        this.outcomes.refusal(conn, err, host, split.port)
        rawAnswer(raw, errorAnswer(err))
      },
    )
  }

  /**
   * Looks at the first bytes: a TLS ClientHello is intercepted (with a certificate for the
   * tunnel's host, or for the SNI on the transparent listener); anything else is served as
   * plain HTTP/1.1.
   */
  private async route(conn: Conn, raw: Socket, tunnelHost: string | null): Promise<void> {
    const chunk = await firstChunk(raw, this.ctx.limits.handshakeTimeoutMs)
    if (!chunk) {
      raw.destroy()
      return
    }
    raw.unshift(chunk)
    try {
      if (chunk[0] === TLS_HANDSHAKE) this.intercept(conn, raw, tunnelHost)
      else {
        if (conn.target) conn.target.tls = false
        this.serveH1(conn, raw)
      }
    } catch (err) {
      // One bad connection must never take the process down with it.
      this.ctx.logger.warn('dropping a connection that could not be set up', { source: conn.source, error: (err as Error).message })
      raw.destroy()
    }
  }

  private intercept(conn: Conn, raw: Socket, tunnelHost: string | null): void {
    const { ctx } = this
    const transparent = tunnelHost === null
    // highWaterMark is a net.Socket option TLSSocket passes on; its typings omit it.
    const options: TLSSocketOptions & { highWaterMark: number } = {
      isServer: true,
      // Upstream bodies arrive in pieces of up to 256 KiB; a 16 KiB buffer would pause the
      // upstream after every piece. 64 KiB each way keeps a connection's buffers small.
      highWaterMark: GUEST_BUFFER,
      ALPNProtocols: ['h2', 'http/1.1'],
      ...(transparent
        ? {
            secureContext: ctx.leaves.sniContext,
            SNICallback: (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void) => {
              const host = normalizeHost(servername)
              if (!host) {
                cb(new Error('invalid SNI'))
                return
              }
              conn.target = { host, port: ctx.transparentPorts.https, tls: true }
              try {
                cb(null, ctx.leaves.contextFor(host))
              } catch (err) {
                cb(err as Error)
              }
            },
          }
        : { secureContext: ctx.leaves.contextFor(tunnelHost) }),
    }
    const tls = new TLSSocket(raw, options)
    conn.tls = tls
    ;(tls as unknown as { [kConn]: Conn })[kConn] = conn
    let secured = false
    const timer = setTimeout(() => tls.destroy(), ctx.limits.handshakeTimeoutMs)
    tls.on('error', () => {
      if (!secured) {
        ctx.metrics.tlsFailures.inc()
        if (transparent && !conn.target) ctx.metrics.denied.inc(['no_sni'])
      }
      tls.destroy()
    })
    tls.once('close', () => {
      clearTimeout(timer)
      this.release(conn)
    })
    tls.once('secure', () => {
      secured = true
      clearTimeout(timer)
      // A server-side TLSSocket made outside a tls.Server never clears this flag, and an
      // HTTP/2 session would wait forever for a 'secureConnect' that servers do not emit.
      ;(tls as unknown as { secureConnecting: boolean }).secureConnecting = false
      // A transparent TLS connection's destination comes from the SNI callback alone; one that
      // finished without it (a resumed session skips the callback) must not fall back to the
      // Host header, which is how plain HTTP is routed.
      if (transparent && !conn.target) {
        ctx.metrics.denied.inc(['no_sni'])
        tls.destroy()
        return
      }
      if (tls.alpnProtocol === 'h2') this.h2.emit('connection', tls)
      else this.serveH1(conn, tls)
    })
  }

  /** HTTP/1.1 on a connection: the fast path first when enabled, which hands unusual requests to the server. */
  private serveH1(conn: Conn, socket: Socket): void {
    if (this.ctx.http1FastPath) serveFastH1(this.ctx, conn, socket, this.outcomes, this.handoff)
    else this.h1.emit('connection', socket)
  }

  /** Gives a connection the fast path does not handle to the general path, with the bytes it read. */
  private readonly handoff = (socket: Socket, unread: Buffer | null): void => {
    if (unread !== null) socket.unshift(unread)
    this.h1.emit('connection', socket)
    // The server reads in flowing mode; the fast path left the socket paused.
    socket.resume()
  }

  private clientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    this.ctx.metrics.denied.inc(['malformed_request'])
    if (!socket.writable || err.code === 'ECONNRESET') {
      socket.destroy()
      return
    }
    if (err.code === 'HPE_HEADER_OVERFLOW') rawAnswer(socket, statusAnswer(431))
    else if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT' || err.code === 'HPE_HEADERS_TIMEOUT') rawAnswer(socket, statusAnswer(408))
    else rawAnswer(socket, statusAnswer(400))
    // Closing with the rest of the request unread would make the kernel reset the connection,
    // and the client might lose the answer: read and discard for a moment first.
    socket.on('data', () => {})
    socket.resume()
    setTimeout(() => socket.destroy(), 1000).unref()
  }

  private closeConn(conn: Conn): void {
    if (conn.session) conn.session.close()
    else if (conn.tls) conn.tls.end()
    else conn.raw.end()
  }

  private drained?: () => void

  /** Stops accepting; lets exchanges in progress finish (until the deadline), then ends every connection. */
  async close(graceMs: number): Promise<void> {
    const servers = [this.explicit, this.transparent].filter((s) => s !== undefined)
    for (const s of servers) s.close()
    for (const conn of this.conns) if (conn.active === 0) this.closeConn(conn)
    if (this.conns.size > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, graceMs)
        this.drained = () => {
          if (this.conns.size === 0) {
            clearTimeout(timer)
            resolve()
          }
        }
      })
    }
    this.destroy()
  }

  /** Closes every listener and connection at once. */
  destroy(): void {
    for (const s of [this.explicit, this.transparent]) s?.close()
    for (const conn of [...this.conns]) this.release(conn)
    this.h1.close()
    this.h2.close()
  }
}

function listen(server: NetServer, at: ListenAddress): Promise<ListenAddress> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(at.port, at.host, () => {
      server.removeListener('error', reject)
      const a = server.address()
      if (a && typeof a === 'object') resolve({ host: a.address, port: a.port })
      else reject(new Error('listener has no address'))
    })
  })
}
