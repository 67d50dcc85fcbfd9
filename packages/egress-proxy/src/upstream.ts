/**
 * The upstream side: undici agents whose connector resolves through the SSRF guard and dials
 * the address it checked, with TLS always verified against the destination's name (Node's
 * bundled roots, the system bundle and an optional extra bundle). Connections are pooled per
 * source and origin, never across sources (see Upstreams.agents), so a guest opening a new TLS
 * connection per request still reuses its own warm upstream connections; the fast path's raw
 * pool (src/pool.ts) is partitioned the same way.
 */
import { existsSync, readFileSync } from 'node:fs'
import type { Socket } from 'node:net'
import { connect as tlsConnect, createSecureContext, rootCertificates, type SecureContext, type TLSSocket } from 'node:tls'
import { connect as netConnect } from 'node:net'
import { Agent, buildConnector } from 'undici'
import type { DestinationGuard } from './guard.js'
import { UpstreamPool } from './pool.js'
import { upstreamTimeout } from './upstream-errors.js'
import type { Watchdog } from './watchdog.js'

const UPSTREAM_READ_BUFFER = 256 * 1024
const SYSTEM_BUNDLES = ['/etc/ssl/certs/ca-certificates.crt', '/etc/pki/tls/certs/ca-bundle.crt']

export interface UpstreamOptions {
  guard: DestinationGuard
  /** Extra PEM roots to trust, in addition to the bundled and system roots. */
  extraCa?: string
  connectTimeoutMs: number
  headersTimeoutMs: number
  bodyTimeoutMs: number
  keepAliveTimeoutMs: number
  connectionsPerOrigin: number
  maxResponseHeaderSize: number
  /** Deadlines of the fast path's pooled connections. */
  watchdog: Watchdog
}

/** The trust store for upstream TLS: Node's bundled roots, the system bundle, and the extra roots. */
export function upstreamTrust(extraCa?: string): SecureContext {
  const ca: string[] = [...rootCertificates]
  const system = SYSTEM_BUNDLES.find((p) => existsSync(p))
  if (system) ca.push(readFileSync(system, 'utf8'))
  if (extraCa) ca.push(extraCa)
  return createSecureContext({ ca, minVersion: 'TLSv1.2' })
}

function bare(hostname: string): string {
  return hostname.startsWith('[') ? hostname.slice(1, -1) : hostname
}

/** Sources whose undici agents are kept; beyond this the least recently used one is closed (gracefully). */
const AGENT_PARTITIONS_MAX = 256

export class Upstreams {
  /**
   * undici agents per source (the pool below is partitioned the same way): a connection never
   * carries two sources' requests, so a response can never reach the wrong guest. `h1` is
   * HTTP/1.1 only, for HTTP/1.1 guest requests; `h2` offers h2 too, so gRPC keeps h2 end to end.
   */
  private readonly agents = new Map<string, { h1?: Agent; h2?: Agent }>()
  /** Raw kept-alive connections for the HTTP/1.1 fast path. */
  readonly pool: UpstreamPool
  readonly timeouts: Pick<UpstreamOptions, 'headersTimeoutMs' | 'bodyTimeoutMs' | 'maxResponseHeaderSize'>
  private readonly trust: SecureContext

  constructor(private readonly opts: UpstreamOptions) {
    this.trust = upstreamTrust(opts.extraCa)
    this.timeouts = { headersTimeoutMs: opts.headersTimeoutMs, bodyTimeoutMs: opts.bodyTimeoutMs, maxResponseHeaderSize: opts.maxResponseHeaderSize }
    this.pool = new UpstreamPool({
      guard: opts.guard,
      trust: this.trust,
      connectTimeoutMs: opts.connectTimeoutMs,
      idleTimeoutMs: opts.keepAliveTimeoutMs,
      connectionsPerOrigin: opts.connectionsPerOrigin,
      watchdog: opts.watchdog,
    })
  }

  /** The agent for one source's requests, made on first use. */
  agentFor(source: string, h2: boolean): Agent {
    let entry = this.agents.get(source)
    if (entry) {
      // Most recently used last, so eviction takes the longest unused.
      this.agents.delete(source)
      this.agents.set(source, entry)
    } else {
      this.agents.set(source, (entry = {}))
      if (this.agents.size > AGENT_PARTITIONS_MAX) this.forget(this.agents.keys().next().value!)
    }
    return h2 ? (entry.h2 ??= this.agent(true)) : (entry.h1 ??= this.agent(false))
  }

  /** Closes a source's agents once their requests in flight are done (its policy is gone, or it was evicted). */
  forget(source: string): void {
    const entry = this.agents.get(source)
    if (!entry) return
    this.agents.delete(source)
    for (const a of [entry.h1, entry.h2]) void a?.close().catch(() => {})
  }

  private agent(allowH2: boolean): Agent {
    const opts = this.opts
    return new Agent({
      connect: this.guarded(
        buildConnector({
          secureContext: this.trust,
          timeout: opts.connectTimeoutMs,
          allowH2,
          maxCachedSessions: 1000,
          // undici reads TLS with a 16 KiB buffer; a larger one hands the parser (and the
          // guest's socket) bigger pieces, so large bodies cost fewer reads, pauses and writes.
          highWaterMark: UPSTREAM_READ_BUFFER,
        } as buildConnector.BuildOptions),
      ),
      allowH2,
      connections: opts.connectionsPerOrigin,
      pipelining: 1,
      headersTimeout: opts.headersTimeoutMs,
      bodyTimeout: opts.bodyTimeoutMs,
      keepAliveTimeout: opts.keepAliveTimeoutMs,
      maxHeaderSize: opts.maxResponseHeaderSize,
    })
  }

  private guarded(base: buildConnector.connector): buildConnector.connector {
    return (options, callback) => {
      const host = bare(options.hostname)
      const port = Number(options.port) || (options.protocol === 'https:' ? 443 : 80)
      this.opts.guard.resolve(host, port).then(
        ({ address }) => base({ ...options, hostname: address }, callback),
        (err: unknown) => callback(err as Error, null),
      )
    }
  }

  /**
   * A raw connection for protocols that leave HTTP (WebSocket upgrades): guarded and, for TLS,
   * verified, offering only HTTP/1.1.
   */
  async connect(host: string, port: number, tls: boolean): Promise<Socket | TLSSocket> {
    const { address } = await this.opts.guard.resolve(host, port)
    return new Promise((resolve, reject) => {
      const socket = tls
        ? tlsConnect({
            host: address,
            port,
            secureContext: this.trust,
            ...(host === address ? {} : { servername: host }),
            ALPNProtocols: ['http/1.1'],
          })
        : netConnect({ host: address, port })
      const timer = setTimeout(() => socket.destroy(upstreamTimeout(host, port, 'connect')), this.opts.connectTimeoutMs)
      socket.once(tls ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer)
        socket.removeListener('error', reject)
        resolve(socket)
      })
      socket.once('error', (err) => {
        clearTimeout(timer)
        reject(err)
      })
    })
  }

  async close(): Promise<void> {
    this.pool.close()
    await Promise.all(this.takeAgents().map((a) => a.close()))
  }

  async destroy(): Promise<void> {
    this.pool.destroy()
    await Promise.all(this.takeAgents().map((a) => a.destroy()))
  }

  private takeAgents(): Agent[] {
    const all = [...this.agents.values()].flatMap((e) => [e.h1, e.h2]).filter((a): a is Agent => a !== undefined)
    this.agents.clear()
    return all
  }
}
