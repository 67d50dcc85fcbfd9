import { describe, expect, it } from 'vitest'
import { ValidationError, formatRate, formatSize, parseDuration, parseRate, parseSize } from '../src/index.js'

describe('parseSize', () => {
  it.each([
    ['1GB', 1024 ** 3],
    ['512MB', 512 * 1024 ** 2],
    ['2G', 2 * 1024 ** 3],
    ['3GB', 3 * 1024 ** 3],
    ['10GiB', 10 * 1024 ** 3],
    ['1.5G', 1.5 * 1024 ** 3],
    ['4096', 4096],
    ['4096B', 4096],
    ['64k', 64 * 1024],
    [' 1 gb ', 1024 ** 3],
    [1234, 1234],
  ])('%j → %d bytes', (input, want) => {
    expect(parseSize(input, 'size')).toBe(want)
  })

  it.each(['', 'GB', '1XB', '-1GB', '1GB/s', '1Gbps', '0.1B', 'one', '1e3'])('rejects %j naming the field', (input) => {
    const err = (() => {
      try {
        parseSize(input, 'overlaySize')
      } catch (e) {
        return e
      }
    })()
    expect(err).toBeInstanceOf(ValidationError)
    expect((err as ValidationError).field).toBe('overlaySize')
    expect((err as ValidationError).code).toBe('invalid_input')
    expect((err as ValidationError).message).toContain('overlaySize')
  })

  it('rejects non-integers and wrong types', () => {
    expect(() => parseSize(1.5, 'size')).toThrow(ValidationError)
    expect(() => parseSize(-1, 'size')).toThrow(ValidationError)
    expect(() => parseSize(null, 'size')).toThrow(/size/)
  })

  it('enforces ranges', () => {
    expect(() => parseSize('1MB', 'size', { min: 64 * 1024 ** 2 })).toThrow(/below the minimum/)
    expect(() => parseSize('2T', 'size', { max: 1024 ** 4 })).toThrow(/above the maximum/)
  })
})

describe('parseRate', () => {
  it.each([
    ['1Gbps', 1e9],
    ['125MB/s', 1e9],
    ['100MB/s', 8e8],
    ['500MB/s', 4e9],
    ['10Mbps', 1e7],
    ['10Mb/s', 1e7],
    ['10mbit/s', 1e7],
    ['1KiB/s', 8192],
    ['1MBps', 8e6],
    ['800bps', 800],
  ])('%j → %d bit/s', (input, want) => {
    expect(parseRate(input, 'network.bandwidthDownload')).toBe(want)
  })

  it('treats 1Gbps and 125MB/s as the same rate', () => {
    expect(parseRate('1Gbps', 'a')).toBe(parseRate('125MB/s', 'b'))
  })

  it.each(['100MB', '1G', '100', 'fast', '0MB/s', '1.1bps', ''])('rejects %j', (input) => {
    expect(() => parseRate(input, 'diskIoBps')).toThrow(/diskIoBps/)
  })
})

describe('parseDuration', () => {
  it('parses ms strings and numbers', () => {
    expect(parseDuration('30s', 't')).toBe(30_000)
    expect(parseDuration('500ms', 't')).toBe(500)
    expect(parseDuration('2m', 't')).toBe(120_000)
    expect(parseDuration(250, 't')).toBe(250)
  })
  it('rejects garbage that ms() would silently turn into undefined', () => {
    expect(() => parseDuration('soon', 'timeout')).toThrow(/timeout/)
    expect(() => parseDuration('', 'timeout')).toThrow(ValidationError)
    expect(() => parseDuration(-5, 'timeout')).toThrow(ValidationError)
  })
})

describe('formatting', () => {
  it('formats sizes as parseSize reads them', () => {
    for (const s of ['1GB', '512MB', '10GB', '1.5GB', '64KB']) expect(formatSize(parseSize(s, 'x'))).toBe(s)
  })
  it('formats rates in bytes when whole, else bits', () => {
    expect(formatRate(1e9)).toBe('125MB/s')
    expect(formatRate(8e8)).toBe('100MB/s')
    expect(formatRate(1_000_004)).toBe('1000004bps')
    expect(formatRate(1e9 + 4)).toBe('1000000004bps')
    expect(parseRate(formatRate(12_345_000), 'x')).toBe(12_345_000)
  })
})
