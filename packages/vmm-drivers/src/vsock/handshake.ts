/**
 * The host side of the hybrid vsock handshake of Firecracker and Cloud Hypervisor, as pure
 * encoding and decoding: a host connects to the VMM's unix socket, writes `CONNECT <port>\n`,
 * and the VMM answers `OK <host port>\n` once the guest accepted on that port; it closes the
 * connection when nothing listens there. Whatever follows the `OK` line is already the guest's.
 */
import { VmmError } from '../errors.js'

/** Longest acknowledgement line we wait for ("OK 4294967295\n" is 14 bytes). */
export const ACK_LINE_MAX = 32

export function encodeConnect(port: number): Buffer {
  if (!Number.isSafeInteger(port) || port < 0 || port > 0xffffffff) throw new RangeError(`not a vsock port: ${port}`)
  return Buffer.from(`CONNECT ${port}\n`, 'ascii')
}

export type AckResult = { done: false } | { done: true; hostPort: number; rest: Buffer }

/** Feeds the bytes the VMM sends after CONNECT until the acknowledgement line is complete. */
export class AckDecoder {
  #buf: Buffer = Buffer.alloc(0)
  #done = false

  push(chunk: Buffer): AckResult {
    if (this.#done) throw new Error('AckDecoder: already done')
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk])
    const nl = this.#buf.indexOf(0x0a)
    if (nl < 0) {
      if (this.#buf.length > ACK_LINE_MAX) throw protocolError(this.#buf.subarray(0, ACK_LINE_MAX))
      return { done: false }
    }
    const line = this.#buf.subarray(0, nl).toString('latin1')
    const m = /^OK (\d{1,10})$/.exec(line)
    if (!m || Number(m[1]) > 0xffffffff) throw protocolError(this.#buf.subarray(0, nl))
    this.#done = true
    return { done: true, hostPort: Number(m[1]), rest: this.#buf.subarray(nl + 1) }
  }
}

function protocolError(seen: Buffer): VmmError {
  return new VmmError('control_protocol', `vsock: expected "OK <port>\\n" after CONNECT, got ${JSON.stringify(seen.toString('latin1'))}`, {
    step: 'vsock.handshake',
  })
}
