/**
 * The proxy's own answers, as bytes: every status it sends has its own reason phrase, and an
 * error carries its code and message the same way on every path.
 */
import { STATUS_CODES } from 'node:http'
import { describe, expect, it } from 'vitest'
import { errorAnswer, http1Answer, statusAnswer } from '../src/error-response.js'
import { EgressError, type EgressErrorCode } from '../src/errors.js'

/** Every code, so a new one cannot be left out of the table below (the type checks it). */
const CODES: Record<EgressErrorCode, true> = {
  unregistered_source: true, destination_blocked: true, host_address_blocked: true, port_blocked: true,
  placeholder_blocked: true, misdirected_request: true, bad_request: true, header_too_large: true,
  dns_failed: true, upstream_tls: true, upstream_connect: true, upstream_timeout: true,
  upstream_failed: true, ca_invalid: true, listen_failed: true, proxy_closed: true,
}

describe('http1Answer', () => {
  it('counts the body in bytes and leaves it out for HEAD', () => {
    const answer = { status: 502, fields: [['x-hypeman-egress-error', 'upstream_tls']] as const, body: Buffer.from('naïve\n') }
    expect(http1Answer(answer, { close: true, head: false }).toString('utf8')).toBe('HTTP/1.1 502 Bad Gateway\r\nx-hypeman-egress-error: upstream_tls\r\ncontent-length: 7\r\nconnection: close\r\n\r\nnaïve\n')
    expect(http1Answer({ status: 403, fields: [], body: Buffer.from('no\n') }, { close: false, head: true }).toString()).toBe('HTTP/1.1 403 Forbidden\r\ncontent-length: 3\r\n\r\n')
  })

  it.each(Object.keys(CODES) as EgressErrorCode[])('%s: its status with that status\'s own reason phrase, the code and the message', (code) => {
    const err = new EgressError(code, 'what happened')
    const text = http1Answer(errorAnswer(err), { close: true }).toString('latin1')
    expect(text).toBe(
      `HTTP/1.1 ${err.status} ${STATUS_CODES[err.status]}\r\ncontent-type: text/plain; charset=utf-8\r\nx-hypeman-egress-error: ${code}\r\ncontent-length: 14\r\nconnection: close\r\n\r\nwhat happened\n`,
    )
  })

  it('names a 421, a 504 and a 503 for what they are', () => {
    const line = (code: EgressErrorCode) => http1Answer(errorAnswer(new EgressError(code, 'x')), { close: false }).toString('latin1').split('\r\n')[0]
    expect(line('misdirected_request')).toBe('HTTP/1.1 421 Misdirected Request')
    expect(line('upstream_timeout')).toBe('HTTP/1.1 504 Gateway Timeout')
    expect(line('proxy_closed')).toBe('HTTP/1.1 503 Service Unavailable')
    expect(line('header_too_large')).toBe('HTTP/1.1 431 Request Header Fields Too Large')
  })

  it('a status alone: no body, no code', () => {
    expect(http1Answer(statusAnswer(408), { close: true }).toString()).toBe('HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n')
  })
})
