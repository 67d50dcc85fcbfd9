/**
 * Real secrets never leave through the proxy's own output: logs (at debug), errors it answers
 * with, metrics and audit events. Every kind of flow runs first, including the failing ones,
 * and then everything the proxy wrote is searched.
 */
import { ProxyAgent, WebSocket } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { curl } from './support/clients.js'
import { bearerPolicy, type Harness, SECRET, startHarness } from './support/harness.js'
import { startHttpsUpstream, type Upstream } from './support/upstream.js'

let h: Harness<{ bad: Upstream }>
let bad: Upstream
let ph: string
const answers: string[] = []

beforeAll(async () => {
  h = await startHarness({}, async (pki) => ({ bad: await startHttpsUpstream(pki.selfSigned) }))
  bad = h.extra.bad
  ph = h.proxy.policies.set('127.0.0.1', bearerPolicy(['api.test'])).placeholders.OPENAI_API_KEY!
  h.proxy.policies.set('127.0.0.2', { ...bearerPolicy(['api.test']), unmatchedPlaceholder: 'block' })
})
afterAll(async () => {
  await h?.close()
})

describe('secrets', () => {
  it('a placeholder towards a foreign host is blocked when the policy says so', async () => {
    const p2 = h.proxy.placeholderFor('127.0.0.2', 'OPENAI_API_KEY')
    const r = await curl(['--interface', '127.0.0.2', '--cacert', h.proxy.caPath, '-x', h.proxy.url!, `https://other.test:${h.https.port}/echo`, '-H', `X-Key: ${p2}`, '-D', '-'])
    answers.push(r.body, r.stderr)
    expect(r.status).toBe(403)
    expect(r.body).toContain('x-hypeman-egress-error: placeholder_blocked')
    expect(r.body).toContain('OPENAI_API_KEY')
    expect(h.audit).toContainEqual(expect.objectContaining({ type: 'placeholder_unmatched', action: 'blocked', host: 'other.test', source: '127.0.0.2' }))
    const plain = await curl(['--interface', '127.0.0.2', '-x', h.proxy.url!, `http://api.test:${h.http.port}/echo`, '-H', `X-Key: ${p2}`])
    expect(plain.status).toBe(403)
  })

  it('appear in no log line, error answer, metric or audit event, whatever happened', async () => {
    const x = ['--cacert', h.proxy.caPath, '-x', h.proxy.url!]
    const tp = h.proxy.transparentAddress!.port
    const flows: string[][] = [
      [...x, `https://api.test:${h.https.port}/echo`, '-H', `Authorization: Bearer ${ph}`, '-o', '/dev/null'],
      [...x, '--http2', `https://api.test:${h.https.port}/echo`, '-H', `X-Key: ${ph}`, '-o', '/dev/null'],
      [...x, `https://other.test:${h.https.port}/echo`, '-H', `X-Key: ${ph}`],
      [...x, `https://api.test:${bad.port}/echo`, '-H', `Authorization: Bearer ${ph}`, '-D', '-'],
      [...x, `https://api.test:1/echo`, '-D', '-'],
      [...x, `https://nowhere.invalid:443/`, '-v'],
      [...x, `http://api.test:${h.http.port}/echo`, '-H', `Authorization: Bearer ${ph}`],
      ['--interface', '127.0.0.3', ...x, `https://api.test:${h.https.port}/echo`, '-v'],
      ['--cacert', h.proxy.caPath, '--connect-to', `api.test:443:127.0.0.1:${tp}`, 'https://api.test/echo', '-o', '/dev/null'],
      ['--cacert', h.proxy.caPath, '--connect-to', `api.test:443:127.0.0.1:${tp}`, 'https://api.test/slow?chunks=2&ms=10', '-o', '/dev/null'],
      [...x, `https://api.test:${h.https.port}/echo`, '-H', `X-Big: ${'a'.repeat(20_000)}`, '-D', '-'],
    ]
    for (const args of flows) {
      const r = await curl(args)
      // The echo endpoint reflects what the upstream received; only error answers are the proxy's words.
      if (!r.body.startsWith('{"httpVersion"')) answers.push(r.body)
      answers.push(r.stderr)
    }
    const dispatcher = new ProxyAgent({ uri: h.proxy.url!, requestTls: { ca: h.proxy.caPem } })
    await new Promise<void>((resolve) => {
      const ws = new WebSocket(`wss://api.test:${h.https.port}/ws`, { dispatcher } as never)
      ws.addEventListener('open', () => ws.close())
      ws.addEventListener('close', () => resolve())
      ws.addEventListener('error', () => resolve())
    })
    await dispatcher.close()

    expect(h.log.lines.length).toBeGreaterThan(0)
    expect(h.audit.some((e) => e.type === 'injected')).toBe(true)
    expect(h.audit.some((e) => e.type === 'upstream_error')).toBe(true)
    const everything = [...h.log.lines, h.proxy.metrics(), JSON.stringify(h.audit), ...answers].join('\n')
    expect(everything).toContain('OPENAI_API_KEY')
    expect(everything).not.toContain(SECRET)
    expect(everything).not.toContain(SECRET.slice(3, 20))
  })
})
