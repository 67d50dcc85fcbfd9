/**
 * Real local upstreams for the proxy to reach: an HTTPS server speaking HTTP/2 and HTTP/1.1
 * (ALPN), and a plain HTTP one. Each answers with what it received, as JSON, and records it, so
 * a test asserts on what actually arrived upstream.
 *
 *   /echo              the request, as JSON
 *   /bytes?n=N         N bytes of 'x'
 *   /slow?chunks=N&ms=M  N chunks, M ms apart, then the request echo as the last line
 *   /stream?n=N        N bytes written as the client takes them (counted in `streamed`)
 *   /trailers          a body and a trailer (grpc-status: 0), over HTTP/2
 *   WebSocket upgrade  echoes text frames, prefixed with the Authorization it was opened with
 */
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createSecureServer, type Http2ServerRequest, type Http2ServerResponse, type Http2SecureServer } from 'node:http2'
import type { Duplex } from 'node:stream'

export interface Seen {
  httpVersion: string
  method: string
  url: string
  headers: Record<string, string | string[] | undefined>
  bodyBytes: number
  alpn?: string | false
  /** The proxy's end of the connection the request came on: requests with the same port shared it. */
  remotePort?: number
}

export interface Upstream {
  port: number
  seen: Seen[]
  /** TCP connections accepted so far (a refusal must not even connect). */
  connections(): number
  close(): Promise<void>
}

type Req = IncomingMessage | Http2ServerRequest
type Res = ServerResponse | Http2ServerResponse

/** Bytes /stream has written so far, across requests. */
export const streamed = { bytes: 0 }

function handler(seen: Seen[]) {
  return (req: Req, res: Res) => {
    let bodyBytes = 0
    req.on('data', (d: Buffer) => (bodyBytes += d.length))
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://x')
      const record: Seen = {
        httpVersion: req.httpVersion,
        method: req.method ?? '',
        url: req.url ?? '',
        headers: { ...req.headers },
        bodyBytes,
        alpn: (req.socket as { alpnProtocol?: string | false }).alpnProtocol,
        remotePort: req.socket.remotePort,
      }
      seen.push(record)
      const r = res as ServerResponse
      if (url.pathname === '/bytes') {
        const n = Number(url.searchParams.get('n') ?? 0)
        r.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': n })
        r.end(Buffer.alloc(n, 'x'))
      } else if (url.pathname === '/slow') {
        const chunks = Number(url.searchParams.get('chunks') ?? 5)
        const ms = Number(url.searchParams.get('ms') ?? 100)
        r.writeHead(200, { 'content-type': 'text/plain' })
        let i = 0
        const timer = setInterval(() => {
          if (i++ < chunks) r.write(`chunk ${i}\n`)
          else {
            clearInterval(timer)
            r.end(`${JSON.stringify(record)}\n`)
          }
        }, ms)
        res.on('close', () => clearInterval(timer))
      } else if (url.pathname === '/stream') {
        // N bytes in 64 KiB writes that respect backpressure; `streamed` counts what left.
        const n = Number(url.searchParams.get('n') ?? 0)
        const chunk = Buffer.alloc(64 * 1024, 'y')
        r.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': n })
        let sent = 0
        const pump = () => {
          while (sent < n) {
            const piece = n - sent >= chunk.length ? chunk : chunk.subarray(0, n - sent)
            sent += piece.length
            streamed.bytes += piece.length
            if (!r.write(piece)) {
              r.once('drain', pump)
              return
            }
          }
          r.end()
        }
        res.on('close', () => r.removeListener('drain', pump))
        pump()
      } else if (url.pathname === '/trailers') {
        r.writeHead(200, { 'content-type': 'application/grpc', trailer: 'grpc-status' })
        r.write('payload')
        r.addTrailers({ 'grpc-status': '0', 'grpc-message': 'fine' })
        r.end()
      } else {
        const body = JSON.stringify(record)
        r.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-upstream': 'yes' })
        r.end(body)
      }
    })
  }
}

/** Minimal RFC 6455 server side: the handshake and unfragmented text frames, echoed back. */
function websocket(seen: Seen[]) {
  return (req: IncomingMessage, socket: Duplex) => {
    seen.push({ httpVersion: req.httpVersion, method: req.method ?? '', url: req.url ?? '', headers: { ...req.headers }, bodyBytes: 0 })
    const key = req.headers['sec-websocket-key']
    if (req.url === '/ws-refuse' || typeof key !== 'string') {
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\nConnection: close\r\n\r\nrefused')
      return
    }
    if (req.url === '/ws-refuse-hop') {
      // A refusal whose Connection header names a field of this hop, and the framing field.
      socket.end('HTTP/1.1 403 Forbidden\r\nConnection: close, X-Hop, Content-Length\r\nX-Hop: 1\r\nX-Kept: 1\r\nContent-Length: 7\r\n\r\nrefused')
      return
    }
    const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64')
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`)
    const auth = String(req.headers.authorization ?? '')
    let buf = Buffer.alloc(0)
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d])
      while (buf.length >= 2) {
        const opcode = buf[0]! & 0x0f
        let len = buf[1]! & 0x7f
        let off = 2
        if (len === 126) {
          len = buf.readUInt16BE(2)
          off = 4
        }
        const masked = (buf[1]! & 0x80) !== 0
        const need = off + (masked ? 4 : 0) + len
        if (buf.length < need) return
        const mask = masked ? buf.subarray(off, off + 4) : null
        const payload = Buffer.from(buf.subarray(off + (masked ? 4 : 0), need))
        if (mask) for (let i = 0; i < payload.length; i++) payload[i]! ^= mask[i % 4]!
        buf = buf.subarray(need)
        if (opcode === 8) {
          socket.end(Buffer.from([0x88, 0]))
          return
        }
        if (opcode === 1) {
          const out = Buffer.from(`${auth}|${payload.toString()}`)
          const header = out.length < 126 ? Buffer.from([0x81, out.length]) : Buffer.from([0x81, 126, out.length >> 8, out.length & 255])
          socket.write(Buffer.concat([header, out]))
        }
      }
    })
    socket.on('error', () => {})
  }
}

function listening(server: Server | Http2SecureServer): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port)))
}

/** `record: false` keeps `seen` empty: a long run's requests would otherwise pile up in it. */
export async function startHttpsUpstream(cert: { cert: string; key: string }, opts: { record?: boolean } = {}): Promise<Upstream> {
  const seen: Seen[] = []
  if (opts.record === false) seen.push = () => 0
  const server = createSecureServer({ allowHTTP1: true, cert: readFileSync(cert.cert), key: readFileSync(cert.key) }, handler(seen))
  server.on('upgrade', websocket(seen))
  const sessions = new Set<{ destroy(): void }>()
  server.on('session', (s) => {
    sessions.add(s)
    s.on('close', () => sessions.delete(s))
  })
  const sockets = new Set<Duplex>()
  server.on('secureConnection', (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  let connections = 0
  server.on('connection', () => connections++)
  const port = await listening(server)
  return {
    port,
    seen,
    connections: () => connections,
    close: () =>
      new Promise((resolve) => {
        for (const s of sessions) s.destroy()
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
}

export async function startHttpUpstream(): Promise<Upstream> {
  const seen: Seen[] = []
  const server = createHttpServer(handler(seen))
  server.on('upgrade', websocket(seen))
  // Upgraded sockets leave the server's own bookkeeping; close them too.
  const sockets = new Set<Duplex>()
  let connections = 0
  server.on('connection', (s) => {
    connections++
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  const port = await listening(server)
  return {
    port,
    seen,
    connections: () => connections,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
}
