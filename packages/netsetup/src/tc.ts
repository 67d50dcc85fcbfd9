/**
 * Bandwidth shaping, both directions, per guest:
 *
 *   download (host → guest): the port's egress   root htb 1: ─ class 1:1 rate=ceil=down
 *   upload (guest → host):   the port's ingress  ingress ffff: ─ u32 match-all ─ mirred redirect ─▶ ifb
 *                            the ifb's egress    root htb 1: ─ class 1:1 rate=ceil=up
 *
 * A port receives what the guest sends, so upload can only be shaped after a detour through an
 * ifb (there is no queue on ingress; police/matchall are not in every kernel, u32 + mirred are).
 * Handles are fixed per device because every guest has its own port and ifb: tearing down is
 * deleting the links. Rates go to tc in `bit`, never in tc's own unit words.
 */

export interface QdiscState {
  kind: string
  handle: string
  root: boolean
  parent?: string
}

interface TcQdiscJson {
  kind: string
  handle: string
  root?: boolean
  parent?: string
}

export function parseQdiscs(json: unknown): QdiscState[] {
  if (!Array.isArray(json)) return []
  return (json as TcQdiscJson[]).map((q) => ({ kind: q.kind, handle: q.handle, root: q.root === true, ...(q.parent ? { parent: q.parent } : {}) }))
}

/** htb's per-round quantum in bytes: rate/10 (its r2q default) kept within the range it accepts without warnings. */
export function htbQuantum(bitsPerSec: number): number {
  return Math.min(200_000, Math.max(1600, Math.floor(bitsPerSec / 8 / 10)))
}

export interface ShapingSpec {
  tap: string
  ifb: string
  downloadBitsPerSec: number
  uploadBitsPerSec: number
}

function htbLines(dev: string, bits: number, current: readonly QdiscState[]): string[] {
  const lines: string[] = []
  // `replace` of an htb root by an htb root is a "change", which htb does not support: only when missing.
  if (!current.some((q) => q.root && q.kind === 'htb' && q.handle === '1:')) lines.push(`qdisc replace dev ${dev} root handle 1: htb default 1`)
  lines.push(`class replace dev ${dev} parent 1: classid 1:1 htb rate ${bits}bit ceil ${bits}bit quantum ${htbQuantum(bits)}`)
  return lines
}

/** `tc -batch` lines that bring both directions to the spec (idempotent). */
export function planShaping(spec: ShapingSpec, current: { tap: readonly QdiscState[]; ifb: readonly QdiscState[] }): string[] {
  const lines = htbLines(spec.tap, spec.downloadBitsPerSec, current.tap)
  if (!current.tap.some((q) => q.kind === 'ingress')) lines.push(`qdisc replace dev ${spec.tap} handle ffff: ingress`)
  lines.push(
    `filter replace dev ${spec.tap} parent ffff: protocol all prio 1 handle 800::800 u32 match u32 0 0 action mirred egress redirect dev ${spec.ifb}`,
  )
  lines.push(...htbLines(spec.ifb, spec.uploadBitsPerSec, current.ifb))
  return lines
}
