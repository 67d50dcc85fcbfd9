import { describe, expect, it } from 'vitest'
import { rewriteRawResponseHeaders, rewriteRequestHeaders, rewriteResponseHeaders } from '../src/headers.js'
import { derivePlaceholder } from '../src/placeholders.js'
import { compilePolicy } from '../src/policy.js'

const key = Buffer.alloc(32, 3)
const ph = (name: string) => derivePlaceholder(key, '10.0.0.5', name)
const policy = compilePolicy(
  {
    env: { A_REAL: 'real-a', B_REAL: 'real-b' },
    credentials: {
      A_KEY: { source: { env: 'A_REAL' }, inject: [{ hosts: ['a.example'], as: { header: 'Authorization', format: 'Bearer ${value}' } }] },
      B_KEY: { source: { env: 'B_REAL' }, inject: [{ hosts: ['b.example'], as: { header: 'X-B', format: '${value}' } }] },
    },
  },
  ph,
)

function pairs(list: string[]): Array<[string, string]> {
  const out: Array<[string, string]> = []
  for (let i = 0; i < list.length; i += 2) out.push([list[i]!, list[i + 1]!])
  return out
}

describe('rewriteRequestHeaders', () => {
  it('sets the rule header, swaps placeholders elsewhere, drops hop-by-hop headers', () => {
    const raw = [
      'Host', 'a.example', 'Authorization', `Bearer ${ph('A_KEY')}`, 'X-Copy', `k=${ph('A_KEY')};again=${ph('A_KEY')}`,
      'Connection', 'keep-alive, X-Hop', 'X-Hop', 'gone', 'Proxy-Authorization', 'Basic eA==', 'Keep-Alive', 'timeout=5',
      'TE', 'trailers', 'Transfer-Encoding', 'chunked', 'Upgrade', 'h2c', 'Expect', '100-continue', 'Accept', '*/*',
    ]
    const r = rewriteRequestHeaders(raw, { authority: 'a.example', policy, plan: policy.planFor('a.example') })
    expect(pairs(r.headers)).toEqual([
      ['host', 'a.example'],
      ['X-Copy', 'k=real-a;again=real-a'],
      ['te', 'trailers'],
      ['Accept', '*/*'],
      ['Authorization', 'Bearer real-a'],
    ])
    expect(r.injected).toEqual(['A_KEY'])
    expect(r.unmatched).toEqual([])
    expect(r.hasBody).toBe(true)
  })

  it('leaves a placeholder for another host untouched and reports it', () => {
    const raw = ['X-B-Copy', ph('B_KEY'), 'Authorization', `Bearer ${ph('A_KEY')}`]
    const r = rewriteRequestHeaders(raw, { authority: 'a.example', policy, plan: policy.planFor('a.example') })
    expect(pairs(r.headers)).toContainEqual(['X-B-Copy', ph('B_KEY')])
    expect(r.unmatched.map((c) => c.name)).toEqual(['B_KEY'])
  })

  it('never swaps into headers servers echo back (Origin, Referer, User-Agent, request ids, CORS and fetch metadata)', () => {
    const echoed = ['Origin', 'referer', 'User-Agent', 'X-Request-Id', 'Traceparent', 'Content-Type', 'Access-Control-Request-Headers', 'Sec-Fetch-Site']
    const raw = [...echoed.flatMap((name) => [name, `x ${ph('A_KEY')}`]), 'X-Api-Key', ph('A_KEY')]
    const r = rewriteRequestHeaders(raw, { authority: 'a.example', policy, plan: policy.planFor('a.example') })
    for (const name of echoed) expect(pairs(r.headers)).toContainEqual([name, `x ${ph('A_KEY')}`])
    expect(pairs(r.headers)).toContainEqual(['X-Api-Key', 'real-a'])
    expect(r.unmatched.map((c) => c.name)).toEqual(['A_KEY'])
    expect(JSON.stringify(r.headers.filter((_, i) => i % 2 === 1 && r.headers[i - 1] !== 'X-Api-Key' && r.headers[i - 1] !== 'Authorization'))).not.toContain('real-a')
  })

  it('injects nothing over plain HTTP, and reports every placeholder', () => {
    const raw = ['Authorization', `Bearer ${ph('A_KEY')}`, 'Content-Length', '0']
    const r = rewriteRequestHeaders(raw, { authority: 'a.example', policy, plan: undefined })
    expect(pairs(r.headers)).toEqual([['host', 'a.example'], ['Authorization', `Bearer ${ph('A_KEY')}`], ['Content-Length', '0']])
    expect(r.injected).toEqual([])
    expect(r.unmatched.map((c) => c.name)).toEqual(['A_KEY'])
    expect(r.hasBody).toBe(false)
  })

  it('ignores placeholders of other sources', () => {
    const foreign = derivePlaceholder(key, '10.0.0.6', 'A_KEY')
    const r = rewriteRequestHeaders(['X', foreign], { authority: 'a.example', policy, plan: policy.planFor('a.example') })
    expect(pairs(r.headers)).toContainEqual(['X', foreign])
    expect(r.unmatched).toEqual([])
  })

  it('joins split cookies and keeps a WebSocket upgrade', () => {
    const raw = ['cookie', 'a=1', 'cookie', 'b=2', 'Upgrade', 'websocket', 'Connection', 'Upgrade', 'Sec-WebSocket-Key', 'k']
    const r = rewriteRequestHeaders(raw, { authority: 'b.example', policy, plan: policy.planFor('b.example'), upgrade: true })
    expect(pairs(r.headers)).toEqual([
      ['host', 'b.example'],
      ['Upgrade', 'websocket'],
      ['Sec-WebSocket-Key', 'k'],
      ['cookie', 'a=1; b=2'],
      ['connection', 'Upgrade'],
      ['X-B', 'real-b'],
    ])
  })

  it('drops the guest copy of an injected header whatever its case', () => {
    const r = rewriteRequestHeaders(['x-b', 'guest-value', 'X-B', 'another'], { authority: 'b.example', policy, plan: policy.planFor('b.example') })
    expect(pairs(r.headers)).toEqual([['host', 'b.example'], ['X-B', 'real-b']])
  })
})

describe('rewriteResponseHeaders', () => {
  it('removes hop-by-hop headers, including those Connection names', () => {
    expect(
      rewriteResponseHeaders({ 'content-type': 'text/plain', connection: 'keep-alive, x-internal', 'keep-alive': 'timeout=5', 'x-internal': '1', 'transfer-encoding': 'chunked', 'set-cookie': ['a=1', 'b=2'] }),
    ).toEqual({ 'content-type': 'text/plain', 'set-cookie': ['a=1', 'b=2'] })
  })

  it('never drops the framing fields or Host, whatever Connection names (the parser of http1.ts)', () => {
    expect(rewriteResponseHeaders({ connection: 'close, Content-Length, x-hop, host', 'content-length': '5', host: 'h', 'x-hop': '1', 'x-kept': '1' })).toEqual({ 'content-length': '5', host: 'h', 'x-kept': '1' })
  })

  it('applies the same rule to a raw list, keeping names as spelled', () => {
    expect(
      rewriteRawResponseHeaders(['Content-Type', 'text/plain', 'Connection', 'close, X-Hop', 'X-Hop', '1', 'Connection', 'content-length', 'Content-Length', '5', 'Upgrade', 'h2c', 'Keep-Alive', 'timeout=5', 'TE', 'trailers']),
    ).toEqual(['Content-Type', 'text/plain', 'Content-Length', '5'])
  })
})
