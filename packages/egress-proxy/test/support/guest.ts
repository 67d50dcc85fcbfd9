/**
 * A guest that speaks raw HTTP/1.1 through the proxy: a CONNECT tunnel to the explicit listener,
 * TLS to the proxy's certificate, then bytes written and read as they are, so tests see exactly
 * what the proxy sent (framing, headers, where a connection ends).
 */
import { connect as netConnect } from 'node:net'
import { connect as tlsConnect, type TLSSocket } from 'node:tls'
import type { EgressProxy } from '../../src/index.js'

export interface GuestResponse {
  status: number
  /** The head as received, without the final CRLFCRLF. */
  head: string
  /** Header names lower-cased; repeated names joined with ", ". */
  headers: Record<string, string>
  /** The body bytes as they came (chunked framing included), latin1. */
  body: string
}

export interface GuestTlsOptions {
  /** The proxy listener's port on 127.0.0.1: the explicit one for `connect`, the transparent one otherwise. */
  port: number
  /** The proxy's CA (PEM or a SecureContext's `ca`). */
  ca: string
  /** "host:port" the guest wants; over the transparent listener only the host counts (its SNI). */
  target: string
  via: 'connect' | 'transparent'
  localAddress?: string
}

/** A guest's TLS connection to `target` through the proxy, by CONNECT or as a redirected connection. */
export async function guestTls(o: GuestTlsOptions): Promise<TLSSocket> {
  const raw = netConnect({ host: '127.0.0.1', port: o.port, ...(o.localAddress ? { localAddress: o.localAddress } : {}) })
  raw.on('error', () => {})
  await new Promise<void>((resolve, reject) => {
    raw.once('connect', () => resolve())
    raw.once('error', reject)
  })
  const host = o.target.slice(0, o.target.lastIndexOf(':'))
  if (o.via === 'connect') {
    raw.write(`CONNECT ${o.target} HTTP/1.1\r\nHost: ${o.target}\r\n\r\n`)
    const answer = await new Promise<string>((resolve, reject) => {
      raw.once('data', (d: Buffer) => resolve(d.toString('latin1')))
      raw.once('close', () => reject(new Error('closed before the CONNECT answer')))
    })
    if (!answer.startsWith('HTTP/1.1 200')) {
      raw.destroy()
      throw new Error(`CONNECT refused: ${answer.split('\r\n')[0]}`)
    }
  }
  const socket = tlsConnect({ socket: raw, servername: host, ca: o.ca, ALPNProtocols: ['http/1.1'] })
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve())
    socket.once('error', (err) => {
      socket.destroy()
      reject(err)
    })
  })
  return socket
}

export class RawGuest {
  private text = ''
  private at = 0
  closed = false
  private wake: (() => void) | undefined

  constructor(readonly socket: TLSSocket) {
    socket.on('data', (d: Buffer) => {
      this.text += d.toString('latin1')
      this.wake?.()
    })
    socket.on('close', () => {
      this.closed = true
      this.wake?.()
    })
    socket.on('error', () => {})
  }

  static async open(proxy: EgressProxy, target: string, localAddress?: string): Promise<RawGuest> {
    return new RawGuest(await guestTls({ port: proxy.address!.port, ca: proxy.caPem, target, via: 'connect', ...(localAddress ? { localAddress } : {}) }))
  }

  send(text: string | Buffer): void {
    this.socket.write(typeof text === 'string' ? Buffer.from(text, 'latin1') : text)
  }

  /** Waits until `ready(unread text)` holds or the connection closed; false on timeout. */
  private async waitFor(ready: (unread: string) => boolean, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms
    while (!ready(this.text.slice(this.at)) && !this.closed) {
      const left = deadline - Date.now()
      if (left <= 0) return false
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left)
        this.wake = () => {
          clearTimeout(timer)
          resolve()
        }
      })
      this.wake = undefined
    }
    return ready(this.text.slice(this.at))
  }

  /**
   * The next complete response. `bodiless` for answers to HEAD (and 204/304, which are bodiless
   * by status anyway). Throws when the connection closes or nothing complete arrives in time.
   */
  async response(opts: { bodiless?: boolean; ms?: number } = {}): Promise<GuestResponse> {
    let parsed: GuestResponse | undefined
    const complete = (unread: string): boolean => {
      const end = unread.indexOf('\r\n\r\n')
      if (end < 0) return false
      const head = unread.slice(0, end)
      const status = Number(head.slice(9, 12))
      const headers: Record<string, string> = {}
      for (const line of head.split('\r\n').slice(1)) {
        const colon = line.indexOf(':')
        const name = line.slice(0, colon).toLowerCase()
        const value = line.slice(colon + 1).trim()
        headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`
      }
      const rest = unread.slice(end + 4)
      let bodyLength: number
      if (opts.bodiless || status === 204 || status === 304) bodyLength = 0
      else if (/chunked\s*$/i.test(headers['transfer-encoding'] ?? '')) {
        let i = 0
        for (;;) {
          const eol = rest.indexOf('\r\n', i)
          if (eol < 0) return false
          const size = Number.parseInt(rest.slice(i, eol).split(';')[0]!, 16)
          // A corrupted stream must fail the test, not spin here forever.
          if (Number.isNaN(size)) throw new Error(`malformed chunk size line ${JSON.stringify(rest.slice(i, Math.min(eol, i + 40)))}`)
          if (size === 0) {
            const trailersEnd = rest.indexOf('\r\n\r\n', eol)
            if (rest.slice(eol, eol + 4) === '\r\n\r\n') {
              bodyLength = eol + 4
              break
            }
            if (trailersEnd < 0) return false
            bodyLength = trailersEnd + 4
            break
          }
          i = eol + 2 + size + 2
          if (i > rest.length) return false
        }
      } else if (headers['content-length'] !== undefined) bodyLength = Number(headers['content-length'])
      else {
        if (!this.closed) return false
        bodyLength = rest.length
      }
      if (rest.length < bodyLength) return false
      parsed = { status, head, headers, body: rest.slice(0, bodyLength) }
      this.at += end + 4 + bodyLength
      return true
    }
    await this.waitFor((unread) => parsed !== undefined || complete(unread), opts.ms ?? 5000)
    if (!parsed) throw new Error(`no complete response (closed: ${this.closed}): ${JSON.stringify(this.text.slice(this.at, this.at + 300))}`)
    return parsed
  }

  /** Resolves true once the proxy closed the connection (within `ms`). */
  async closes(ms = 3000): Promise<boolean> {
    await this.waitFor(() => false, ms)
    return this.closed
  }

  /** Bytes received and not yet consumed as a response. */
  get unread(): string {
    return this.text.slice(this.at)
  }

  destroy(): void {
    this.socket.destroy()
  }
}
