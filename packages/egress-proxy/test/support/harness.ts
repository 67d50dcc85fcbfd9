/**
 * What most proxy tests share: openssl-made upstream certificates, real upstreams on loopback,
 * and a proxy configured to trust the test CA, to resolve the test names to 127.0.0.1 and to
 * reach those upstreams: loopback is the proxy's own host, which it refuses unless
 * allowHostServices names the exact address and port, so every upstream a test uses is started
 * before the proxy and named. allowDestinations covers loopback too, to show that it alone
 * opens nothing on the host. Everything the proxy logs is captured, so tests can grep it for
 * secrets.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Logger } from '@hypeman-ts/common'
import { createProxy, type AuditEvent, type EgressProxy, type ProxyOptions } from '../../src/index.js'
import { makePki, type TestPki } from './pki.js'
import { startHttpsUpstream, startHttpUpstream, type Upstream } from './upstream.js'

export const SECRET = 'sk-REAL-0123456789abcdef-do-not-leak'
export const SECRET_2 = 'sk-ROTATED-fedcba9876543210-do-not-leak'

/** Test names resolve to loopback; anything else does not resolve. */
export async function testLookup(host: string) {
  if (host.endsWith('.test') || host === 'localhost') return [{ address: '127.0.0.1', family: 4 as const }]
  throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' })
}

export interface CapturedLog {
  lines: string[]
  logger: Logger
}

export function captureLogger(): CapturedLog {
  const lines: string[] = []
  const at = (level: string) => (msg: string, fields?: Record<string, unknown>) => lines.push(`${level} ${msg} ${fields ? JSON.stringify(fields) : ''}`)
  return { lines, logger: { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') } }
}

/** A server a test runs on loopback for the proxy to reach. */
export interface Service {
  port: number
  close(): Promise<void>
}

/** The allowHostServices entry for a loopback test server. */
export const hostService = (s: { port: number }): string => `127.0.0.1:${s.port}`

export interface Harness<X extends Record<string, Service> = Record<string, never>> {
  dir: string
  pki: TestPki
  https: Upstream
  http: Upstream
  log: CapturedLog
  audit: AuditEvent[]
  proxy: EgressProxy
  /** The test's own upstreams, started before the proxy so it can name them. */
  extra: X
  /** Starts another proxy on the same state dir and upstreams (closed with the harness). */
  another(overrides?: Partial<ProxyOptions>): Promise<EgressProxy>
  close(): Promise<void>
}

export async function startHarness<X extends Record<string, Service> = Record<string, never>>(
  overrides: Partial<ProxyOptions> = {},
  upstreams?: (pki: TestPki) => Promise<X>,
): Promise<Harness<X>> {
  const dir = await mkdtemp(join(tmpdir(), 'hm-egress-'))
  const pki = await makePki(dir)
  const https = await startHttpsUpstream(pki.good)
  const http = await startHttpUpstream()
  const extra = upstreams ? await upstreams(pki) : ({} as X)
  const log = captureLogger()
  const audit: AuditEvent[] = []
  const others: EgressProxy[] = []
  const options = (o: Partial<ProxyOptions>): ProxyOptions => ({
    stateDir: join(dir, 'state'),
    listen: '127.0.0.1:0',
    transparentListen: '127.0.0.1:0',
    transparentPorts: { https: https.port, http: http.port },
    upstreamCa: pki.caPem,
    allowDestinations: ['127.0.0.0/8'],
    allowHostServices: [https, http, ...Object.values(extra)].map(hostService),
    lookup: testLookup,
    logger: log.logger,
    ...o,
  })
  const proxy = await createProxy(options(overrides))
  proxy.audit.on('event', (e) => audit.push(e))
  return {
    dir,
    pki,
    https,
    http,
    log,
    audit,
    proxy,
    extra,
    async another(o = {}) {
      const p = await createProxy(options({ ...overrides, ...o }))
      others.push(p)
      return p
    },
    async close() {
      await Promise.all([proxy, ...others].map((p) => p.destroy()))
      await Promise.all([https, http, ...Object.values(extra)].map((u) => u.close()))
      await rm(dir, { recursive: true, force: true })
    },
  }
}

/** The policy most tests use: OPENAI_API_KEY injected as a bearer token towards api.test. */
export function bearerPolicy(hosts: string[] | undefined = ['api.test'], secret = SECRET) {
  return {
    env: { OPENAI_REAL: secret },
    credentials: {
      OPENAI_API_KEY: {
        source: { env: 'OPENAI_REAL' },
        inject: [{ ...(hosts ? { hosts } : {}), as: { header: 'Authorization', format: 'Bearer ${value}' } }],
      },
    },
  }
}
