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
const CRLFCRLF = Buffer.from('\r\n\r\n', 'latin1')
const CRLF = Buffer.from('\r\n', 'latin1')
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
/** Field-value characters (RFC 9110 §5.5): visible ASCII, SP, HTAB and obs-text; never CR, LF or NUL. */
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/
const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP\/1\.1$/
const ABSOLUTE = /^https?:\/\//i
const DIGITS = /^\d{1,15}$/
const KEEP_ALIVE_TIMEOUT = /(?:^|[,;\s])timeout=(\d{1,9})/i
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
function trimOws(s: string): string {
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

export interface ResponseHead {
  kind: 'response'
  status: number
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor: 0 | 1
  headLength: number
  /** -1 when there is no Content-Length. */
  contentLength: number
  /** Transfer-Encoding present; `chunked` when chunked is its final coding. */
  transferEncoding: 'none' | 'chunked' | 'other'
  /** The upstream will close (Connection: close, or HTTP/1.0 without keep-alive). */
  close: boolean
  /** The upstream's Keep-Alive timeout, in ms, when it announced one. */
  keepAliveMs: number | undefined
  /** The bytes the head was read from; the offsets below point into it. */
  source: Buffer
  /** Where the status code starts (after "HTTP/1.x ") and where the status line's CRLF ends. */
  statusFrom: number
  statusTo: number
  /** [from, to) of each header line the guest gets, CRLF included, in order. */
  keep: number[]
}

export type ResponseParse = ResponseHead | { kind: 'incomplete' } | { kind: 'invalid'; reason: string }

const invalid = (reason: string) => ({ kind: 'invalid', reason }) as const

/** Byte classes for the response scanner: 1 = tchar (header name), 2 = field-value, 3 = both. */
const CLASS = new Uint8Array(256)
for (let c = 0; c < 256; c++) {
  const ch = String.fromCharCode(c)
  if (TOKEN.test(ch)) CLASS[c] = (CLASS[c] ?? 0) | 1
  if (c === 9 || (c >= 0x20 && c !== 0x7f)) CLASS[c] = (CLASS[c] ?? 0) | 2
}

const enum Field {
  Other,
  ContentLength,
  TransferEncoding,
  Connection,
  KeepAlive,
  /** Hop-by-hop fields the guest never gets: Proxy-Connection, Upgrade, HTTP2-Settings, TE. */
  Hop,
}

/** Whether `buf[at..at+name.length]` is `name` (lower-case ASCII), ignoring case. */
function nameIs(buf: Buffer, at: number, name: string): boolean {
  for (let i = 0; i < name.length; i++) if ((buf[at + i]! | 0x20) !== name.charCodeAt(i)) return false
  return true
}

/** The fields the proxy acts on, told apart by length first so most names cost one comparison. */
function fieldOf(buf: Buffer, at: number, len: number): Field {
  switch (len) {
    case 2:
      return nameIs(buf, at, 'te') ? Field.Hop : Field.Other
    case 7:
      return nameIs(buf, at, 'upgrade') ? Field.Hop : Field.Other
    case 10:
      return nameIs(buf, at, 'connection') ? Field.Connection : nameIs(buf, at, 'keep-alive') ? Field.KeepAlive : Field.Other
    case 14:
      return nameIs(buf, at, 'content-length') ? Field.ContentLength : nameIs(buf, at, 'http2-settings') ? Field.Hop : Field.Other
    case 16:
      return nameIs(buf, at, 'proxy-connection') ? Field.Hop : Field.Other
    case 17:
      return nameIs(buf, at, 'transfer-encoding') ? Field.TransferEncoding : Field.Other
    default:
      return Field.Other
  }
}

/**
 * Parses a response head at `buf[start..]`; `maxHeadSize` bounds what a head may take. The
 * head is checked byte by byte (status line, token names, field-value characters, no obs-fold)
 * and only the fields that decide framing and hop-by-hop handling become strings; the lines
 * the guest gets are kept as offsets, so its head is copied rather than re-encoded.
 */
export function parseResponseHead(buf: Buffer, maxHeadSize: number, start = 0): ResponseParse {
  const end = buf.indexOf(CRLFCRLF, start)
  if (end < 0) return buf.length - start >= maxHeadSize ? invalid('the response head is too large') : INCOMPLETE
  const headLength = end + 4 - start
  if (headLength > maxHeadSize) return invalid('the response head is too large')
  // Status line: "HTTP/1." [01] SP 3DIGIT [ SP reason ] CRLF
  let eol = buf.indexOf(CRLF, start)
  if (
    eol - start < 12 ||
    !nameIsExact(buf, start, 'HTTP/1.') ||
    (buf[start + 7] !== 48 && buf[start + 7] !== 49) ||
    buf[start + 8] !== 32 ||
    !isDigit(buf[start + 9]!) ||
    buf[start + 9] === 48 ||
    !isDigit(buf[start + 10]!) ||
    !isDigit(buf[start + 11]!) ||
    (eol - start > 12 && buf[start + 12] !== 32)
  ) {
    return invalid('malformed status line')
  }
  for (let i = start + 13; i < eol; i++) if ((CLASS[buf[i]!]! & 2) === 0) return invalid('malformed status line')
  const minor = buf[start + 7] === 49 ? 1 : 0
  const status = (buf[start + 9]! - 48) * 100 + (buf[start + 10]! - 48) * 10 + (buf[start + 11]! - 48)
  const statusTo = eol + 2
  const keep: number[] = []
  let lengthAt = -1
  let contentLength = -1
  let te = ''
  let connection = ''
  let keepAliveMs: number | undefined
  let pos = eol + 2
  while (pos < end + 2) {
    // One pass per line: token name, colon, optional whitespace, field-value bytes up to a CRLF.
    let i = pos
    while ((CLASS[buf[i]!]! & 1) !== 0) i++
    if (i === pos || buf[i] !== 58 /* : */) return invalid('malformed header line')
    const nameLen = i - pos
    i++
    while (buf[i] === 32 || buf[i] === 9) i++
    const from = i
    while ((CLASS[buf[i]!]! & 2) !== 0) i++
    if (buf[i] !== 13 || buf[i + 1] !== 10) return invalid('invalid characters in a header')
    eol = i
    let to = eol
    while (to > from && (buf[to - 1] === 32 || buf[to - 1] === 9)) to--
    const field = fieldOf(buf, pos, nameLen)
    switch (field) {
      case Field.ContentLength: {
        // "42, 42" (a list of one repeated value) is the only list allowed (RFC 9110 §8.6).
        for (const part of buf.toString('latin1', from, to).split(',')) {
          const v = trimOws(part)
          if (!DIGITS.test(v) || (contentLength >= 0 && Number(v) !== contentLength)) return invalid('invalid Content-Length')
          contentLength = Number(v)
        }
        lengthAt = keep.length
        keep.push(pos, eol + 2)
        break
      }
      case Field.TransferEncoding: {
        const value = buf.toString('latin1', from, to)
        te = te ? `${te},${value}` : value
        keep.push(pos, eol + 2)
        break
      }
      case Field.Connection: {
        const value = buf.toString('latin1', from, to)
        connection = connection ? `${connection},${value}` : value
        break
      }
      case Field.KeepAlive: {
        const m = KEEP_ALIVE_TIMEOUT.exec(buf.toString('latin1', from, to))
        if (m) keepAliveMs = Number(m[1]) * 1000
        break
      }
      case Field.Hop:
        break
      default:
        keep.push(pos, eol + 2)
    }
    pos = eol + 2
  }
  let transferEncoding: ResponseHead['transferEncoding'] = 'none'
  if (te) {
    const codings = te.split(',').map((c) => trimOws(c).toLowerCase()).filter((c) => c !== '')
    transferEncoding = codings.at(-1) === 'chunked' ? 'chunked' : 'other'
  }
  // Transfer-Encoding overrides Content-Length; forwarding both would let the guest pick the other one.
  if (transferEncoding !== 'none' && lengthAt >= 0) {
    for (let k = 0; k < keep.length; k += 2) {
      if (fieldOf(buf, keep[k]!, fieldNameLength(buf, keep[k]!)) === Field.ContentLength) {
        keep.splice(k, 2)
        k -= 2
      }
    }
  }
  let close = minor === 0
  // The common values need no tokenising.
  const plain = connection.toLowerCase()
  if (plain === 'keep-alive') close = false
  else if (plain === 'close') close = true
  else if (connection) {
    dropNamed(buf, keep, connection)
    close = hasToken(connection, 'close') || (minor === 0 && !hasToken(connection, 'keep-alive'))
  }
  return {
    kind: 'response',
    status,
    minor,
    headLength,
    contentLength,
    transferEncoding,
    close,
    keepAliveMs,
    source: buf,
    statusFrom: start + 9,
    statusTo,
    keep,
  }
}

const isDigit = (c: number) => c >= 48 && c <= 57

function nameIsExact(buf: Buffer, at: number, text: string): boolean {
  for (let i = 0; i < text.length; i++) if (buf[at + i] !== text.charCodeAt(i)) return false
  return true
}

function fieldNameLength(buf: Buffer, at: number): number {
  let i = at
  while (buf[i] !== 58) i++
  return i - at
}

/** Drops the kept lines whose field the Connection header names (RFC 9110 §7.6.1). */
function dropNamed(buf: Buffer, keep: number[], connection: string): void {
  const named = connectionOptions(connection)
  if (named === undefined) return
  for (let k = 0; k < keep.length; k += 2) {
    const at = keep[k]!
    const name = buf.toString('latin1', at, at + fieldNameLength(buf, at)).toLowerCase()
    if (named.includes(name)) {
      keep.splice(k, 2)
      k -= 2
    }
  }
}

/** The header lines of a parsed response as name/value pairs, as the guest gets them (for tests and logs). */
export function keptHeaders(head: ResponseHead): string[] {
  const out: string[] = []
  for (let k = 0; k < head.keep.length; k += 2) {
    const line = head.source.toString('latin1', head.keep[k], head.keep[k + 1]! - 2)
    const colon = line.indexOf(':')
    out.push(line.slice(0, colon), trimOws(line.slice(colon + 1)))
  }
  return out
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

const HTTP11 = Buffer.from('HTTP/1.1 ', 'latin1')
const CLOSE_LINE = Buffer.from('Connection: close\r\n', 'latin1')

/**
 * The response the guest receives, head and the first body bytes in one buffer: the upstream's
 * status line (as HTTP/1.1) and the header lines parseResponseHead kept, copied as they came,
 * then `Connection: close` when `close`, then `body[from..to]`.
 */
export function guestResponse(head: ResponseHead, close: boolean, body?: Buffer, from = 0, to = body?.length ?? 0): Buffer {
  const { source, keep } = head
  let size = HTTP11.length + (head.statusTo - head.statusFrom) + (close ? CLOSE_LINE.length : 0) + 2
  for (let k = 0; k < keep.length; k += 2) size += keep[k + 1]! - keep[k]!
  const bodyBytes = body === undefined ? 0 : to - from
  const out = Buffer.allocUnsafe(size + bodyBytes)
  let at = HTTP11.copy(out, 0)
  at += source.copy(out, at, head.statusFrom, head.statusTo)
  for (let k = 0; k < keep.length; k += 2) at += source.copy(out, at, keep[k]!, keep[k + 1]!)
  if (close) at += CLOSE_LINE.copy(out, at)
  out[at++] = 13
  out[at++] = 10
  if (bodyBytes > 0) body!.copy(out, at, from, to)
  return out
}

/** The upstream request head: request line plus the rewritten header list. */
export function upstreamRequestHead(method: string, path: string, headers: readonly string[]): Buffer {
  let out = `${method} ${path} HTTP/1.1\r\n`
  for (let i = 0; i < headers.length; i += 2) out += `${headers[i]}: ${headers[i + 1]}\r\n`
  return Buffer.from(`${out}\r\n`, 'latin1')
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
