/**
 * Rates are bits per second everywhere in this package (common's parseRate gives them, formatRate
 * shows them). An instance without an explicit rate gets a share of the host's capacity in
 * proportion to its vCPUs: vcpus / hostCpus × capacity, never more than the capacity.
 */
import { ValidationError } from '@hypeman-ts/common'

/** 1 Gbit/s each way unless the host says otherwise. */
export const DEFAULT_CAPACITY_BITS = 1_000_000_000
/** Below this, htb cannot keep its rate with full-size frames (and it is no network any more). */
export const MIN_RATE_BITS = 10_000
export const MAX_RATE_BITS = 1_000_000_000_000

export function checkRate(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < MIN_RATE_BITS || value > MAX_RATE_BITS) {
    throw new ValidationError(field, `expected whole bits per second from ${MIN_RATE_BITS} to ${MAX_RATE_BITS}, got ${String(value)}`)
  }
  return value
}

export function defaultRate(vcpus: number, hostCpus: number, capacityBits: number): number {
  const share = Math.min(1, vcpus / hostCpus)
  return Math.max(MIN_RATE_BITS, Math.floor(share * capacityBits))
}
