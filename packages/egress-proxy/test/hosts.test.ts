import { describe, expect, it } from 'vitest'
import { compileHostPatterns, hostMatches, normalizeHost, splitHostPort } from '../src/hosts.js'

describe('normalizeHost', () => {
  it.each([
    ['API.OpenAI.com', 'api.openai.com'],
    ['api.openai.com.', 'api.openai.com'],
    ['api.openai.com:443', 'api.openai.com'],
    ['API.OPENAI.COM.:8443', 'api.openai.com'],
    ['127.0.0.1', '127.0.0.1'],
    ['127.0.0.1:80', '127.0.0.1'],
    ['[::1]:443', '::1'],
    ['[2001:DB8:0:0::1]', '2001:db8::1'],
    ['2001:db8::1', '2001:db8::1'],
    ['bücher.example', 'xn--bcher-kva.example'],
    ['under_score.example.com', 'under_score.example.com'],
  ])('%s → %s', (input, out) => {
    expect(normalizeHost(input)).toBe(out)
  })

  it.each(['', '.', 'a..b', '-bad.example', 'bad-.example', 'has space.example', 'a/b', '[::1', 'host:99999', 'host:0', 'host:abc', 'x'.repeat(64) + '.com', '*.example.com'])(
    'rejects %j',
    (input) => {
      expect(normalizeHost(input)).toBeNull()
    },
  )

  it('splits authorities', () => {
    expect(splitHostPort('api.test:8443')).toEqual({ host: 'api.test', port: 8443 })
    expect(splitHostPort('api.test')).toEqual({ host: 'api.test', port: 0 })
    expect(splitHostPort('[::1]:1')).toEqual({ host: '::1', port: 1 })
    expect(splitHostPort('[nope]:1')).toBeNull()
  })
})

describe('host patterns', () => {
  const m = compileHostPatterns(['api.openai.com', '*.Example.COM.', '10.0.0.1', 'Port.Example.org:443'], 'hosts')

  it.each([
    ['api.openai.com', true],
    ['API.openai.com', false], // callers pass canonical hosts; the pattern side is case-folded
    ['openai.com', false],
    ['x.api.openai.com', false],
    ['a.example.com', true],
    ['b.example.com', true],
    ['example.com', false],
    ['a.b.example.com', false],
    ['aexample.com', false],
    ['10.0.0.1', true],
    ['10.0.0.2', false],
    ['port.example.org', true],
  ])('%s matches: %s', (host, expected) => {
    expect(hostMatches(m, host)).toBe(expected)
  })

  it('matches canonicalised destinations whatever their spelling', () => {
    for (const spelled of ['A.EXAMPLE.COM.', 'a.example.com:8443', 'API.OPENAI.COM']) {
      expect(hostMatches(m, normalizeHost(spelled)!)).toBe(true)
    }
  })

  it('an absent or empty list matches every host', () => {
    expect(hostMatches(compileHostPatterns(undefined, 'h'), 'anything.example')).toBe(true)
    expect(hostMatches(compileHostPatterns([], 'h'), '1.2.3.4')).toBe(true)
  })

  it('a wildcard never matches an IP literal', () => {
    expect(hostMatches(compileHostPatterns(['*.0.0.1'], 'h'), '10.0.0.1')).toBe(false)
  })

  it.each([
    [['*'], 'hosts[0]', 'omit hosts'],
    [['https://api.openai.com'], 'hosts[0]', 'is a URL'],
    [['api.*.com'], 'hosts[0]', 'whole first label'],
    [['*.*.example.com'], 'hosts[0]', 'wildcard'],
    [['ok.example', ''], 'hosts[1]', 'non-empty'],
    [['bad host'], 'hosts[0]', 'not a valid host'],
    ['api.openai.com', 'hosts', 'list'],
  ])('rejects %j naming %s', (patterns, field, words) => {
    expect(() => compileHostPatterns(patterns, 'hosts')).toThrow(expect.objectContaining({ code: 'invalid_input', field, message: expect.stringContaining(words) }))
  })
})
