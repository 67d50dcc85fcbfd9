/**
 * The fast path's request side as tables: which request heads it takes and which it leaves to the
 * general path, the Connection-option rule, and the head it sends upstream.
 */
import { describe, expect, it } from 'vitest'
import { connectionOptions, parseRequestHead, upstreamRequestHead } from '../src/http1.js'

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
    ['Connection: close alone', 'GET / HTTP/1.1\r\nConnection:  CLOSE \r\n\r\n', { close: true }],
    ['Connection: keep-alive', 'GET / HTTP/1.1\r\nConnection: Keep-Alive\r\n\r\n', { close: false }],
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
    ['Connection: upgrade in a list', 'GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n', 'upgrade'],
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

describe('connectionOptions', () => {
  it('names the fields to drop, never the framing fields or Host', () => {
    expect(connectionOptions('keep-alive')).toBeUndefined()
    expect(connectionOptions(' X-Trace ,close, Upgrade')).toEqual(['x-trace'])
    expect(connectionOptions('Content-Length, transfer-encoding, HOST, te')).toEqual(['te'])
    expect(connectionOptions(',,')).toBeUndefined()
    expect(connectionOptions(' Close ')).toBeUndefined()
    expect(connectionOptions('HOST')).toBeUndefined()
    expect(connectionOptions(' X-Trace ')).toEqual(['x-trace'])
  })
})

describe('heads the proxy writes', () => {
  it('upstreamRequestHead', () => {
    expect(upstreamRequestHead('POST', '/a?b', ['host', 'api.test', 'Authorization', 'Bearer x']).toString()).toBe('POST /a?b HTTP/1.1\r\nhost: api.test\r\nAuthorization: Bearer x\r\n\r\n')
  })
})
