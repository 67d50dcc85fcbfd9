/** The state one proxy shares between its listeners, its request pipeline and its public handle. */
import type { ServerHttp2Session } from 'node:http2'
import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import type { Logger } from '@hypeman-ts/common'
import type { Audit } from './audit.js'
import type { LeafIssuer } from './ca.js'
import type { DestinationGuard } from './guard.js'
import type { ProxyMetrics } from './metrics.js'
import type { SourceEntry, SourceTable } from './sources.js'
import type { Upstreams } from './upstream.js'
import type { Watchdog } from './watchdog.js'

export type ListenerKind = 'explicit' | 'transparent'

/** A fixed destination: a CONNECT tunnel's target, or the SNI of a transparent TLS connection. */
export interface Target {
  host: string
  port: number
  tls: boolean
}

/** One client TCP connection and what the proxy learned about it. */
export interface Conn {
  readonly id: number
  readonly listener: ListenerKind
  /** The client's address, the key policies are looked up by. */
  readonly source: string
  readonly raw: Socket
  /** The TLS socket the proxy terminated on `raw`, once intercepting. */
  tls?: TLSSocket
  /** The HTTP/2 session on `tls`, when the guest negotiated h2. */
  session?: ServerHttp2Session
  target?: Target
  /** The last Host header normalised on this connection and its canonical host (requests on a connection repeat it). */
  authority?: { raw: string; host: string | null }
  /** The policy lookup, cached until the source table changes. */
  entry: SourceEntry | undefined
  version: number
  /** Requests (or an upgraded tunnel) in progress. */
  active: number
  closed: boolean
}

/** Where a socket (raw, or the TLS socket the proxy terminated on it) keeps its Conn. */
export const kConn = Symbol('hypeman-egress.conn')

export interface Limits {
  maxConnections: number
  maxConnectionsPerSource: number
  maxHeaderSize: number
  headersTimeoutMs: number
  idleTimeoutMs: number
  handshakeTimeoutMs: number
}

export interface ProxyContext {
  readonly sources: SourceTable
  readonly guard: DestinationGuard
  readonly upstreams: Upstreams
  readonly leaves: LeafIssuer
  readonly metrics: ProxyMetrics
  readonly audit: Audit
  readonly logger: Logger
  readonly limits: Limits
  /** Upstream ports for transparent connections, which carry no port of their own. */
  readonly transparentPorts: { https: number; http: number }
  /** Serve common HTTP/1.1 requests on the fast path (src/fastpath.ts); off: Node's server and undici only. */
  readonly http1FastPath: boolean
  /** The fast path's deadlines (guest idleness, upstream headers and body). */
  readonly watchdog: Watchdog
  closing: boolean
}

/** The policy entry for a connection, re-resolved only after the source table changed. */
export function entryOf(ctx: ProxyContext, conn: Conn): SourceEntry | undefined {
  if (conn.version !== ctx.sources.version) {
    conn.entry = ctx.sources.lookup(conn.source)
    conn.version = ctx.sources.version
  }
  return conn.entry
}
