/**
 * The fast path's response side as tables: how response heads parse and frame, and what the
 * guest's head keeps.
 */
import { describe, expect, it } from 'vitest'
import { guestResponse, keptHeaders, parseResponseHead, type ResponseHead, responseFraming } from '../src/http1-response.js'

const b = (s: string) => Buffer.from(s, 'latin1')
const MAX = 16 * 1024

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
    ['a plain Content-Length, then a list of it', 'HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length:7 , 7\r\n\r\n', { contentLength: 7 }],
    ['a Content-Length with leading zeros', 'HTTP/1.1 200 OK\r\nContent-Length:  0042 \r\n\r\n', { contentLength: 42 }],
    ['a 15-digit Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: 999999999999999\r\n\r\n', { contentLength: 999999999999999 }],
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
    ['a list of two lengths', 'HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n'],
    ['a list that disagrees with an earlier length', 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6, 6\r\n\r\n'],
    ['a signed Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n'],
    ['an empty Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n'],
    ['a 16-digit Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000\r\n\r\n'],
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
