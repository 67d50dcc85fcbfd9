import { describe, expect, it } from 'vitest'
import { compilePolicy } from '../src/policy.js'
import { canonicalSource, SourceTable, sourceAddress } from '../src/sources.js'

const empty = () => compilePolicy({ credentials: {} }, () => '')

describe('canonicalSource', () => {
  it.each([
    ['10.100.0.5', '10.100.0.5'],
    ['10.100.0.5/32', '10.100.0.5'],
    ['10.100.0.0/24', '10.100.0.0/24'],
    [' 10.100.0.0/16 ', '10.100.0.0/16'],
    ['FD00:0::5', 'fd00::5'],
    ['fd00::/64', 'fd00::/64'],
    ['0.0.0.0/0', '0.0.0.0/0'],
  ])('%s → %s', (input, key) => {
    expect(canonicalSource(input, 'source').key).toBe(key)
  })

  it.each([
    ['10.100.0.5/24', 'host bits set; the range is written 10.100.0.0/24'],
    ['10.100.0.0/33', 'prefix'],
    ['api.example.com', 'not an IP'],
    ['', 'must be an IP'],
  ])('rejects %j', (input, words) => {
    expect(() => canonicalSource(input, 'sources[0].match')).toThrow(expect.objectContaining({ field: 'sources[0].match', message: expect.stringContaining(words) }))
  })

  it('treats IPv4-mapped remote addresses as IPv4', () => {
    expect(sourceAddress('::ffff:10.0.0.5')).toBe('10.0.0.5')
    expect(sourceAddress('fd00::5')).toBe('fd00::5')
  })
})

describe('SourceTable', () => {
  it('picks the most specific match and notices changes', () => {
    const t = new SourceTable()
    const wide = empty()
    const narrow = empty()
    const exact = empty()
    t.set(canonicalSource('10.0.0.0/8', 's'), wide)
    t.set(canonicalSource('10.1.0.0/16', 's'), narrow)
    t.set(canonicalSource('10.1.2.3', 's'), exact)
    expect(t.lookup('10.1.2.3')?.policy).toBe(exact)
    expect(t.lookup('10.1.2.4')?.policy).toBe(narrow)
    expect(t.lookup('10.2.0.1')?.policy).toBe(wide)
    expect(t.lookup('11.0.0.1')).toBeUndefined()
    const v = t.version
    expect(t.delete('10.1.0.0/16')).toBe(true)
    expect(t.version).toBeGreaterThan(v)
    expect(t.lookup('10.1.2.4')?.policy).toBe(wide)
    expect(t.delete('10.1.0.0/16')).toBe(false)
    expect(t.keys().sort()).toEqual(['10.0.0.0/8', '10.1.2.3'])
  })

  it('matches IPv6 sources in any spelling', () => {
    const t = new SourceTable()
    const p = empty()
    t.set(canonicalSource('fd00::/64', 's'), p)
    expect(t.lookup('fd00:0:0:0::9')?.policy).toBe(p)
    expect(t.lookup('fd01::1')).toBeUndefined()
  })
})
