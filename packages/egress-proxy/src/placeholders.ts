/**
 * Placeholders: what a guest sees in place of a real secret.
 *
 * Format: `hmph_` followed by 40 lower-case hex digits, e.g. `hmph_3f9c…` (45 characters).
 * The digits are the first 160 bits of HMAC-SHA256(key, "hypeman-egress-placeholder/v1" NUL
 * source NUL credential), where `source` is the canonical source match ("10.100.0.5" or
 * "10.100.0.0/24") and `credential` the guest-visible env var name. The key is 32 random bytes
 * persisted next to the CA (placeholder.key, mode 0600), so a proxy restarted on the same state
 * directory hands out the same placeholders, while nobody without the key can predict one.
 * The fixed prefix lets the hot path skip header values with a single indexOf.
 */
import { createHmac } from 'node:crypto'

export const PLACEHOLDER_PREFIX = 'hmph_'
const DIGITS = 40
const HEX = /^[0-9a-f]$/

export function derivePlaceholder(key: Buffer, source: string, credential: string): string {
  const mac = createHmac('sha256', key).update(`hypeman-egress-placeholder/v1\0${source}\0${credential}`).digest('hex')
  return PLACEHOLDER_PREFIX + mac.slice(0, DIGITS)
}

export function isPlaceholder(value: string): boolean {
  return /^hmph_[0-9a-f]{40}$/.test(value)
}

/**
 * Calls `visit` for each placeholder-shaped token in `value`, in order, with its offset.
 * Only tokens of exactly the placeholder shape count (a longer hex run is not a placeholder).
 */
export function scanPlaceholders(value: string, visit: (token: string, at: number) => void): void {
  let from = 0
  for (;;) {
    const at = value.indexOf(PLACEHOLDER_PREFIX, from)
    if (at < 0) return
    const end = at + PLACEHOLDER_PREFIX.length + DIGITS
    let ok = end <= value.length && !(end < value.length && HEX.test(value[end]!))
    for (let i = at + PLACEHOLDER_PREFIX.length; ok && i < end; i++) ok = HEX.test(value[i]!)
    if (ok) {
      visit(value.slice(at, end), at)
      from = end
    } else {
      from = at + PLACEHOLDER_PREFIX.length
    }
  }
}
