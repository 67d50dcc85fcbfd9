/**
 * The one parser for human sizes, rates and durations in this repo.
 *
 * Sizes (memory, disks) use 1024 multiples, as docker `--memory` and QEMU `-m` do:
 * "1GB" = "1G" = "1GiB" = 1073741824 bytes.
 * Rates (network, disk I/O) use 1000 multiples, as networking does, and keep bits and bytes
 * apart by the case of the unit: "B/s"/"Bps" are bytes, "bps"/"b/s"/"bit/s" are bits, so
 * "1Gbps" and "125MB/s" are the same rate. "Ki"/"Mi"/... prefixes select 1024 multiples.
 *
 * `bytes` alone is not used for parsing: it returns 1 for "1G" and 100 for "100MB/s" without
 * complaint. It only formats.
 */
import bytesLib from 'bytes'
import msLib from 'ms'
import { ValidationError } from './errors.js'

const PREFIX_POWER: Record<string, number> = { '': 0, k: 1, m: 2, g: 3, t: 4, p: 5 }

export interface RangeOptions {
  min?: number
  max?: number
}

function checkRange(field: string, value: number, shown: string, opts: RangeOptions): number {
  if (opts.min !== undefined && value < opts.min) {
    throw new ValidationError(field, `${shown} is below the minimum of ${opts.min}`)
  }
  if (opts.max !== undefined && value > opts.max) {
    throw new ValidationError(field, `${shown} is above the maximum of ${opts.max}`)
  }
  return value
}

const SIZE_RE = /^(\d+(?:\.\d+)?)\s*(?:([kmgtp])(i?)b?|(b?))$/i

/** Parses a size such as "512MB", "2G", "10GiB" or "4096" into bytes. */
export function parseSize(input: unknown, field: string, opts: RangeOptions = {}): number {
  if (typeof input === 'number') {
    if (!Number.isSafeInteger(input) || input < 0) {
      throw new ValidationError(field, `expected a non-negative whole number of bytes, got ${input}`)
    }
    return checkRange(field, input, String(input), opts)
  }
  if (typeof input !== 'string') {
    throw new ValidationError(field, `expected a size like "512MB" or "2G", got ${typeof input}`)
  }
  const m = SIZE_RE.exec(input.trim())
  if (!m) throw new ValidationError(field, `"${input}" is not a size (examples: "512MB", "2G", "10GB")`)
  const power = PREFIX_POWER[(m[2] ?? '').toLowerCase()] ?? 0
  const value = Number(m[1]) * 1024 ** power
  if (!Number.isSafeInteger(value)) {
    throw new ValidationError(field, `"${input}" is not a whole number of bytes`)
  }
  return checkRange(field, value, `"${input}"`, opts)
}

const RATE_RE = /^(\d+(?:\.\d+)?)\s*([kKmMgGtTpP]?)(i?)(B\/s|Bps|bps|b\/s|bit\/s|bits\/s)$/

/** Parses a rate such as "100MB/s", "1Gbps" or "512Kibit/s" into bits per second. */
export function parseRate(input: unknown, field: string, opts: RangeOptions = {}): number {
  if (typeof input !== 'string') {
    throw new ValidationError(field, `expected a rate like "100MB/s" or "1Gbps", got ${typeof input}`)
  }
  const m = RATE_RE.exec(input.trim())
  if (!m) {
    throw new ValidationError(
      field,
      `"${input}" is not a rate (examples: "100MB/s" bytes per second, "1Gbps" bits per second)`,
    )
  }
  const base = m[3] ? 1024 : 1000
  const power = PREFIX_POWER[(m[2] ?? '').toLowerCase()] ?? 0
  const unitIsBytes = m[4] === 'B/s' || m[4] === 'Bps'
  const bits = Number(m[1]) * base ** power * (unitIsBytes ? 8 : 1)
  if (!Number.isSafeInteger(bits) || bits <= 0) {
    throw new ValidationError(field, `"${input}" must be a positive whole number of bits per second`)
  }
  return checkRange(field, bits, `"${input}"`, opts)
}

/** Parses "30s", "500ms", "2m" (or a number of milliseconds) into milliseconds. */
export function parseDuration(input: unknown, field: string, opts: RangeOptions = {}): number {
  let value: number | undefined
  if (typeof input === 'number') value = input
  else if (typeof input === 'string' && input.trim() !== '') {
    // ms() returns undefined for garbage and accepts bare numbers as milliseconds.
    value = msLib(input.trim() as msLib.StringValue) as number | undefined
  }
  if (value === undefined || !Number.isFinite(value) || value < 0) {
    throw new ValidationError(field, `${JSON.stringify(input)} is not a duration (examples: "500ms", "30s", "2m")`)
  }
  return checkRange(field, value, JSON.stringify(input), opts)
}

/** "1073741824" → "1GB" (1024 multiples, the inverse of parseSize). */
export function formatSize(bytes: number): string {
  return bytesLib.format(bytes, { unitSeparator: '', decimalPlaces: 2 }) ?? `${bytes}B`
}

/** Bits per second → the shortest exact human form: "125MB/s" when it is whole bytes, else "1.5Mbps". */
export function formatRate(bitsPerSec: number): string {
  const units = ['', 'K', 'M', 'G', 'T']
  const pick = (value: number, suffix: string): string => {
    let i = 0
    while (i < units.length - 1 && value >= 1000 && value % 1000 === 0) {
      value /= 1000
      i++
    }
    return `${value}${units[i]}${suffix}`
  }
  return bitsPerSec % 8 === 0 ? pick(bitsPerSec / 8, 'B/s') : pick(bitsPerSec, 'bps')
}
