/**
 * The record format of the config disk and of agent message payloads, identical to guest/src/tlv.c:
 *   u16 LE key length | key | u32 LE value length | value
 * Keys repeat for lists. Numbers are decimal ASCII, booleans "1"/"0": trivial and safe to parse in C.
 */
import { GuestError } from './errors.js'

export type TlvValue = string | Buffer | number | bigint | boolean
export type TlvEntry = readonly [key: string, value: TlvValue]

export interface TlvRecord {
  key: string
  value: Buffer
}

function valueBytes(v: TlvValue): Buffer {
  if (Buffer.isBuffer(v)) return v
  if (typeof v === 'boolean') return Buffer.from(v ? '1' : '0')
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) throw new RangeError(`TLV numbers must be safe integers, got ${v}`)
    return Buffer.from(String(v))
  }
  return Buffer.from(String(v), 'utf8')
}

export function encodeTlv(entries: Iterable<TlvEntry>): Buffer {
  const parts: Buffer[] = []
  for (const [key, value] of entries) {
    const k = Buffer.from(key, 'utf8')
    if (k.length > 0xffff) throw new RangeError('TLV key too long')
    const v = valueBytes(value)
    const head = Buffer.alloc(2)
    head.writeUInt16LE(k.length)
    const len = Buffer.alloc(4)
    len.writeUInt32LE(v.length)
    parts.push(head, k, len, v)
  }
  return Buffer.concat(parts)
}

export function decodeTlv(buf: Buffer): TlvRecord[] {
  const out: TlvRecord[] = []
  let off = 0
  while (off < buf.length) {
    if (buf.length - off < 2) throw new GuestError('agent_protocol', 'truncated TLV record (key length)')
    const klen = buf.readUInt16LE(off)
    if (buf.length - off < 2 + klen + 4) throw new GuestError('agent_protocol', 'truncated TLV record (key)')
    const key = buf.toString('utf8', off + 2, off + 2 + klen)
    const vlen = buf.readUInt32LE(off + 2 + klen)
    const start = off + 2 + klen + 4
    if (buf.length - start < vlen) throw new GuestError('agent_protocol', `truncated TLV record (value of ${key})`)
    out.push({ key, value: buf.subarray(start, start + vlen) })
    off = start + vlen
  }
  return out
}

/** Typed access to decoded records: the last value wins for scalars, `all` keeps list order. */
export class TlvView {
  constructor(readonly records: TlvRecord[]) {}
  static decode(buf: Buffer): TlvView {
    return new TlvView(decodeTlv(buf))
  }
  raw(key: string): Buffer | undefined {
    for (let i = this.records.length - 1; i >= 0; i--) if (this.records[i]!.key === key) return this.records[i]!.value
    return undefined
  }
  str(key: string): string | undefined {
    return this.raw(key)?.toString('utf8')
  }
  all(key: string): string[] {
    return this.records.filter((r) => r.key === key).map((r) => r.value.toString('utf8'))
  }
  int(key: string): number | undefined {
    const s = this.str(key)
    if (s === undefined) return undefined
    if (!/^-?\d{1,16}$/.test(s)) throw new GuestError('agent_protocol', `TLV ${key}: not an integer: ${JSON.stringify(s)}`)
    return Number(s)
  }
  bool(key: string): boolean | undefined {
    const s = this.str(key)
    if (s === undefined) return undefined
    if (s !== '0' && s !== '1') throw new GuestError('agent_protocol', `TLV ${key}: not a boolean: ${JSON.stringify(s)}`)
    return s === '1'
  }
}
