/**
 * What a guest receives when the proxy answers for itself. Every way in renders it here (the
 * fast path's bytes, Node's HTTP/1.1 and HTTP/2 responses on the general path, a refused upgrade
 * or CONNECT), so a status, its reason phrase, the code header scripts read and the message
 * cannot differ from one path to another.
 */
import { STATUS_CODES } from 'node:http'
import type { EgressError } from './errors.js'

/** A response of the proxy's own, before it is put on a particular wire. */
export interface ProxyAnswer {
  status: number
  /** Lower-case names (HTTP/2 requires it), without the length, which the wire adds. */
  fields: ReadonlyArray<readonly [string, string]>
  body: Buffer
}

const EMPTY = Buffer.alloc(0)

/** The answer for one of the proxy's errors: its status, the code in a header, the message. */
export function errorAnswer(err: EgressError): ProxyAnswer {
  return {
    status: err.status,
    fields: [['content-type', 'text/plain; charset=utf-8'], ['x-hypeman-egress-error', err.code]],
    body: Buffer.from(`${err.message}\n`, 'utf8'),
  }
}

/** An answer that is only a status (Node's server gives malformed requests no more). */
export function statusAnswer(status: number): ProxyAnswer {
  return { status, fields: [], body: EMPTY }
}

/** Node's table, so that no status is ever called by another's name (a 421 is not a "Bad Gateway"). */
export function reasonPhrase(status: number): string {
  return STATUS_CODES[status] ?? 'Unknown'
}

/** An answer as HTTP/1.1 bytes; `head` leaves the body out (the answer to a HEAD). */
export function http1Answer(answer: ProxyAnswer, opts: { close: boolean; head?: boolean }): Buffer {
  let out = `HTTP/1.1 ${answer.status} ${reasonPhrase(answer.status)}\r\n`
  for (const [k, v] of answer.fields) out += `${k}: ${v}\r\n`
  out += `content-length: ${answer.body.length}\r\n`
  if (opts.close) out += 'connection: close\r\n'
  const head = Buffer.from(`${out}\r\n`, 'latin1')
  return opts.head || answer.body.length === 0 ? head : Buffer.concat([head, answer.body])
}
