/** A chunked body found whole however it is split, and malformed framing refused. */
import { describe, expect, it } from 'vitest'
import { ChunkedScanner } from '../src/chunked.js'

const b = (s: string) => Buffer.from(s, 'latin1')

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
