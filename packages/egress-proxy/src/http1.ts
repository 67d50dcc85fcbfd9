/**
 * HTTP/1.1 framing for the fast path, as pure functions over bytes: the guest's request head,
 * the upstream's response head, how long a response body is, a chunked-body scanner that
 * finds the end of a body without decoding it, and the heads the proxy writes.
 *
 * The request parser is deliberately narrow: it accepts the common case (a whole head in
 * hand, HTTP/1.1, a body framed by one Content-Length or none) and calls anything else
 * "unusual", which sends the connection to Node's own HTTP server (the general path), where
 * llhttp decides what is malformed. Accepting less than llhttp never turns a bad request into
 * a forwarded one. The response parser is strict (CRLF lines, token names, no control
 * characters, no obs-fold, one consistent length): a response it cannot frame exactly is a
 * 502, because bytes are forwarded as they came and the guest must see the same framing we do.
 */
import { STATUS_CODES } from 'node:http'

const CRLFCRLF = Buffer.from('\r\n\r\n', 'latin1')
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
/** Field-value characters (RFC 9110 §5.5): visible ASCII, SP, HTAB and obs-text; never CR, LF or NUL. */
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/
const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP\/1\.1$/
const ABSOLUTE = /^https?:\/\//i
const STATUS_LINE = /^HTTP\/1\.([01]) ([1-9]\d\d)(?: ([\t\x20-\x7e\x80-\xff]*))?$/
const DIGITS = /^\d{1,15}$/
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

export type RequestParse = RequestHead | { kind: 'incomplete' } | { kind: 'unusual'; reason: string }

const INCOMPLETE = { kind: 'incomplete' } as const
const unusual = (reason: string) => ({ kind: 'unusual', reason }) as const

/** Trims SP and HTAB on both sides, as field values are (RFC 9112 §5). */
function trimOws(s: string): string {
  let a = 0
  let b = s.length
  while (a < b && (s.charCodeAt(a) === 32 || s.charCodeAt(a) === 9)) a++
  while (b > a && (s.charCodeAt(b - 1) === 32 || s.charCodeAt(b - 1) === 9)) b--
  return a === 0 && b === s.length ? s : s.slice(a, b)
}

function hasToken(list: string, token: string): boolean {
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
  if (end < 0) return buf.length >= maxHeadSize ? unusual('head over the size limit') : INCOMPLETE
  const headLength = end + 4
  if (headLength > maxHeadSize) return unusual('head over the size limit')
  const text = buf.toString('latin1', 0, end)
  let eol = text.indexOf('\r\n')
  if (eol < 0) eol = text.length
  const line = REQUEST_LINE.exec(text.slice(0, eol))
  if (!line) return unusual('request line')
  const method = line[1]!
  const target = line[2]!
  if (method === 'CONNECT' || method === 'PRI') return unusual('method')
  if (target.charCodeAt(0) !== 47 /* / */ && !ABSOLUTE.test(target)) return unusual('request target')
  const headers: string[] = []
  let host: string | undefined
  let contentLength = -1
  let close = false
  let pos = eol + 2
  while (pos < text.length) {
    let next = text.indexOf('\r\n', pos)
    if (next < 0) next = text.length
    const colon = text.indexOf(':', pos)
    if (colon <= pos || colon >= next) return unusual('header line')
    const name = text.slice(pos, colon)
    const value = trimOws(text.slice(colon + 1, next))
    if (!TOKEN.test(name) || !FIELD_VALUE.test(value)) return unusual('header characters')
    pos = next + 2
    if (headers.length >= MAX_FAST_HEADERS * 2) return unusual('too many headers')
    switch (name.length) {
      case 4:
        if (name.toLowerCase() === 'host') {
          if (host !== undefined) return unusual('two Host headers')
          host = value
        }
        break
      case 6:
        if (name.toLowerCase() === 'expect') return unusual('Expect')
        break
      case 7:
        if (name.toLowerCase() === 'upgrade') return unusual('Upgrade')
        break
      case 10:
        if (name.toLowerCase() === 'connection') {
          if (hasToken(value, 'upgrade')) return unusual('Connection: upgrade')
          if (hasToken(value, 'close')) close = true
        }
        break
      case 14:
        if (name.toLowerCase() === 'content-length') {
          if (contentLength >= 0 || !DIGITS.test(value)) return unusual('Content-Length')
          contentLength = Number(value)
        }
        break
      case 17:
        if (name.toLowerCase() === 'transfer-encoding') return unusual('Transfer-Encoding')
        break
    }
    headers.push(name, value)
  }
  return { kind: 'request', method, target, headers, host, contentLength: Math.max(0, contentLength), close, headLength }
}

export interface ResponseHead {
  kind: 'response'
  status: number
  reason: string
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor: 0 | 1
  headers: string[]
  headLength: number
  /** -1 when there is no Content-Length. */
  contentLength: number
  /** Transfer-Encoding present; `chunked` when chunked is its final coding. */
  transferEncoding: 'none' | 'chunked' | 'other'
  /** The upstream will close (Connection: close, or HTTP/1.0 without keep-alive). */
  close: boolean
  /** The upstream's Keep-Alive timeout, in ms, when it announced one. */
  keepAliveMs: number | undefined
}

export type ResponseParse = ResponseHead | { kind: 'incomplete' } | { kind: 'invalid'; reason: string }

const invalid = (reason: string) => ({ kind: 'invalid', reason }) as const

/** Parses a response head at `buf[start..]`; `maxHeadSize` bounds what a head may take. */
export function parseResponseHead(buf: Buffer, maxHeadSize: number, start = 0): ResponseParse {
  const end = buf.indexOf(CRLFCRLF, start)
  if (end < 0) return buf.length - start >= maxHeadSize ? invalid('the response head is too large') : INCOMPLETE
  const headLength = end + 4 - start
  if (headLength > maxHeadSize) return invalid('the response head is too large')
  const text = buf.toString('latin1', start, end)
  let eol = text.indexOf('\r\n')
  if (eol < 0) eol = text.length
  const line = STATUS_LINE.exec(text.slice(0, eol))
  if (!line) return invalid('malformed status line')
  const minor = line[1] === '1' ? 1 : 0
  const headers: string[] = []
  let contentLength = -1
  let te = ''
  let connection = ''
  let keepAliveMs: number | undefined
  let pos = eol + 2
  while (pos < text.length) {
    let next = text.indexOf('\r\n', pos)
    if (next < 0) next = text.length
    const colon = text.indexOf(':', pos)
    if (colon <= pos || colon >= next) return invalid('malformed header line')
    const name = text.slice(pos, colon)
    const value = trimOws(text.slice(colon + 1, next))
    if (!TOKEN.test(name) || !FIELD_VALUE.test(value)) return invalid('invalid characters in a header')
    pos = next + 2
    const lower = name.length === 10 || name.length === 14 || name.length === 17 ? name.toLowerCase() : ''
    if (lower === 'content-length') {
      // "42, 42" (a list of one repeated value) is the only list allowed (RFC 9110 §8.6).
      for (const part of value.split(',')) {
        const v = trimOws(part)
        if (!DIGITS.test(v) || (contentLength >= 0 && Number(v) !== contentLength)) return invalid('invalid Content-Length')
        contentLength = Number(v)
      }
    } else if (lower === 'transfer-encoding') {
      te = te ? `${te},${value}` : value
    } else if (lower === 'connection') {
      connection = connection ? `${connection},${value}` : value
    } else if (name.length === 10 && name.toLowerCase() === 'keep-alive') {
      const m = /(?:^|[,;\s])timeout=(\d{1,9})/i.exec(value)
      if (m) keepAliveMs = Number(m[1]) * 1000
    }
    headers.push(name, value)
  }
  let transferEncoding: ResponseHead['transferEncoding'] = 'none'
  if (te) {
    const codings = te.split(',').map((c) => trimOws(c).toLowerCase()).filter((c) => c !== '')
    transferEncoding = codings.at(-1) === 'chunked' ? 'chunked' : 'other'
  }
  const close = connection ? hasToken(connection, 'close') || (minor === 0 && !hasToken(connection, 'keep-alive')) : minor === 0
  return {
    kind: 'response',
    status: Number(line[2]),
    reason: line[3] ?? '',
    minor,
    headers,
    headLength,
    contentLength,
    transferEncoding,
    close,
    keepAliveMs,
  }
}

export type BodyFraming = { kind: 'none' } | { kind: 'length'; length: number } | { kind: 'chunked' } | { kind: 'close' }

/** How the body of a final response is delimited (RFC 9112 §6.3). */
export function responseFraming(method: string, head: ResponseHead): BodyFraming {
  if (method === 'HEAD' || head.status < 200 || head.status === 204 || head.status === 304) return { kind: 'none' }
  if (head.transferEncoding === 'chunked') return { kind: 'chunked' }
  if (head.transferEncoding === 'other') return { kind: 'close' }
  if (head.contentLength >= 0) return head.contentLength === 0 ? { kind: 'none' } : { kind: 'length', length: head.contentLength }
  return { kind: 'close' }
}

const RESPONSE_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'upgrade', 'http2-settings', 'te'])

/**
 * The head the guest receives: the upstream's status and headers without hop-by-hop fields
 * (and those its Connection header names), keeping the framing headers that describe the body
 * bytes as they are forwarded. `close` adds `Connection: close`.
 */
export function guestResponseHead(head: ResponseHead, close: boolean): Buffer {
  let named: string[] | undefined
  const raw = head.headers
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.length === 10 && raw[i]!.toLowerCase() === 'connection') {
      for (const t of raw[i + 1]!.split(',')) {
        const token = trimOws(t).toLowerCase()
        if (token && token !== 'close' && token !== 'keep-alive') (named ??= []).push(token)
      }
    }
  }
  // Transfer-Encoding overrides Content-Length; forwarding both would let the guest pick the other one.
  const dropLength = head.transferEncoding !== 'none'
  let out = `HTTP/1.1 ${head.status} ${head.reason}\r\n`
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    const lower = name.toLowerCase()
    if (RESPONSE_HOP.has(lower) || named?.includes(lower)) continue
    if (dropLength && lower === 'content-length') continue
    out += `${name}: ${raw[i + 1]}\r\n`
  }
  if (close) out += 'Connection: close\r\n'
  return Buffer.from(`${out}\r\n`, 'latin1')
}

/** The upstream request head: request line plus the rewritten header list. */
export function upstreamRequestHead(method: string, path: string, headers: readonly string[]): Buffer {
  let out = `${method} ${path} HTTP/1.1\r\n`
  for (let i = 0; i < headers.length; i += 2) out += `${headers[i]}: ${headers[i + 1]}\r\n`
  return Buffer.from(`${out}\r\n`, 'latin1')
}

/** A complete response of the proxy's own: status, extra headers, a text body (none for HEAD). */
export function plainResponse(status: number, headers: ReadonlyArray<readonly [string, string]>, body: string, opts: { close: boolean; head: boolean }): Buffer {
  const bytes = Buffer.from(body, 'utf8')
  let out = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Unknown'}\r\n`
  for (const [k, v] of headers) out += `${k}: ${v}\r\n`
  out += `content-length: ${bytes.length}\r\n`
  if (opts.close) out += 'connection: close\r\n'
  const head = Buffer.from(`${out}\r\n`, 'latin1')
  return opts.head ? head : Buffer.concat([head, bytes])
}

const enum Chunk {
  SizeStart,
  Size,
  Ext,
  SizeLf,
  Data,
  DataCr,
  DataLf,
  TrailerStart,
  Trailer,
  TrailerLf,
  EndLf,
  Done,
}

/** Longest chunk-size line (size and extensions) and trailer section a body may carry. */
const MAX_CHUNK_LINE = 4096
const MAX_TRAILERS = 16 * 1024

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48
  const l = c | 0x20
  return l >= 97 && l <= 102 ? l - 87 : -1
}

/**
 * Follows a chunked body (RFC 9112 §7.1) byte by byte in its framing and chunk by chunk in its
 * data, to find where it ends; the bytes themselves are forwarded untouched. Strict: CRLF line
 * ends, hex sizes of at most 13 digits, bounded extension and trailer sizes.
 */
export class ChunkedScanner {
  private state = Chunk.SizeStart
  private remaining = 0
  private size = 0
  private digits = 0
  private lineBytes = 0
  private trailerBytes = 0

  get done(): boolean {
    return this.state === Chunk.Done
  }

  /**
   * Consumes `buf[start..]`. Returns the offset just past the body's last byte when the body
   * ends inside this buffer, `buf.length` when it continues, or -1 when the framing is invalid.
   */
  scan(buf: Buffer, start = 0): number {
    let i = start
    const n = buf.length
    while (i < n) {
      switch (this.state) {
        case Chunk.Data: {
          const take = Math.min(this.remaining, n - i)
          i += take
          this.remaining -= take
          if (this.remaining === 0) this.state = Chunk.DataCr
          continue
        }
        case Chunk.SizeStart: {
          const v = hexValue(buf[i]!)
          if (v < 0) return -1
          this.size = v
          this.digits = 1
          this.lineBytes = 1
          this.state = Chunk.Size
          break
        }
        case Chunk.Size: {
          const c = buf[i]!
          const v = hexValue(c)
          if (v >= 0) {
            if (++this.digits > 13) return -1
            this.size = this.size * 16 + v
          } else if (c === 13) this.state = Chunk.SizeLf
          else if (c === 59 /* ; */ || c === 32 || c === 9) this.state = Chunk.Ext
          else return -1
          this.lineBytes++
          break
        }
        case Chunk.Ext: {
          const c = buf[i]!
          if (c === 13) this.state = Chunk.SizeLf
          else if ((c < 32 && c !== 9) || c === 127) return -1
          if (++this.lineBytes > MAX_CHUNK_LINE) return -1
          break
        }
        case Chunk.SizeLf:
          if (buf[i] !== 10) return -1
          if (this.size === 0) this.state = Chunk.TrailerStart
          else {
            this.remaining = this.size
            this.state = Chunk.Data
          }
          break
        case Chunk.DataCr:
          if (buf[i] !== 13) return -1
          this.state = Chunk.DataLf
          break
        case Chunk.DataLf:
          if (buf[i] !== 10) return -1
          this.state = Chunk.SizeStart
          break
        case Chunk.TrailerStart:
        case Chunk.Trailer: {
          const c = buf[i]!
          if (c === 13) this.state = this.state === Chunk.TrailerStart ? Chunk.EndLf : Chunk.TrailerLf
          else if ((c < 32 && c !== 9) || c === 127) return -1
          else this.state = Chunk.Trailer
          if (++this.trailerBytes > MAX_TRAILERS) return -1
          break
        }
        case Chunk.TrailerLf:
          if (buf[i] !== 10) return -1
          this.state = Chunk.TrailerStart
          break
        case Chunk.EndLf:
          if (buf[i] !== 10) return -1
          this.state = Chunk.Done
          return i + 1
        case Chunk.Done:
          return i
      }
      i++
    }
    return n
  }
}
