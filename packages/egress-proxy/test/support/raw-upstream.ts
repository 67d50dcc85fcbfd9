/**
 * An upstream whose answers a test writes byte by byte: a TLS (or plain) server that reads each
 * request (head plus Content-Length body), records it with the connection it came on, and hands
 * it to the test's `respond`, which writes whatever bytes it wants (or stalls, or closes). That
 * is how the fast path's framing is checked against responses Node's own server would never send.
 */
import { readFileSync } from 'node:fs'
import { createServer as createNetServer, type Server, type Socket } from 'node:net'
import { createServer as createTlsServer } from 'node:tls'

export interface RawRequest {
  /** Which upstream connection (1, 2, ...) it arrived on, and its index on that connection (1, 2, ...). */
  connection: number
  index: number
  method: string
  target: string
  headers: Record<string, string>
  /** Header names as sent, in order. */
  names: string[]
  body: Buffer
}

export type Responder = (req: RawRequest, socket: Socket) => void

export interface RawUpstream {
  port: number
  requests: RawRequest[]
  connections: number
  /** What to answer with; tests replace it. */
  respond: Responder
  /** Targets answered as soon as their head arrives, before the body (as a server refusing an upload does). */
  early?: (target: string) => boolean
  close(): Promise<void>
}

export const ok = (body = 'ok', extra = ''): string => `HTTP/1.1 200 OK\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}\r\n${body}`

export async function startRawUpstream(tls: { cert: string; key: string } | null): Promise<RawUpstream> {
  const sockets = new Set<Socket>()
  const up: RawUpstream = {
    port: 0,
    requests: [],
    connections: 0,
    respond: (_req, socket) => socket.write(ok()),
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
  const onConnection = (socket: Socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    const connection = ++up.connections
    let index = 0
    let buf = Buffer.alloc(0)
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk])
      for (;;) {
        const end = buf.indexOf('\r\n\r\n')
        if (end < 0) return
        const lines = buf.subarray(0, end).toString('latin1').split('\r\n')
        const [method = '', target = ''] = lines[0]!.split(' ')
        const headers: Record<string, string> = {}
        const names: string[] = []
        for (const line of lines.slice(1)) {
          const colon = line.indexOf(':')
          names.push(line.slice(0, colon))
          headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim()
        }
        let body: Buffer
        if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
          // Chunked (what undici sends for a body of unknown length): sizes and data, no trailers.
          const parts: Buffer[] = []
          let i = end + 4
          for (;;) {
            const eol = buf.indexOf('\r\n', i)
            if (eol < 0) return
            const size = Number.parseInt(buf.subarray(i, eol).toString('latin1'), 16)
            if (buf.length < eol + 2 + size + 2) return
            if (size === 0) {
              i = eol + 4
              break
            }
            parts.push(buf.subarray(eol + 2, eol + 2 + size))
            i = eol + 2 + size + 2
          }
          body = Buffer.concat(parts)
          buf = buf.subarray(i)
        } else {
          const length = Number(headers['content-length'] ?? 0)
          if (up.early?.(target) && buf.length < end + 4 + length) {
            // Answered on the head alone; what else this connection sends is ignored.
            const req: RawRequest = { connection, index: ++index, method, target, headers, names, body: Buffer.from(buf.subarray(end + 4)) }
            up.requests.push(req)
            socket.removeAllListeners('data')
            up.respond(req, socket)
            return
          }
          if (buf.length < end + 4 + length) return
          body = Buffer.from(buf.subarray(end + 4, end + 4 + length))
          buf = buf.subarray(end + 4 + length)
        }
        const req: RawRequest = { connection, index: ++index, method, target, headers, names, body }
        up.requests.push(req)
        up.respond(req, socket)
      }
    })
  }
  const server: Server = tls
    ? createTlsServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key), ALPNProtocols: ['http/1.1'] }, onConnection)
    : createNetServer(onConnection)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
  up.port = (server.address() as { port: number }).port
  return up
}
