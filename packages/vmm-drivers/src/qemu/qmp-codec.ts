/**
 * QMP framing, apart from any socket: QEMU sends one JSON object per line (CRLF-terminated), and
 * we send one per line. The decoder takes chunks as they arrive (split anywhere, even inside a
 * UTF-8 sequence) and returns whole, classified messages.
 */
import { StringDecoder } from 'node:string_decoder'
import { VmmError } from '../errors.js'

export interface QmpGreeting {
  type: 'greeting'
  version: { qemu: { major: number; minor: number; micro: number }; package: string }
  capabilities: string[]
}
export interface QmpReturn {
  type: 'return'
  id: unknown
  value: unknown
}
export interface QmpErrorReply {
  type: 'error'
  id: unknown
  errorClass: string
  desc: string
}
export interface QmpEvent {
  type: 'event'
  name: string
  data: Record<string, unknown>
  /** Milliseconds since the epoch, from QEMU's timestamp. */
  timestampMs: number
}
export type QmpMessage = QmpGreeting | QmpReturn | QmpErrorReply | QmpEvent

/** Lines longer than this are not QMP; refuse rather than buffer without bound. */
const MAX_LINE = 16 * 1024 * 1024

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Classifies one parsed QMP object; throws `control_protocol` for anything QMP never sends. */
export function classifyQmp(obj: unknown): QmpMessage {
  if (!isObject(obj)) throw new VmmError('control_protocol', `QMP message is not an object: ${JSON.stringify(obj)}`)
  if (isObject(obj.QMP)) {
    const qmp = obj.QMP
    return {
      type: 'greeting',
      version: qmp.version as QmpGreeting['version'],
      capabilities: Array.isArray(qmp.capabilities) ? (qmp.capabilities as string[]) : [],
    }
  }
  if ('return' in obj) return { type: 'return', id: obj.id, value: obj.return }
  if (isObject(obj.error)) {
    return {
      type: 'error',
      id: obj.id,
      errorClass: String(obj.error.class ?? 'GenericError'),
      desc: String(obj.error.desc ?? ''),
    }
  }
  if (typeof obj.event === 'string') {
    const ts = isObject(obj.timestamp) ? obj.timestamp : {}
    const seconds = typeof ts.seconds === 'number' ? ts.seconds : 0
    const micros = typeof ts.microseconds === 'number' ? ts.microseconds : 0
    return {
      type: 'event',
      name: obj.event,
      data: isObject(obj.data) ? obj.data : {},
      timestampMs: seconds * 1000 + Math.floor(micros / 1000),
    }
  }
  throw new VmmError('control_protocol', `unrecognised QMP message: ${JSON.stringify(obj).slice(0, 200)}`)
}

export class QmpDecoder {
  #text = new StringDecoder('utf8')
  #buffer = ''

  /** Feeds a chunk; returns the messages completed by it, in order. */
  push(chunk: Buffer | string): QmpMessage[] {
    this.#buffer += typeof chunk === 'string' ? chunk : this.#text.write(chunk)
    const out: QmpMessage[] = []
    let nl: number
    while ((nl = this.#buffer.indexOf('\n')) !== -1) {
      const line = this.#buffer.slice(0, nl).trim()
      this.#buffer = this.#buffer.slice(nl + 1)
      if (line === '') continue
      let parsed: unknown
      try {
        parsed = JSON.parse(line)
      } catch {
        throw new VmmError('control_protocol', `QMP sent a line that is not JSON: ${line.slice(0, 200)}`)
      }
      out.push(classifyQmp(parsed))
    }
    if (this.#buffer.length > MAX_LINE) {
      throw new VmmError('control_protocol', `QMP line longer than ${MAX_LINE} bytes`)
    }
    return out
  }

  /** Bytes received but not yet a whole line (a truncated message when the peer closed). */
  get pending(): string {
    return this.#buffer
  }
}

/** One command as QEMU expects it: `{"execute": ..., "arguments": ..., "id": ...}` and a newline. */
export function encodeQmpCommand(execute: string, args?: Record<string, unknown>, id?: string | number): string {
  const msg: Record<string, unknown> = { execute }
  if (args !== undefined && Object.keys(args).length > 0) msg.arguments = args
  if (id !== undefined) msg.id = id
  return `${JSON.stringify(msg)}\n`
}
