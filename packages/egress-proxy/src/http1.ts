/**
 * HTTP/1.1 for the fast path, the request side, as pure functions over bytes: the guest's
 * request head, the head sent upstream, and the Connection-option rule every path applies.
 * The response side is src/http1-response.ts; chunked bodies, src/chunked.ts.
 *
 * The request parser is deliberately narrow: it accepts the common case (a whole head in
 * hand, HTTP/1.1, a body framed by one Content-Length or none) and calls anything else
 * "unusual", which sends the connection to Node's own HTTP server (the general path), where
 * llhttp decides what is malformed. Accepting less than llhttp never turns a bad request into
 * a forwarded one.
 */
const CRLFCRLF = Buffer.from('\r\n\r\n', 'latin1')
/** A header name (RFC 9110 §5.1). */
export const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
/** Field-value characters (RFC 9110 §5.5): visible ASCII, SP, HTAB and obs-text; never CR, LF or NUL. */
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/
const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP\/1\.1$/
const ABSOLUTE = /^https?:\/\//i
/** A Content-Length value: digits only, never a sign, and short enough to be exact as a number. */
export const DIGITS = /^\d{1,15}$/
/** More header fields than this and the request takes the general path. */
export const MAX_FAST_HEADERS = 128

export interface RequestHead {
  kind: 'request'
  method: string
  /** The request target as sent: origin-form ("/path?q") or absolute-form ("https://host/path"). */
  target: string
  /** Flat name/value list, names as the guest spelled them, values without surrounding whitespace. */
  headers: string[]
  /** The Host header, if any. */
  host: string | undefined
  /** Body length (0 when there is none). */
  contentLength: number
  /** The guest asked to close the connection after this exchange. */
  close: boolean
  /** Bytes of the head, CRLFCRLF included: the body starts here. */
  headLength: number
}

/** Why a request is left to the general path; a short token, used as a metric label. */
export type UnusualReason =
  | 'head_size' | 'request_line' | 'method' | 'target' | 'header_syntax' | 'too_many_headers'
  | 'host' | 'expect' | 'upgrade' | 'content_length' | 'transfer_encoding'

export type RequestParse = RequestHead | { kind: 'incomplete' } | { kind: 'unusual'; reason: UnusualReason }

const INCOMPLETE = { kind: 'incomplete' } as const
const unusual = (reason: UnusualReason) => ({ kind: 'unusual', reason }) as const

/** Trims SP and HTAB on both sides, as field values are (RFC 9112 §5). */
export function trimOws(s: string): string {
  let a = 0
  let b = s.length
  while (a < b && (s.charCodeAt(a) === 32 || s.charCodeAt(a) === 9)) a++
  while (b > a && (s.charCodeAt(b - 1) === 32 || s.charCodeAt(b - 1) === 9)) b--
  return a === 0 && b === s.length ? s : s.slice(a, b)
}

/**
 * The fields a Connection header names as hop-by-hop (RFC 9110 §7.6.1), lower-case, to be
 * dropped on forwarding; undefined when it names none. `close`, `keep-alive` and `upgrade` are
 * connection options, not fields. The framing fields and Host are never dropped, whatever the
 * header says: removing Content-Length from a request whose body the proxy then forwards would
 * let the guest smuggle a second request (one that gets another request's credential) into the
 * upstream connection, and removing it from a response would let the two sides disagree about
 * where the response ends.
 */
export function connectionOptions(value: string): string[] | undefined {
  // The values nearly every message carries name no field.
  if (value.indexOf(',') < 0 && NOT_DROPPABLE.has(trimOws(value).toLowerCase())) return undefined
  let named: string[] | undefined
  for (const t of value.split(',')) {
    const token = trimOws(t).toLowerCase()
    if (token && !NOT_DROPPABLE.has(token)) (named ??= []).push(token)
  }
  return named
}
const NOT_DROPPABLE = new Set(['close', 'keep-alive', 'upgrade', 'content-length', 'transfer-encoding', 'host'])

/** Whether a comma-separated list (Connection, Upgrade) holds `token`, compared in lower case. */
export function hasToken(list: string, token: string): boolean {
  if (list.indexOf(',') < 0) return trimOws(list).toLowerCase() === token
  for (const t of list.split(',')) if (trimOws(t).toLowerCase() === token) return true
  return false
}

/**
 * Parses a request head at the start of `buf`. `maxHeadSize` is the proxy's header limit: a
 * head that is larger (or still incomplete at that size) is unusual, so Node's parser gives
 * the client its 431.
 */
export function parseRequestHead(buf: Buffer, maxHeadSize: number): RequestParse {
  const end = buf.indexOf(CRLFCRLF)
  if (end < 0) return buf.length >= maxHeadSize ? unusual('head_size') : INCOMPLETE
  const headLength = end + 4
  if (headLength > maxHeadSize) return unusual('head_size')
  const text = buf.toString('latin1', 0, end)
  let eol = text.indexOf('\r\n')
  if (eol < 0) eol = text.length
  const line = REQUEST_LINE.exec(text.slice(0, eol))
  if (!line) return unusual('request_line')
  const method = line[1]!
  const target = line[2]!
  if (method === 'CONNECT' || method === 'PRI') return unusual('method')
  if (target.charCodeAt(0) !== 47 /* / */ && !ABSOLUTE.test(target)) return unusual('target')
  const headers: string[] = []
  let host: string | undefined
  let contentLength = -1
  let close = false
  let pos = eol + 2
  while (pos < text.length) {
    let next = text.indexOf('\r\n', pos)
    if (next < 0) next = text.length
    const colon = text.indexOf(':', pos)
    if (colon <= pos || colon >= next) return unusual('header_syntax')
    const name = text.slice(pos, colon)
    const value = trimOws(text.slice(colon + 1, next))
    if (!TOKEN.test(name) || !FIELD_VALUE.test(value)) return unusual('header_syntax')
    pos = next + 2
    if (headers.length >= MAX_FAST_HEADERS * 2) return unusual('too_many_headers')
    switch (name.length) {
      case 4:
        if (name.toLowerCase() === 'host') {
          if (host !== undefined) return unusual('host')
          host = value
        }
        break
      case 6:
        if (name.toLowerCase() === 'expect') return unusual('expect')
        break
      case 7:
        if (name.toLowerCase() === 'upgrade') return unusual('upgrade')
        break
      case 10:
        if (name.toLowerCase() === 'connection') {
          if (hasToken(value, 'upgrade')) return unusual('upgrade')
          if (hasToken(value, 'close')) close = true
        }
        break
      case 14:
        if (name.toLowerCase() === 'content-length') {
          if (contentLength >= 0 || !DIGITS.test(value)) return unusual('content_length')
          contentLength = Number(value)
        }
        break
      case 17:
        if (name.toLowerCase() === 'transfer-encoding') return unusual('transfer_encoding')
        break
    }
    headers.push(name, value)
  }
  return { kind: 'request', method, target, headers, host, contentLength: Math.max(0, contentLength), close, headLength }
}

/** The upstream request head: request line plus the rewritten header list. */
export function upstreamRequestHead(method: string, path: string, headers: readonly string[]): Buffer {
  let out = `${method} ${path} HTTP/1.1\r\n`
  for (let i = 0; i < headers.length; i += 2) out += `${headers[i]}: ${headers[i + 1]}\r\n`
  return Buffer.from(`${out}\r\n`, 'latin1')
}
