import { describe, expect, it } from 'vitest'
import { compilePolicy } from '../src/policy.js'
import { derivePlaceholder, isPlaceholder, scanPlaceholders } from '../src/placeholders.js'

const ph = (name: string) => derivePlaceholder(Buffer.alloc(32, 7), '10.0.0.5', name)

function policy(overrides: Record<string, unknown> = {}) {
  return {
    env: { OPENAI_REAL: 'sk-real', GH_REAL: 'ghp-real' },
    credentials: {
      OPENAI_API_KEY: { source: { env: 'OPENAI_REAL' }, inject: [{ hosts: ['api.openai.com', '*.openai.com'], as: { header: 'Authorization', format: 'Bearer ${value}' } }] },
      GITHUB_TOKEN: { source: { env: 'GH_REAL' }, inject: [{ hosts: ['api.github.com'], as: { header: 'Authorization', format: 'token ${value}' } }, { hosts: ['uploads.github.com'], as: { header: 'X-Upload-Token', format: '${value}:${value}' } }] },
    },
    ...overrides,
  }
}

describe('placeholders', () => {
  it('are deterministic per (key, source, credential), and differ otherwise', () => {
    const key = Buffer.alloc(32, 1)
    const a = derivePlaceholder(key, '10.0.0.5', 'OPENAI_API_KEY')
    expect(a).toBe(derivePlaceholder(Buffer.alloc(32, 1), '10.0.0.5', 'OPENAI_API_KEY'))
    expect(a).toMatch(/^hmph_[0-9a-f]{40}$/)
    expect(isPlaceholder(a)).toBe(true)
    expect(derivePlaceholder(key, '10.0.0.6', 'OPENAI_API_KEY')).not.toBe(a)
    expect(derivePlaceholder(key, '10.0.0.5', 'OTHER')).not.toBe(a)
    expect(derivePlaceholder(Buffer.alloc(32, 2), '10.0.0.5', 'OPENAI_API_KEY')).not.toBe(a)
  })

  it('are found only in their exact shape', () => {
    const p = ph('X')
    const found: Array<[string, number]> = []
    const value = `Bearer ${p}, ${p}0, hmph_zz ${p.slice(0, -1)} x${p}`
    scanPlaceholders(value, (t, at) => found.push([t, at]))
    expect(found.map(([, at]) => at)).toEqual([7, value.lastIndexOf(p)])
    expect(found.every(([t]) => t === p)).toBe(true)
  })
})

describe('compilePolicy', () => {
  it('renders templates with the real value and plans per host', () => {
    const c = compilePolicy(policy(), ph)
    const openai = c.planFor('api.openai.com')
    expect(openai.set).toEqual([{ header: 'Authorization', headerLower: 'authorization', value: 'Bearer sk-real', credential: 'OPENAI_API_KEY' }])
    expect(openai.swap.get(ph('OPENAI_API_KEY'))).toBe('sk-real')
    expect(openai.swap.has(ph('GITHUB_TOKEN'))).toBe(false)
    expect(c.planFor('chat.openai.com').credentials).toEqual(['OPENAI_API_KEY'])
    expect(c.planFor('uploads.github.com').set).toEqual([{ header: 'X-Upload-Token', headerLower: 'x-upload-token', value: 'ghp-real:ghp-real', credential: 'GITHUB_TOKEN' }])
    expect(c.planFor('evil.example').set).toEqual([])
    expect(c.planFor('evil.example').swap.size).toBe(0)
    expect(c.byPlaceholder.get(ph('GITHUB_TOKEN'))?.name).toBe('GITHUB_TOKEN')
    expect(c.unmatchedPlaceholder).toBe('forward')
  })

  it('an inject rule without hosts applies to every host', () => {
    const c = compilePolicy({ env: { R: 'v' }, credentials: { K: { source: { env: 'R' }, inject: [{ as: { header: 'X-Key', format: '${value}' } }] } } }, ph)
    expect(c.planFor('anything.example').set[0]?.value).toBe('v')
  })

  it.each([
    [{ credentials: { OPENAI_API_KEY: { source: { env: 'OPENAI_REAL' }, inject: [{ as: { header: 'Authorization', format: 'Bearer' } }] } } }, 'credentials.OPENAI_API_KEY.inject[0].as.format', 'must contain ${value}'],
    [{ credentials: { OPENAI_API_KEY: { source: { env: 'MISSING' }, inject: [{ as: { header: 'A', format: '${value}' } }] } } }, 'credentials.OPENAI_API_KEY.source.env', 'not in env'],
    [{ credentials: { OPENAI_API_KEY: { source: { env: 'OPENAI_REAL' }, inject: [] } } }, 'credentials.OPENAI_API_KEY.inject', 'non-empty'],
    [{ credentials: { OPENAI_API_KEY: { source: { env: 'OPENAI_REAL' }, inject: [{ as: { header: 'Bad Header', format: '${value}' } }] } } }, 'credentials.OPENAI_API_KEY.inject[0].as.header', 'header name'],
    [{ credentials: { OPENAI_API_KEY: { source: { env: 'OPENAI_REAL' }, inject: [{ as: { header: 'Host', format: '${value}' } }] } } }, 'credentials.OPENAI_API_KEY.inject[0].as.header', 'managed by the proxy'],
    [{ credentials: { OPENAI_API_KEY: { source: { env: 'OPENAI_REAL' }, inject: [{ hosts: ['*'], as: { header: 'A', format: '${value}' } }] } } }, 'credentials.OPENAI_API_KEY.inject[0].hosts[0]', 'omit hosts'],
    [{ credentials: { OPENAI_API_KEY: { source: { env: 'OPENAI_REAL' }, inject: [{ as: { header: 'A', format: 'x\r\ny ${value}' } }] } } }, 'credentials.OPENAI_API_KEY.inject[0].as.format', 'cannot carry'],
    [{ credentials: { OPENAI_API_KEY: { source: { env: 'OPENAI_REAL' }, inject: [{ as: { header: 'A', format: '${value}', prefix: 'x' } }] } } }, 'credentials.OPENAI_API_KEY.inject[0].as.prefix', 'unknown field'],
    [{ credentials: { '1BAD': { source: { env: 'OPENAI_REAL' }, inject: [{ as: { header: 'A', format: '${value}' } }] } } }, 'credentials.1BAD', 'env var name'],
    [{ env: { OPENAI_REAL: 'line\nbreak' }, credentials: { K: { source: { env: 'OPENAI_REAL' }, inject: [{ as: { header: 'A', format: '${value}' } }] } } }, 'env.OPENAI_REAL', 'cannot carry'],
    [{ env: { OPENAI_REAL: '' }, credentials: { K: { source: { env: 'OPENAI_REAL' }, inject: [{ as: { header: 'A', format: '${value}' } }] } } }, 'env.OPENAI_REAL', 'is empty'],
    [{ unmatchedPlaceholder: 'drop' }, 'unmatchedPlaceholder', '"forward" or "block"'],
    [{ credentails: {} }, 'credentails', 'unknown field'],
  ])('rejects bad input naming the field (%#)', (overrides, field, words) => {
    expect(() => compilePolicy(policy(overrides), ph)).toThrow(expect.objectContaining({ code: 'invalid_input', field, message: expect.stringContaining(words) }))
  })

  it('prefixes fields for callers that nest policies', () => {
    expect(() => compilePolicy(policy({ unmatchedPlaceholder: 1 }), ph, 'sources[2]')).toThrow(expect.objectContaining({ field: 'sources[2].unmatchedPlaceholder' }))
  })

  it('never puts a real value in an error', () => {
    const secret = 'sk-very-secret-value'
    try {
      compilePolicy({ env: { R: `${secret}\n` }, credentials: { K: { source: { env: 'R' }, inject: [{ as: { header: 'A', format: '${value}' } }] } } }, ph)
      expect.unreachable()
    } catch (err) {
      expect(JSON.stringify(err) + String(err) + (err as Error).stack).not.toContain(secret)
    }
  })
})
