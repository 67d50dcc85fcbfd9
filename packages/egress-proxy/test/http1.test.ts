/**
 * The fast path's HTTP/1.1 framing, as tables: which request heads it takes and which it leaves
 * to the general path, how response heads parse and frame, what the guest's head keeps, and a
 * chunked body found whole however it is split.
 */
import { describe, expect, it } from 'vitest'
import {
  ChunkedScanner,
  connectionOptions,
  guestResponse,
  keptHeaders,
  parseRequestHead,
  parseResponseHead,
  type ResponseHead,
  responseFraming,
  upstreamRequestHead,
} from '../src/http1.js'

const b = (s: string) => Buffer.from(s, 'latin1')
const MAX = 16 * 1024

describe('parseRequestHead', () => {
  it('parses a common request, trimming values and keeping names as sent', () => {
    const head = 'GET /v1/models?x=1 HTTP/1.1\r\nHost: api.test\r\nAuthorization:  Bearer abc \t\r\nX-Empty:\r\n\r\n'
    const r = parseRequestHead(b(`${head}next`), MAX)
    expect(r).toEqual({
      kind: 'request',
      method: 'GET',
      target: '/v1/models?x=1',
      headers: ['Host', 'api.test', 'Authorization', 'Bearer abc', 'X-Empty', ''],
      host: 'api.test',
      contentLength: 0,
      close: false,
      headLength: head.length,
    })
  })

  it.each([
    ['a Content-Length body', 'POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n', { contentLength: 12 }],
    ['Connection: close', 'GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n', { close: true }],
    ['an absolute-form target', 'GET https://api.test/x HTTP/1.1\r\n\r\n', { target: 'https://api.test/x', host: undefined }],
    ['obs-text in a value', 'GET / HTTP/1.1\r\nX-Name: caf\xe9\r\n\r\n', { headers: ['X-Name', 'caf\xe9'] }],
  ])('takes %s', (_what, head, expected) => {
    expect(parseRequestHead(b(head), MAX)).toMatchObject({ kind: 'request', ...expected })
  })

  it.each([
    ['HTTP/1.0', 'GET / HTTP/1.0\r\n\r\n', 'request_line'],
    ['HTTP/2 preface', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'request_line'],
    ['CONNECT', 'CONNECT api.test:443 HTTP/1.1\r\n\r\n', 'method'],
    ['an asterisk target', 'OPTIONS * HTTP/1.1\r\n\r\n', 'target'],
    ['an authority target', 'GET api.test:443 HTTP/1.1\r\n\r\n', 'target'],
    ['two spaces', 'GET  / HTTP/1.1\r\n\r\n', 'request_line'],
    ['a leading empty line', '\r\nGET / HTTP/1.1\r\n\r\n', 'request_line'],
    ['obs-fold', 'GET / HTTP/1.1\r\nX-A: 1\r\n  2\r\n\r\n', 'header_syntax'],
    ['space before the colon', 'GET / HTTP/1.1\r\nX-A : 1\r\n\r\n', 'header_syntax'],
    ['a line without a colon', 'GET / HTTP/1.1\r\nBad Header Line\r\n\r\n', 'header_syntax'],
    ['a bare LF inside a value', 'GET / HTTP/1.1\r\nX-A: 1\nX-B: 2\r\n\r\n', 'header_syntax'],
    ['a bare CR inside a value', 'GET / HTTP/1.1\r\nX-A: 1\rX-B: 2\r\n\r\n', 'header_syntax'],
    ['a NUL', 'GET / HTTP/1.1\r\nX-A: 1\x002\r\n\r\n', 'header_syntax'],
    ['Transfer-Encoding', 'POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n', 'transfer_encoding'],
    ['two Content-Length', 'POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n', 'content_length'],
    ['a signed Content-Length', 'POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n', 'content_length'],
    ['a Content-Length list', 'POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n', 'content_length'],
    ['Expect', 'POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n', 'expect'],
    ['Upgrade', 'GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n', 'upgrade'],
    ['Connection: upgrade', 'GET / HTTP/1.1\r\nConnection: Upgrade\r\n\r\n', 'upgrade'],
    ['two Host headers', 'GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n', 'host'],
    ['a head over the limit', `GET / HTTP/1.1\r\nX-Big: ${'a'.repeat(2000)}\r\n\r\n`, 'head_size'],
    ['too many headers', `GET / HTTP/1.1\r\n${'A:1\r\n'.repeat(130)}\r\n`, 'too_many_headers'],
  ])('leaves %s to the general path', (_what, head, reason) => {
    expect(parseRequestHead(b(head), 1024)).toEqual({ kind: 'unusual', reason })
  })

  it('waits for the rest of a head, up to the size limit', () => {
    expect(parseRequestHead(b('GET / HTTP/1.1\r\nHost: a'), 1024)).toEqual({ kind: 'incomplete' })
    expect(parseRequestHead(b(`GET / HTTP/1.1\r\nX: ${'a'.repeat(1100)}`), 1024)).toEqual({ kind: 'unusual', reason: 'head_size' })
  })
})

const response = (head: string, max = MAX) => {
  const r = parseResponseHead(b(head), max)
  if (r.kind !== 'response') throw new Error(`not a response: ${JSON.stringify(r)}`)
  return r
}

describe('parseResponseHead', () => {
  it('parses status, headers and what framing needs', () => {
    const head = 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5, max=100\r\n\r\n'
    const r = response(`${head}hello`)
    expect(r).toMatchObject({ status: 200, minor: 1, contentLength: 5, transferEncoding: 'none', close: false, keepAliveMs: 5000, headLength: head.length })
    // Connection and Keep-Alive are this hop's: the guest's head keeps the rest.
    expect(keptHeaders(r)).toEqual(['Content-Length', '5'])
  })

  it.each([
    ['an empty reason', 'HTTP/1.1 204 \r\n\r\n', { status: 204 }],
    ['no reason at all', 'HTTP/1.1 204\r\n\r\n', { status: 204 }],
    ['a reason with obs-text', 'HTTP/1.1 599 Caf\xe9 \t ok\r\n\r\n', { status: 599 }],
    ['a repeated Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n', { contentLength: 7 }],
    ['chunked last', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n', { transferEncoding: 'chunked' }],
    ['chunked not last', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n', { transferEncoding: 'other' }],
    ['Connection: close', 'HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n', { close: true }],
    ['HTTP/1.0', 'HTTP/1.0 200 OK\r\n\r\n', { minor: 0, close: true }],
    ['HTTP/1.0 keep-alive', 'HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n', { minor: 0, close: false }],
  ])('handles %s', (_what, head, expected) => {
    expect(response(head)).toMatchObject(expected)
  })

  it.each([
    ['HTTP/2', 'HTTP/2 200 OK\r\n\r\n'],
    ['a two-digit status', 'HTTP/1.1 20 OK\r\n\r\n'],
    ['a four-digit status', 'HTTP/1.1 2000 OK\r\n\r\n'],
    ['a status starting with 0', 'HTTP/1.1 099 OK\r\n\r\n'],
    ['HTTP/1.2', 'HTTP/1.2 200 OK\r\n\r\n'],
    ['a control character in the reason', 'HTTP/1.1 200 O\x01K\r\n\r\n'],
    ['an empty header name', 'HTTP/1.1 200 OK\r\n: x\r\n\r\n'],
    ['a space in a header name', 'HTTP/1.1 200 OK\r\nX A: x\r\n\r\n'],
    ['a bare CR', 'HTTP/1.1 200 OK\r\nX-A: 1\rX-B: 2\r\n\r\n'],
    ['a lower-case version', 'http/1.1 200 OK\r\n\r\n'],
    ['conflicting Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n'],
    ['a Content-Length that is not a number', 'HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\n'],
    ['obs-fold', 'HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\n\r\n'],
    ['a bare LF', 'HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\n\r\n'],
    ['a control character', 'HTTP/1.1 200 OK\r\nX-A: 1\x01\r\n\r\n'],
  ])('refuses %s', (_what, head) => {
    expect(parseResponseHead(b(head), MAX).kind).toBe('invalid')
  })

  it('reads a head that follows an interim response, and bounds the head size', () => {
    const buf = b('HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n')
    const first = parseResponseHead(buf, MAX)
    expect(first).toMatchObject({ kind: 'response', status: 103 })
    expect(parseResponseHead(buf, MAX, (first as ResponseHead).headLength)).toMatchObject({ kind: 'response', status: 200 })
    expect(parseResponseHead(b('HTTP/1.1 200 OK\r\nX: 1'), MAX)).toEqual({ kind: 'incomplete' })
    expect(parseResponseHead(b(`HTTP/1.1 200 OK\r\nX: ${'a'.repeat(200)}`), 100).kind).toBe('invalid')
  })
})

describe('connectionOptions', () => {
  it('names the fields to drop, never the framing fields or Host', () => {
    expect(connectionOptions('keep-alive')).toBeUndefined()
    expect(connectionOptions(' X-Trace ,close, Upgrade')).toEqual(['x-trace'])
    expect(connectionOptions('Content-Length, transfer-encoding, HOST, te')).toEqual(['te'])
    expect(connectionOptions(',,')).toBeUndefined()
  })
})

describe('responseFraming', () => {
  it.each([
    ['GET', 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n', { kind: 'length', length: 3 }],
    ['GET', 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n', { kind: 'none' }],
    ['HEAD', 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n', { kind: 'none' }],
    ['GET', 'HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n', { kind: 'none' }],
    ['GET', 'HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n', { kind: 'none' }],
    ['GET', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n', { kind: 'chunked' }],
    ['GET', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n', { kind: 'close' }],
    ['GET', 'HTTP/1.1 200 OK\r\n\r\n', { kind: 'close' }],
    ['POST', 'HTTP/1.0 200 OK\r\n\r\n', { kind: 'close' }],
  ])('%s %j', (method, head, expected) => {
    expect(responseFraming(method, response(head))).toEqual(expected)
  })
})

describe('guestResponse', () => {
  it('keeps the status line and the lines as sent, in order, however they are spelled', () => {
    const head = response('HTTP/1.1 404 Not  Found\r\nx-lower:  a b \r\nX-Empty:\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n')
    expect(guestResponse(head, false).toString('latin1')).toBe('HTTP/1.1 404 Not  Found\r\nx-lower:  a b \r\nX-Empty:\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n')
    expect(keptHeaders(head)).toEqual(['x-lower', 'a b', 'X-Empty', '', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2'])
  })

  it('reads a head that starts inside a buffer', () => {
    const buf = b('junkHTTP/1.1 201 Created\r\nX-A: 1\r\n\r\nbody')
    const head = parseResponseHead(buf, MAX, 4) as ResponseHead
    expect(head).toMatchObject({ status: 201, headLength: buf.length - 8 })
    expect(guestResponse(head, false, buf, buf.length - 4).toString('latin1')).toBe('HTTP/1.1 201 Created\r\nX-A: 1\r\n\r\nbody')
  })

  it('drops hop-by-hop fields and those Connection names, keeps the rest as sent', () => {
    const head = response('HTTP/1.1 200 Fine\r\nX-Keep: 1\r\nConnection: keep-alive, X-Secret-Hop\r\nKeep-Alive: timeout=5\r\nX-Secret-Hop: 2\r\nTE: trailers\r\nProxy-Connection: x\r\nContent-Length: 2\r\n\r\n')
    expect(guestResponse(head, false, b('..ok..'), 2, 4).toString('latin1')).toBe('HTTP/1.1 200 Fine\r\nX-Keep: 1\r\nContent-Length: 2\r\n\r\nok')
  })

  it('keeps Transfer-Encoding, drops a Content-Length it overrides, and can announce a close', () => {
    const head = response('HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 10\r\n\r\n')
    expect(guestResponse(head, true).toString('latin1')).toBe('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n')
  })
})

describe('heads the proxy writes', () => {
  it('upstreamRequestHead', () => {
    expect(upstreamRequestHead('POST', '/a?b', ['host', 'api.test', 'Authorization', 'Bearer x']).toString()).toBe('POST /a?b HTTP/1.1\r\nhost: api.test\r\nAuthorization: Bearer x\r\n\r\n')
  })
})

describe('ChunkedScanner', () => {
  const body = '5;name=val\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: yes\r\n\r\n'

  it('finds the end of a body however it is split, and no further', () => {
    const bytes = b(`${body}HTTP/1.1 200 OK`)
    for (let cut = 0; cut <= body.length; cut++) {
      const s = new ChunkedScanner()
      const first = s.scan(bytes.subarray(0, cut))
      expect(first).toBe(cut)
      const rest = bytes.subarray(cut)
      expect(s.scan(rest)).toBe(body.length - cut)
      expect(s.done).toBe(true)
    }
  })

  it('takes one byte at a time', () => {
    const s = new ChunkedScanner()
    const bytes = b(body)
    for (let i = 0; i < bytes.length; i++) {
      expect(s.done).toBe(false)
      expect(s.scan(bytes.subarray(i, i + 1))).toBe(1)
    }
    expect(s.done).toBe(true)
  })

  it('ends at an offset inside a buffer', () => {
    const s = new ChunkedScanner()
    const bytes = b(`xx0\r\n\r\nyy`)
    expect(s.scan(bytes, 2)).toBe(7)
  })

  it.each([
    ['a non-hex size', 'g\r\n'],
    ['a missing size', '\r\n'],
    ['an over-long size', '10000000000000\r\n'],
    ['a bare LF after the size', '5\nhello\r\n'],
    ['data longer than its size', '2\r\nabc\r\n'],
    ['a control character in an extension', '1;a=\x01\r\n'],
    ['a bare LF in the trailers', '0\r\nX: 1\n\r\n'],
    ['an over-long extension', `1;${'a'.repeat(5000)}\r\n`],
  ])('refuses %s', (_what, text) => {
    expect(new ChunkedScanner().scan(b(text))).toBe(-1)
  })
})
