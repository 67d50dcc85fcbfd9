/**
 * createProxy: the one factory embedders (core) and the CLI both call. It opens the state
 * directory (CA, placeholder key), starts the listeners and returns a started handle with the
 * policy registry, placeholders, metrics and audit events. `close()` lets exchanges in progress
 * finish; `destroy()` cuts everything at once.
 */
import { isIP } from 'node:net'
import { type Logger, parseDuration, parseSize, stderrLogger, ValidationError } from '@hypeman-ts/common'
import { Audit, type AuditEmitter } from './audit.js'
import { LeafIssuer, openCaState } from './ca.js'
import { EgressError } from './errors.js'
import type { Limits, ProxyContext } from './context.js'
import { Frontend, type ListenAddress } from './frontend.js'
import { DestinationGuard, type LookupFunction } from './guard.js'
import { ProxyMetrics } from './metrics.js'
import { derivePlaceholder } from './placeholders.js'
import { compilePolicy, type SourcePolicy } from './policy.js'
import { canonicalSource, SourceTable } from './sources.js'
import { Upstreams } from './upstream.js'
import { Watchdog, watchdogPeriod } from './watchdog.js'

export type { ListenAddress } from './frontend.js'

export interface ProxyLimits {
  /** Client connections across both listeners (default 4096); more are dropped on accept. */
  maxConnections?: number
  /** Client connections from one source (default 1024). */
  maxConnectionsPerSource?: number
  /** Largest request head (default "16KB"); larger gets 431. */
  maxHeaderSize?: string | number
  /** Time to receive a request's headers (default "30s"). */
  headersTimeout?: string | number
  /** A client connection with no traffic for this long is closed (default "60s"). */
  idleTimeout?: string | number
  /** Time for a client to send its first bytes and finish TLS (default "10s"). */
  handshakeTimeout?: string | number
  upstreamConnectTimeout?: string | number
  upstreamHeadersTimeout?: string | number
  /** Longest pause between two chunks of an upstream response body (default "5m"). */
  upstreamBodyTimeout?: string | number
  /** How long an idle pooled upstream connection is kept (default "30s"). */
  upstreamIdleTimeout?: string | number
  /** Pooled upstream connections per origin (default 256). */
  upstreamConnectionsPerOrigin?: number
}

export interface ProxyOptions {
  /** Holds ca.pem, ca.key and placeholder.key; created if absent. */
  stateDir: string
  /** Explicit-proxy listener, "host:port" (default "127.0.0.1:0"); null for none. */
  listen?: string | ListenAddress | null
  /** Transparent listener, "host:port"; absent or null for none. */
  transparentListen?: string | ListenAddress | null
  /** Upstream ports for transparent connections (default https 443, http 80 when Host names none). */
  transparentPorts?: { https?: number; http?: number }
  /** Extra PEM roots for upstream TLS, added to the bundled and system roots. */
  upstreamCa?: string
  /**
   * CIDRs exempt from the SSRF guard's special-purpose ranges. Never the proxy's own host: its
   * addresses are refused whatever this says (see allowHostServices).
   */
  allowDestinations?: string[]
  /**
   * Ports CONNECT targets, absolute URIs and transparent connections may go to (default
   * [80, 443], as `http_https_only` holds direct traffic to); list them all, e.g. [80, 443, 8443].
   */
  allowPorts?: number[]
  /**
   * Services on the proxy's own host it may connect to, each one exact "address:port"
   * ("198.18.0.1:7777", "[::1]:7777"). The proxy refuses every address of its host otherwise.
   */
  allowHostServices?: string[]
  /** Resolver for destination names (default: the system resolver). */
  lookup?: LookupFunction
  /** How long a DNS answer is reused (default "30s"). */
  dnsCacheTtl?: string | number
  /** Validity of the certificates shown to clients (default "7d"). */
  leafValidity?: string | number
  /** Replace a cached certificate when it has less than this left (default "1d"). */
  leafRenewBefore?: string | number
  limits?: ProxyLimits
  /**
   * Serve common HTTP/1.1 requests on the proxy's own fast path (default true): its own head
   * parser and raw pooled upstream connections, forwarding response bodies as they come.
   * Requests it does not handle (Expect, upgrades, chunked uploads, ...) and all of HTTP/2 go
   * through Node's server and undici either way; false sends everything there.
   */
  http1FastPath?: boolean
  /** Initial policies, as `policies.set` would register them. */
  policies?: Record<string, SourcePolicy>
  logger?: Logger
}

export interface RegisteredPolicy {
  /** The canonical source key ("10.100.0.5", "10.100.0.0/24"). */
  source: string
  /** Guest-visible credential env var name → its placeholder. */
  placeholders: Record<string, string>
}

/** Policies by source, changed at run time: a set() replaces (rotates) without dropping connections. */
export interface PolicyRegistry {
  set(source: string, policy: SourcePolicy): RegisteredPolicy
  delete(source: string): boolean
  has(source: string): boolean
  sources(): string[]
}

export interface EgressProxy extends AsyncDisposable {
  /** "http://host:port" of the explicit listener, for HTTP_PROXY/HTTPS_PROXY. */
  readonly url: string | undefined
  readonly address: ListenAddress | undefined
  readonly transparentAddress: ListenAddress | undefined
  /** The CA certificate clients must trust, and its path. */
  readonly caPath: string
  readonly caPem: string
  readonly policies: PolicyRegistry
  /** Audit events: `proxy.audit.on('event', (e) => …)`. */
  readonly audit: AuditEmitter
  /** The placeholder the guest of `source` sees for `credential`; stable across restarts. */
  placeholderFor(source: string, credential: string): string
  /** Prometheus text exposition. */
  metrics(): string
  /** Stops accepting, lets exchanges in progress finish (up to `grace`, default "30s"), then closes. */
  close(opts?: { grace?: string | number }): Promise<void>
  /** Closes every connection at once. */
  destroy(): Promise<void>
}

/** Parses "host:port" (IPv6 in brackets); an empty host means all IPv4 addresses. */
export function parseListen(input: string | ListenAddress, field: string): ListenAddress {
  if (typeof input === 'object' && input !== null) {
    if (typeof input.host !== 'string' || !Number.isInteger(input.port) || input.port < 0 || input.port > 65535) {
      throw new ValidationError(field, 'must be { host, port } with a port from 0 to 65535')
    }
    return input
  }
  const m = typeof input === 'string' ? /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(input.trim()) : null
  const host = m ? (m[1] ?? m[2] ?? '') : ''
  const port = m ? Number(m[3]) : -1
  if (!m || port > 65535 || (host !== '' && isIP(host) === 0 && host !== 'localhost')) {
    throw new ValidationError(field, `${JSON.stringify(input)} is not an address like "127.0.0.1:18080" or "[::1]:18080"`)
  }
  return { host: host || '0.0.0.0', port }
}

function port(value: unknown, field: string, fallback: number): number {
  if (value === undefined) return fallback
  if (!Number.isInteger(value) || (value as number) < 1 || (value as number) > 65535) throw new ValidationError(field, 'must be a port from 1 to 65535')
  return value as number
}

function count(value: unknown, field: string, fallback: number): number {
  if (value === undefined) return fallback
  if (!Number.isInteger(value) || (value as number) < 1) throw new ValidationError(field, 'must be a positive whole number')
  return value as number
}

const duration = (v: string | number | undefined, field: string, fallback: string) => parseDuration(v ?? fallback, field, { min: 1 })

export async function createProxy(options: ProxyOptions): Promise<EgressProxy> {
  if (!options || typeof options.stateDir !== 'string' || options.stateDir === '') throw new ValidationError('stateDir', 'is required')
  const logger = options.logger ?? stderrLogger
  const l = options.limits ?? {}
  const limits: Limits = {
    maxConnections: count(l.maxConnections, 'limits.maxConnections', 4096),
    maxConnectionsPerSource: count(l.maxConnectionsPerSource, 'limits.maxConnectionsPerSource', 1024),
    maxHeaderSize: parseSize(l.maxHeaderSize ?? '16KB', 'limits.maxHeaderSize', { min: 1024, max: 1024 * 1024 }),
    headersTimeoutMs: duration(l.headersTimeout, 'limits.headersTimeout', '30s'),
    idleTimeoutMs: duration(l.idleTimeout, 'limits.idleTimeout', '60s'),
    handshakeTimeoutMs: duration(l.handshakeTimeout, 'limits.handshakeTimeout', '10s'),
  }
  const explicitAt = options.listen === null ? undefined : parseListen(options.listen ?? '127.0.0.1:0', 'listen')
  const transparentAt = options.transparentListen ? parseListen(options.transparentListen, 'transparentListen') : undefined
  const transparentPorts = {
    https: port(options.transparentPorts?.https, 'transparentPorts.https', 443),
    http: port(options.transparentPorts?.http, 'transparentPorts.http', 80),
  }
  if (options.http1FastPath !== undefined && typeof options.http1FastPath !== 'boolean') throw new ValidationError('http1FastPath', 'must be true or false')
  const leafValidityMs = duration(options.leafValidity, 'leafValidity', '7d')
  const leafRenewMs = duration(options.leafRenewBefore, 'leafRenewBefore', '1d')
  if (leafRenewMs >= leafValidityMs) throw new ValidationError('leafRenewBefore', 'must be shorter than leafValidity')
  const guard = new DestinationGuard({
    allowDestinations: options.allowDestinations ?? [],
    ...(options.allowPorts !== undefined ? { allowPorts: options.allowPorts } : {}),
    ...(options.allowHostServices !== undefined ? { allowHostServices: options.allowHostServices } : {}),
    ...(options.lookup ? { lookup: options.lookup } : {}),
    cacheTtlMs: options.dnsCacheTtl === undefined ? 30_000 : parseDuration(options.dnsCacheTtl, 'dnsCacheTtl'),
  })
  const upstreamTimeouts = {
    connectTimeoutMs: duration(l.upstreamConnectTimeout, 'limits.upstreamConnectTimeout', '10s'),
    headersTimeoutMs: duration(l.upstreamHeadersTimeout, 'limits.upstreamHeadersTimeout', '60s'),
    bodyTimeoutMs: duration(l.upstreamBodyTimeout, 'limits.upstreamBodyTimeout', '5m'),
    keepAliveTimeoutMs: duration(l.upstreamIdleTimeout, 'limits.upstreamIdleTimeout', '30s'),
    connectionsPerOrigin: count(l.upstreamConnectionsPerOrigin, 'limits.upstreamConnectionsPerOrigin', 256),
  }

  const ca = await openCaState(options.stateDir, logger)
  const sources = new SourceTable()
  const audit = new Audit(logger)
  const placeholderFor = (source: string, credential: string) =>
    derivePlaceholder(ca.placeholderKey, canonicalSource(source, 'source').key, credential)
  const registry: PolicyRegistry = {
    set(source, policy) {
      const s = canonicalSource(source, 'source')
      const compiled = compilePolicy(policy, (cred) => derivePlaceholder(ca.placeholderKey, s.key, cred))
      sources.set(s, compiled)
      audit.emit({ type: 'policy_set', source: s.key })
      return { source: s.key, placeholders: Object.fromEntries(compiled.credentials.map((c) => [c.name, c.placeholder])) }
    },
    delete(source) {
      const key = canonicalSource(source, 'source').key
      const had = sources.delete(key)
      // Its upstream connections go too (those of a range's sources age out instead).
      upstreams.forget(key)
      if (had) audit.emit({ type: 'policy_deleted', source: key })
      return had
    },
    has: (source) => sources.has(canonicalSource(source, 'source').key),
    sources: () => sources.keys(),
  }
  for (const [source, policy] of Object.entries(options.policies ?? {})) {
    try {
      registry.set(source, policy)
    } catch (err) {
      if (err instanceof ValidationError) throw new ValidationError(`policies.${source}.${err.field}`, err.message.slice(err.field.length + 2))
      throw err
    }
  }

  const watchdog = new Watchdog(watchdogPeriod(Math.min(limits.idleTimeoutMs, upstreamTimeouts.headersTimeoutMs, upstreamTimeouts.bodyTimeoutMs, upstreamTimeouts.keepAliveTimeoutMs)))
  const upstreams = new Upstreams({
    watchdog,
    guard,
    ...(options.upstreamCa ? { extraCa: options.upstreamCa } : {}),
    ...upstreamTimeouts,
    maxResponseHeaderSize: 64 * 1024,
  })
  const metrics = new ProxyMetrics()
  const leaves = new LeafIssuer(ca, { validityMs: leafValidityMs, renewBeforeMs: leafRenewMs })
  const ctx: ProxyContext = { sources, guard, upstreams, leaves, metrics, audit, logger, limits, transparentPorts, http1FastPath: options.http1FastPath ?? true, watchdog, closing: false }
  const frontend = new Frontend(ctx)
  metrics.gauge('hypeman_egress_connections_active', 'Client connections open now.', () => frontend.conns.size)
  metrics.gauge('hypeman_egress_policies', 'Sources with a registered policy.', () => sources.size)
  metrics.gauge('hypeman_egress_certificates_issued', 'Leaf certificates issued since start.', () => leaves.issued)

  let address: ListenAddress | undefined
  let transparentAddress: ListenAddress | undefined
  let starting: 'listen' | 'transparentListen' = 'listen'
  try {
    if (explicitAt) guard.addListener((address = await frontend.listenExplicit(explicitAt)))
    starting = 'transparentListen'
    if (transparentAt) guard.addListener((transparentAddress = await frontend.listenTransparent(transparentAt)))
  } catch (err) {
    frontend.destroy()
    await upstreams.destroy()
    watchdog.stop()
    const at = starting === 'listen' ? explicitAt! : transparentAt!
    throw new EgressError('listen_failed', `cannot listen on ${at.host}:${at.port}: ${(err as Error).message}`, { field: starting, cause: err })
  }
  logger.info('egress proxy listening', { explicit: address, transparent: transparentAddress, ca: ca.certPath })

  let closing: Promise<void> | undefined
  const proxy: EgressProxy = {
    url: address ? `http://${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}` : undefined,
    address,
    transparentAddress,
    caPath: ca.certPath,
    caPem: ca.certPem,
    policies: registry,
    audit: audit.emitter,
    placeholderFor,
    metrics: () => metrics.render(),
    close(opts = {}) {
      closing ??= (async () => {
        ctx.closing = true
        await frontend.close(parseDuration(opts.grace ?? '30s', 'grace'))
        await upstreams.close()
        watchdog.stop()
      })()
      return closing
    },
    async destroy() {
      ctx.closing = true
      frontend.destroy()
      await upstreams.destroy()
      watchdog.stop()
    },
    [Symbol.asyncDispose]() {
      return proxy.close()
    },
  }
  return proxy
}
