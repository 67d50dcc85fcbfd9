/**
 * Writes made during one event-loop turn leave together at its end. Each socket written to is
 * corked on its first write of the turn and uncorked once the turn's I/O callbacks have run
 * (setImmediate), so a socket gets one TLS write per turn whatever number of pieces went to it,
 * and a peer receiving a burst of requests on many connections is woken once for the burst
 * rather than once per request. On a quiet proxy a turn holds one event, and the write leaves
 * as soon as that event's callback returns.
 */
import type { Socket } from 'node:net'

const corked = new Set<Socket>()
let scheduled = false

function flush(): void {
  scheduled = false
  for (const socket of corked) if (!socket.destroyed) socket.uncork()
  corked.clear()
}

/** Writes `data` to `socket` at the end of this event-loop turn; returns `socket.write`'s answer. */
export function batchedWrite(socket: Socket, data: Buffer, cb?: (err?: Error | null) => void): boolean {
  if (!corked.has(socket)) {
    socket.cork()
    corked.add(socket)
    if (!scheduled) {
      scheduled = true
      setImmediate(flush)
    }
  }
  return socket.write(data, cb)
}
