/**
 * HTTP/1.1 upgrades (WebSocket). The handshake request goes through the same policy and header
 * rewrite as any request, so a credential is injected into it; once the upstream answers 101
 * the two sockets are joined and bytes flow untouched. Any other answer is relayed as a normal
 * response and the connection closed. Upgrades other than WebSocket are forwarded as plain
 * requests without their Upgrade header.
 */
import { request as httpRequest, ServerResponse, type IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { TLSSocket } from 'node:tls'
import type { Conn, ProxyContext } from './context.js'
import { decide, findHost } from './decision.js'
import { http1Answer } from './error-response.js'
import { rewriteRawResponseHeaders } from './headers.js'
import { hasToken } from './http1.js'
import type { Outcomes } from './outcome.js'
import { handleH1 } from './pipeline.js'

/** A response head relayed from the upstream, with the reason phrase it sent. */
function head(status: number, message: string, raw: readonly string[]): string {
  let out = `HTTP/1.1 ${status} ${message}\r\n`
  for (let i = 0; i < raw.length; i += 2) out += `${raw[i]}: ${raw[i + 1]}\r\n`
  return `${out}\r\n`
}

export function handleUpgrade(ctx: ProxyContext, conn: Conn, req: IncomingMessage, socket: Duplex, bodyHead: Buffer, outcomes: Outcomes): void {
  socket.on('error', () => {})
  const raw = req.rawHeaders
  let websocket = false
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === 'upgrade' && hasToken(raw[i + 1]!, 'websocket')) websocket = true
  }
  if (!websocket) {
    // Serve it as the ordinary request it also is; the connection closes after the response.
    const res = new ServerResponse(req)
    res.shouldKeepAlive = false
    res.assignSocket(socket as never)
    res.once('finish', () => socket.end())
    handleH1(ctx, conn, req, res, outcomes)
    return
  }

  const outcome = outcomes.begin(conn)
  socket.once('close', () => outcome.end())
  const d = decide(ctx, conn, req.method!, req.url!, findHost(raw), raw, true)
  outcome.decided(req.method!, d)
  if (d.kind === 'refuse') {
    socket.end(http1Answer(outcome.answerWith(d.err), { close: true }))
    // Nothing is left to wait for: a graceful close need not wait for the guest to hang up.
    outcome.end()
    return
  }
  const { dest, rewrite } = d
  const fail = (error: unknown) => {
    const answer = outcome.answerWith(outcome.upstreamFailed(error, dest))
    if (socket.writable) socket.end(http1Answer(answer, { close: true }))
    else socket.destroy()
  }
  const joined = (upstream: Socket | TLSSocket) => {
    if (socket.destroyed) {
      upstream.destroy()
      return
    }
    upstream.on('error', () => {})
    const upReq = httpRequest({
      method: req.method,
      path: dest.path,
      headers: rewrite.headers,
      createConnection: () => upstream,
    })
    upReq.on('error', fail)
    upReq.on('upgrade', (res, upSocket, upHead) => {
      outcome.answered(res.statusCode ?? 101)
      socket.write(head(res.statusCode ?? 101, res.statusMessage ?? 'Switching Protocols', res.rawHeaders))
      if (upHead.length) socket.write(upHead)
      if (bodyHead.length) upSocket.write(bodyHead)
      upSocket.on('error', () => socket.destroy())
      socket.on('error', () => upSocket.destroy())
      // When one side closes, let the other flush what it still holds, then end it.
      const endSoon = (s: Duplex) => {
        s.end()
        setTimeout(() => s.destroy(), 5000).unref()
      }
      upSocket.on('close', () => endSoon(socket))
      socket.on('close', () => endSoon(upSocket))
      upSocket.pipe(socket)
      socket.pipe(upSocket)
    })
    upReq.on('response', (res) => {
      // Declined: relay the answer as an ordinary response and close.
      outcome.answered(res.statusCode ?? 502)
      const rawOut = rewriteRawResponseHeaders(res.rawHeaders)
      rawOut.push('Connection', 'close')
      socket.write(head(res.statusCode ?? 502, res.statusMessage ?? '', rawOut))
      res.pipe(socket)
      res.on('end', () => upstream.destroy())
    })
    upReq.end()
  }
  ctx.upstreams.connect(dest.host, dest.port, dest.scheme === 'https').then((upstream) => {
    try {
      joined(upstream)
    } catch (err) {
      upstream.destroy()
      fail(err)
    }
  }, fail)
  req.on('error', () => {})
}
