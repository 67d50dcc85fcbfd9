/**
 * HTTP/1.1 for the fast path, the response side, as pure functions over bytes: the upstream's
 * response head, how long its body is, and the head the guest receives. Strict (CRLF lines,
 * token names, no control characters, no obs-fold, one consistent length): a response it cannot
 * frame exactly is a 502, because bytes are forwarded as they came and the guest must see the
 * same framing the proxy does.
 */
import { connectionOptions, DIGITS, hasToken, TOKEN, trimOws } from './http1.js'

const CRLFCRLF = Buffer.from('\r\n\r\n', 'latin1')
const CRLF = Buffer.from('\r\n', 'latin1')
const KEEP_ALIVE_TIMEOUT = /(?:^|[,;\s])timeout=(\d{1,9})/i
const INCOMPLETE = { kind: 'incomplete' } as const

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
        const digits = digitsValue(buf, from, to)
        if (digits >= 0) {
          if (contentLength >= 0 && digits !== contentLength) return invalid('invalid Content-Length')
          contentLength = digits
        } else {
          // "42, 42" (a list of one repeated value) is the only list allowed (RFC 9110 §8.6).
          for (const part of buf.toString('latin1', from, to).split(',')) {
            const v = trimOws(part)
            if (!DIGITS.test(v) || (contentLength >= 0 && Number(v) !== contentLength)) return invalid('invalid Content-Length')
            contentLength = Number(v)
          }
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

/** `buf[from..to]` as a number when it is 1 to 15 digits and nothing else (what DIGITS accepts), else -1. */
function digitsValue(buf: Buffer, from: number, to: number): number {
  if (to <= from || to - from > 15) return -1
  let n = 0
  for (let i = from; i < to; i++) {
    const c = buf[i]!
    if (!isDigit(c)) return -1
    n = n * 10 + (c - 48)
  }
  return n
}

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
 * then `Connection: close` when `close`, then `body[bodyFrom..bodyTo]`.
 */
export function guestResponse(head: ResponseHead, close: boolean, body?: Buffer, bodyFrom = 0, bodyTo = body?.length ?? 0): Buffer {
  const { source, keep } = head
  let size = HTTP11.length + (head.statusTo - head.statusFrom) + (close ? CLOSE_LINE.length : 0) + 2
  for (let k = 0; k < keep.length; k += 2) size += keep[k + 1]! - keep[k]!
  const bodyBytes = body === undefined ? 0 : bodyTo - bodyFrom
  const out = Buffer.allocUnsafe(size + bodyBytes)
  let at = HTTP11.copy(out, 0)
  // Kept lines mostly follow each other in the source: each run of them is one copy.
  let from = head.statusFrom
  let to = head.statusTo
  for (let k = 0; k < keep.length; k += 2) {
    if (keep[k] !== to) {
      at += source.copy(out, at, from, to)
      from = keep[k]!
    }
    to = keep[k + 1]!
  }
  at += source.copy(out, at, from, to)
  if (close) at += CLOSE_LINE.copy(out, at)
  out[at++] = 13
  out[at++] = 10
  if (bodyBytes > 0) body!.copy(out, at, bodyFrom, bodyTo)
  return out
}
