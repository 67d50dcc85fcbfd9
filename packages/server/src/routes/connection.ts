/** What a handler may need from the connection under its request. */
import type { FastifyReply, FastifyRequest } from 'fastify'

/** An AbortSignal that fires when the client goes away before the response was sent. */
export function clientGone(reply: FastifyReply): AbortSignal {
  const ac = new AbortController()
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) ac.abort(new Error('the client closed the connection'))
  })
  return ac.signal
}

/**
 * Long operations (a boot, a wait of minutes, a followed log) must outlive the idle timeout meant
 * for stalled clients; the connection gets it back once this response is done (keep-alive).
 */
export function noIdleTimeout(req: FastifyRequest, reply: FastifyReply): void {
  const socket = req.raw.socket
  const idle = socket.timeout ?? 0
  socket.setTimeout(0)
  reply.raw.once('close', () => socket.setTimeout(idle))
}
