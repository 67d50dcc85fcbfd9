/**
 * Prometheus metrics, served on a listener of their own (never behind the API's auth, never on
 * the API's port, so a scraper needs no token and API clients cannot reach it unless the
 * operator binds it where they can).
 *
 * - `hypeman_instances{state}` and `hypeman_images{status}`: read from the manager at scrape time
 *   (a gauge that is never stale, and nothing to keep in step with every state change);
 * - `hypeman_http_request_duration_seconds{method,route,status}`: route is the pattern
 *   (`/instances/:id`), never the raw URL, so ids do not explode the label set;
 * - `hypeman_instance_create_duration_seconds{outcome}`: POST /instances, boot included;
 * - `hypeman_image_pulls_total{outcome}`: POST /images answered (`started`, or `refused`), and each
 *   pull's end (`ready`, `failed`, from core's onPullSettled: pulls a create started count too);
 * - `hypeman_egress_events_total{type}`: the egress proxy's audit events (injections, refusals, ...);
 * - the Node process's own (CPU, memory, event loop lag), as prom-client collects them.
 */
import { createServer as createHttpServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { errorMessage, isHypemanError } from '@hypeman-ts/common'
import type { Hypeman } from '@hypeman-ts/core'

export interface Metrics {
  readonly registry: Registry
  /** One API request answered. `route` is the route's pattern. */
  observeRequest(method: string, route: string, status: number, seconds: number): void
  /** Serves GET /metrics on its own listener; returns the bound address. */
  listen(opts: { host: string; port: number }): Promise<AddressInfo>
  /** Stops the listener and the egress event subscription. */
  close(): Promise<void>
}

export function createMetrics(hm: Hypeman, opts: { onError?: (message: string) => void } = {}): Metrics {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  const stop = new AbortController()

  new Gauge({
    name: 'hypeman_instances',
    help: 'Instances by state',
    labelNames: ['state'],
    registers: [registry],
    async collect() {
      this.reset()
      for (const i of await hm.instances.list()) this.inc({ state: i.state })
    },
  })
  new Gauge({
    name: 'hypeman_images',
    help: 'Images by status',
    labelNames: ['status'],
    registers: [registry],
    async collect() {
      this.reset()
      for (const i of await hm.images.list()) this.inc({ status: i.status })
    },
  })
  const requests = new Histogram({
    name: 'hypeman_http_request_duration_seconds',
    help: 'API request latency',
    labelNames: ['method', 'route', 'status'],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [registry],
  })
  const creates = new Histogram({
    name: 'hypeman_instance_create_duration_seconds',
    help: 'POST /instances, from request to answer (image pull and boot included)',
    labelNames: ['outcome'],
    buckets: [0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300],
    registers: [registry],
  })
  const pulls = new Counter({ name: 'hypeman_image_pulls_total', help: 'Image pulls: asked for through the API (started, refused) and ended (ready, failed)', labelNames: ['outcome'], registers: [registry] })
  const unsubscribePulls = hm.images.onPullSettled((e) => pulls.inc({ outcome: e.status }))
  const egress = new Counter({ name: 'hypeman_egress_events_total', help: 'Audit events of the egress proxy', labelNames: ['type'], registers: [registry] })

  // The proxy starts with the first instance that uses it; events() works before that.
  void (async () => {
    for (;;) {
      try {
        for await (const e of hm.egress.events({ signal: stop.signal })) egress.inc({ type: e.type })
        return // our signal, or the manager closed
      } catch (err) {
        opts.onError?.(`egress metrics: ${errorMessage(err)}`)
        // Fell behind: count on from now rather than stop counting. Anything else ends it.
        if (!isHypemanError(err, 'events_overflow')) return
      }
    }
  })()

  let server: Server | undefined
  return {
    registry,
    observeRequest(method, route, status, seconds) {
      requests.observe({ method, route, status: String(status) }, seconds)
      if (method === 'POST' && route === '/instances') creates.observe({ outcome: status === 201 ? 'created' : 'failed' }, seconds)
      if (method === 'POST' && route === '/images') pulls.inc({ outcome: status === 202 ? 'started' : 'refused' })
    },
    async listen({ host, port }) {
      server = createHttpServer((req, res) => {
        if (req.method !== 'GET' || req.url?.split('?')[0] !== '/metrics') {
          res.writeHead(404).end()
          return
        }
        registry.metrics().then(
          (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
          (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${errorMessage(err)}\n`),
        )
      })
      await new Promise<void>((resolve, reject) => {
        server!.once('error', reject)
        server!.listen(port, host, () => resolve())
      })
      return server.address() as AddressInfo
    },
    async close() {
      stop.abort()
      unsubscribePulls()
      if (server) await new Promise<void>((r) => server!.close(() => r()))
    },
  }
}
