/**
 * GET /instances/{id}/logs as Server-Sent Events, framed as hypeman frames them: one event per
 * line, `data: <the line as a JSON string>`, no event names. The SDK JSON-parses every `data:`,
 * so a line is never sent raw. The instance is resolved before the headers go out, so an
 * unknown id is still a plain 404.
 */
import { errorMessage } from '@hypeman-ts/common'
import type { LogSource } from '@hypeman-ts/core'
import { noIdleTimeout } from './connection.js'
import { params, query, type Handlers, type RouteContext } from './types.js'

export const sseEvent = (line: string) => `data: ${JSON.stringify(line)}\n\n`

export function logHandlers({ hm, shutdown }: RouteContext): Handlers {
  return {
    async getInstanceLogs(req, reply) {
      // Looked up before the stream starts, so an unknown instance is still an HTTP 404.
      const { id } = await hm.instances.get(params(req).id!)
      const q = query(req)
      const follow = q.follow === true
      const ac = new AbortController()
      const res = reply.raw
      // Ours from here: Fastify neither serializes nor ends this response.
      reply.hijack()
      res.once('close', () => ac.abort())
      // A followed log never ends by itself: a closing server ends it, as a clean end of stream.
      const signal = AbortSignal.any([ac.signal, shutdown])
      noIdleTimeout(req, reply)
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', 'x-accel-buffering': 'no', connection: 'keep-alive' })
      // Now, not with the first line: the client's call returns on the headers, and a follow may wait long for a line.
      res.flushHeaders()
      // A comment line now and then: proxies and load balancers cut a stream quiet for a minute;
      // SSE clients (the SDK included) skip comments.
      const heartbeat = follow ? setInterval(() => res.write(': keep-alive\n\n'), 15_000) : undefined
      try {
        const lines = hm.instances.logs(id, {
          source: q.source as LogSource,
          tail: q.tail as number,
          follow,
          signal,
        })
        for await (const line of lines) {
          if (!res.write(sseEvent(line))) await new Promise<void>((r) => res.once('drain', r).once('close', r))
          if (signal.aborted) break
        }
      } catch (err) {
        // The headers are gone, and the SDK takes every event's data as a log line: a failure
        // can only be told by cutting the stream, which the client sees as an error, not an end.
        req.log.warn({ err: errorMessage(err), id }, 'log stream failed')
        res.destroy()
        return
      } finally {
        clearInterval(heartbeat)
      }
      res.end()
    },
  }
}
