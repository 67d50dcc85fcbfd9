/**
 * The one recorder of what became of an exchange: which refusals are denials and audit events,
 * which exchanges are timed, that each counts once, and that a closing proxy hears when a
 * connection's last exchange ends.
 */
import { describe, expect, it } from 'vitest'
import type { AuditEvent } from '../src/index.js'
import { Audit } from '../src/audit.js'
import type { Conn, ProxyContext } from '../src/context.js'
import { EgressError, type EgressErrorCode } from '../src/errors.js'
import { ProxyMetrics } from '../src/metrics.js'
import { Outcomes } from '../src/outcome.js'
import { captureLogger } from './support/harness.js'


function setup() {
  const metrics = new ProxyMetrics()
  const audit = new Audit(captureLogger().logger)
  const events: AuditEvent[] = []
  audit.emitter.on('event', (e) => events.push(e))
  const ctx = { metrics, audit, logger: captureLogger().logger, closing: false } as unknown as ProxyContext
  const idle: Conn[] = []
  const outcomes = new Outcomes(ctx, (c) => idle.push(c))
  const conn = { source: '10.0.0.5', listener: 'explicit', active: 0, target: { host: 'api.test', port: 443, tls: true } } as unknown as Conn
  return { metrics, events, ctx, idle, outcomes, conn }
}

const dest = { scheme: 'https' as const, host: 'api.test', port: 443, path: '/', authority: 'api.test' }

describe('refusals', () => {
  it.each<[EgressErrorCode, boolean, boolean]>([
    ['unregistered_source', true, true],
    ['misdirected_request', true, true],
    ['destination_blocked', true, true],
    ['placeholder_blocked', true, false],
    ['header_too_large', true, false],
    ['bad_request', false, false],
  ])('%s: counted as denied %s, a denied event %s', (code, counted, audited) => {
    const { metrics, events, outcomes, conn } = setup()
    const o = outcomes.begin(conn)
    o.decided('GET', { kind: 'refuse', err: new EgressError(code, 'no'), dest })
    expect(metrics.denied.get([code])).toBe(counted ? 1 : 0)
    expect(events.filter((e) => e.type === 'denied')).toEqual(audited ? [expect.objectContaining({ source: '10.0.0.5', host: 'api.test', reason: code, message: 'no' })] : [])
    expect(o.answerWith(new EgressError(code, 'no')).status).toBe(new EgressError(code, 'no').status)
    expect(metrics.duration.render()).toContain('_count 0')
  })

  it('an upstream failure the guard refused is a denial with host and port; any other, an upstream_error', () => {
    const { metrics, events, outcomes, conn } = setup()
    outcomes.begin(conn).upstreamFailed(new EgressError('host_address_blocked', 'own host'), dest)
    const err = outcomes.begin(conn).upstreamFailed(Object.assign(new Error('refused'), { code: 'ECONNREFUSED' }), dest)
    expect(err.code).toBe('upstream_connect')
    expect(metrics.denied.get(['host_address_blocked'])).toBe(1)
    expect(metrics.upstreamFailures.get(['upstream_connect'])).toBe(1)
    expect(events.map((e) => [e.type, 'port' in e ? e.port : undefined])).toEqual([['denied', 443], ['upstream_error', undefined]])
  })
})

describe('counting and tracking', () => {
  it('counts an exchange once, timed only when it went upstream', () => {
    const { metrics, outcomes, conn } = setup()
    const o = outcomes.begin(conn)
    o.decided('GET', { kind: 'forward', dest: { ...dest, scheme: 'http' }, rewrite: { headers: [], injected: [], unmatched: [], hasBody: false } })
    o.answered(200)
    o.aborted()
    expect(metrics.requests.get(['explicit', 'http', '2xx'])).toBe(1)
    expect(metrics.requests.get(['explicit', 'http', 'aborted'])).toBe(0)
    expect(metrics.duration.render()).toContain('_count 1')
  })

  it('tells a closing proxy when the last exchange of a connection ends, once', () => {
    const { ctx, idle, outcomes, conn } = setup()
    const a = outcomes.begin(conn)
    const b = outcomes.begin(conn)
    expect(conn.active).toBe(2)
    ctx.closing = true
    a.end()
    a.end()
    expect([conn.active, idle.length]).toEqual([1, 0])
    b.end()
    expect([conn.active, idle]).toEqual([0, [conn]])
  })
})
