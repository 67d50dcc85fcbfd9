/**
 * The benchmark's load generator, run as its own process so it never shares an event loop
 * with what it measures. The same client drives every target: raw TLS sockets speaking
 * HTTP/1.1 with a minimal response parser, so the client costs the same whatever is behind it.
 * Through a proxy it opens a CONNECT tunnel first, as curl and Python do.
 *
 * Input (argv[2], JSON): { mode, target, durationMs, warmupMs, concurrency, path }.
 * Output (stdout, JSON): { requests, bytes, seconds, latenciesMs: { p50, p99 }, errors }.
 */
import { connect as netConnect, type Socket } from 'node:net'
import { connect as tlsConnect, createSecureContext, type SecureContext, type TLSSocket } from 'node:tls'

export interface LoadTarget {
  /** Where the client dials: the upstream itself, or a proxy. */
  dialHost: string
  dialPort: number
  /** CONNECT through the dialled proxy to this authority first. */
  tunnelTo?: string
  /** TLS server name (omitted for IP literals) and the CA to verify with. */
  servername?: string
  ca: string
  /** Host header. */
  host: string
}

export interface LoadSpec {
  mode: 'keepalive' | 'newconn'
  target: LoadTarget
  path: string
  durationMs: number
  warmupMs: number
  concurrency: number
}

export interface LoadResult {
  requests: number
  bytes: number
  seconds: number
  p50: number
  p99: number
  errors: number
  firstError?: string
}

function once(socket: Socket, event: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onErr = (e: Error) => reject(e)
    socket.once(event, () => {
      socket.removeListener('error', onErr)
      resolve()
    })
    socket.once('error', onErr)
  })
}

/**
 * One trust store for the whole run. Passing `ca` to every tls.connect would build a new one
 * per connection (parse the PEM, fill an X509 store), a client-side cost that has nothing to do
 * with the target and that capped the new-connection workload for every target alike.
 */
const contexts = new Map<string, SecureContext>()
function contextFor(ca: string): SecureContext {
  let c = contexts.get(ca)
  if (!c) contexts.set(ca, (c = createSecureContext({ ca })))
  return c
}

async function open(t: LoadTarget): Promise<TLSSocket> {
  let tunnel: Socket | undefined
  if (t.tunnelTo) {
    tunnel = netConnect({ host: t.dialHost, port: t.dialPort, noDelay: true })
    await once(tunnel, 'connect')
    tunnel.write(`CONNECT ${t.tunnelTo} HTTP/1.1\r\nHost: ${t.tunnelTo}\r\n\r\n`)
    let head = ''
    while (!head.includes('\r\n\r\n')) {
      await once(tunnel, 'readable')
      let chunk: Buffer | null
      while ((chunk = tunnel.read() as Buffer | null) !== null) head += chunk.toString('latin1')
    }
    if (!/^HTTP\/1\.[01] 200/.test(head)) throw new Error(`CONNECT refused: ${head.split('\r\n')[0]}`)
  }
  // Verify the certificate against the host the request is for, tunnel or not.
  const identity = t.tunnelTo ? t.tunnelTo.slice(0, t.tunnelTo.lastIndexOf(':')) : t.dialHost
  const socket = tlsConnect({
    ...(tunnel ? { socket: tunnel, host: identity } : { host: t.dialHost, port: t.dialPort }),
    ...(t.servername ? { servername: t.servername } : {}),
    secureContext: contextFor(t.ca),
    ALPNProtocols: ['http/1.1'],
  })
  socket.setNoDelay(true)
  await once(socket, 'secureConnect')
  return socket
}

/** Reads one HTTP/1.1 response with a Content-Length; resolves with its body size. */
function readResponse(socket: TLSSocket, leftover: { buf: Buffer | null }): Promise<number> {
  return new Promise((resolve, reject) => {
    let head = leftover.buf
    leftover.buf = null
    let bodyLeft = -1
    let bodySize = 0
    const done = (rest: Buffer | null) => {
      cleanup()
      leftover.buf = rest && rest.length > 0 ? rest : null
      resolve(bodySize)
    }
    const feed = (chunk: Buffer): boolean => {
      if (bodyLeft < 0) {
        head = head ? Buffer.concat([head, chunk]) : chunk
        const end = head.indexOf('\r\n\r\n')
        if (end < 0) return false
        const text = head.subarray(0, end).toString('latin1')
        if (!text.startsWith('HTTP/1.1 200')) {
          cleanup()
          reject(new Error(`status: ${text.split('\r\n')[0]}`))
          return true
        }
        const m = /\r\ncontent-length:\s*(\d+)/i.exec(text)
        if (!m) {
          cleanup()
          reject(new Error('no content-length'))
          return true
        }
        bodySize = Number(m[1])
        bodyLeft = bodySize
        chunk = head.subarray(end + 4)
        head = null
      }
      if (chunk.length >= bodyLeft) {
        done(chunk.subarray(bodyLeft))
        return true
      }
      bodyLeft -= chunk.length
      return false
    }
    const onData = (chunk: Buffer) => {
      feed(chunk)
    }
    const onEnd = () => {
      cleanup()
      reject(new Error('connection closed mid-response'))
    }
    const cleanup = () => {
      socket.removeListener('data', onData)
      socket.removeListener('end', onEnd)
      socket.removeListener('error', onEnd)
    }
    socket.on('data', onData)
    socket.once('end', onEnd)
    socket.once('error', onEnd)
    if (head) {
      const pending = head
      head = null
      feed(pending)
    }
  })
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!
}

export async function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const t = spec.target
  const keepAlive = spec.mode === 'keepalive'
  const request = Buffer.from(`GET ${spec.path} HTTP/1.1\r\nHost: ${t.host}\r\nUser-Agent: hypeman-bench\r\n${keepAlive ? '' : 'Connection: close\r\n'}\r\n`)
  const start = performance.now()
  const measureFrom = start + spec.warmupMs
  const stopAt = measureFrom + spec.durationMs
  let requests = 0
  let bytes = 0
  let errors = 0
  let firstError: string | undefined
  const latencies: number[] = []

  async function worker(): Promise<void> {
    let socket: TLSSocket | undefined
    const leftover = { buf: null as Buffer | null }
    while (performance.now() < stopAt) {
      const t0 = performance.now()
      try {
        if (!socket) {
          socket = await open(t)
          leftover.buf = null
        }
        socket.write(request)
        const size = await readResponse(socket, leftover)
        const t1 = performance.now()
        if (t0 >= measureFrom && t1 <= stopAt) {
          requests++
          bytes += size
          latencies.push(t1 - t0)
        }
        if (!keepAlive) {
          socket.destroy()
          socket = undefined
        }
      } catch (err) {
        errors++
        firstError ??= (err as Error).message
        socket?.destroy()
        socket = undefined
        await new Promise((r) => setTimeout(r, 10))
      }
    }
    socket?.destroy()
  }

  await Promise.all(Array.from({ length: spec.concurrency }, () => worker()))
  const sorted = Float64Array.from(latencies).sort()
  return {
    requests,
    bytes,
    seconds: spec.durationMs / 1000,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    errors,
    ...(firstError ? { firstError } : {}),
  }
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!)) {
  const spec = JSON.parse(process.argv[2]!) as LoadSpec
  runLoad(spec).then(
    (r) => {
      process.stdout.write(`${JSON.stringify(r)}\n`)
      process.exit(0)
    },
    (err: unknown) => {
      process.stderr.write(`${(err as Error).stack}\n`)
      process.exit(1)
    },
  )
}
