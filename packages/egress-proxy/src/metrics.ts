/**
 * Prometheus text exposition (format 0.0.4) for the few series the proxy keeps. Label values
 * are hosts' kinds, credential names and error codes, never hosts or secrets, so the series
 * count stays bounded by configuration.
 */

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')
}

function labelText(names: readonly string[], values: readonly string[]): string {
  if (names.length === 0) return ''
  return `{${names.map((n, i) => `${n}="${escapeLabel(values[i] ?? '')}"`).join(',')}}`
}

interface Series {
  render(): string
}

export class Counter implements Series {
  private readonly values = new Map<string, { labels: string[]; value: number }>()
  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[] = [],
  ) {}

  inc(labels: readonly string[] = [], by = 1): void {
    const key = labels.join('\u0000')
    const hit = this.values.get(key)
    if (hit) hit.value += by
    else this.values.set(key, { labels: [...labels], value: by })
  }

  get(labels: readonly string[] = []): number {
    return this.values.get(labels.join('\u0000'))?.value ?? 0
  }

  render(): string {
    let out = `# HELP ${this.name} ${this.help}\n# TYPE ${this.name} counter\n`
    for (const { labels, value } of this.values.values()) out += `${this.name}${labelText(this.labelNames, labels)} ${value}\n`
    return out
  }
}

/** A gauge read when metrics are rendered. */
export class Gauge implements Series {
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly read: () => number,
  ) {}

  render(): string {
    return `# HELP ${this.name} ${this.help}\n# TYPE ${this.name} gauge\n${this.name} ${this.read()}\n`
  }
}

export class Histogram implements Series {
  private readonly counts: number[]
  private sum = 0
  private count = 0
  constructor(
    readonly name: string,
    readonly help: string,
    readonly buckets: readonly number[],
  ) {
    this.counts = buckets.map(() => 0)
  }

  observe(value: number): void {
    this.sum += value
    this.count++
    for (let i = 0; i < this.buckets.length; i++) {
      if (value <= this.buckets[i]!) {
        this.counts[i]!++
        return
      }
    }
  }

  render(): string {
    let out = `# HELP ${this.name} ${this.help}\n# TYPE ${this.name} histogram\n`
    let cumulative = 0
    this.buckets.forEach((b, i) => {
      cumulative += this.counts[i]!
      out += `${this.name}_bucket{le="${b}"} ${cumulative}\n`
    })
    out += `${this.name}_bucket{le="+Inf"} ${this.count}\n${this.name}_sum ${this.sum}\n${this.name}_count ${this.count}\n`
    return out
  }
}

export class ProxyMetrics {
  readonly requests = new Counter('hypeman_egress_requests_total', 'Requests answered, by listener, scheme and status class.', ['listener', 'scheme', 'status'])
  readonly injections = new Counter('hypeman_egress_injections_total', 'Requests a real credential was injected into (sent upstream unless the upstream then failed), by credential name.', ['credential'])
  readonly unmatchedPlaceholders = new Counter('hypeman_egress_unmatched_placeholders_total', 'Requests carrying a placeholder towards a host its credential does not name.', ['action'])
  readonly upstreamFailures = new Counter('hypeman_egress_upstream_failures_total', 'Requests that failed upstream, by reason.', ['reason'])
  readonly denied = new Counter('hypeman_egress_denied_total', 'Connections or requests refused, by reason.', ['reason'])
  readonly connections = new Counter('hypeman_egress_connections_total', 'Client connections accepted, by listener.', ['listener'])
  readonly handoffs = new Counter(
    'hypeman_egress_http1_handoffs_total',
    'HTTP/1.1 connections the fast path handed to the general path, by what it does not handle (expect, upgrade, transfer_encoding, incomplete_head, ...).',
    ['reason'],
  )
  readonly tlsFailures = new Counter('hypeman_egress_client_tls_failures_total', 'Client TLS handshakes that failed (e.g. the client does not trust the CA).')
  readonly duration = new Histogram(
    'hypeman_egress_request_duration_seconds',
    'Time from a request arriving to its response ending.',
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  )
  private readonly gauges: Gauge[] = []

  gauge(name: string, help: string, read: () => number): void {
    this.gauges.push(new Gauge(name, help, read))
  }

  render(): string {
    const series: Series[] = [
      this.requests, this.injections, this.unmatchedPlaceholders, this.upstreamFailures,
      this.denied, this.connections, this.handoffs, this.tlsFailures, this.duration, ...this.gauges,
    ]
    return series.map((s) => s.render()).join('')
  }
}

const STATUS_CLASSES = ['0xx', '1xx', '2xx', '3xx', '4xx', '5xx', '6xx', '7xx', '8xx', '9xx']

/** "2xx" for 200..299: a label per request, looked up rather than built. */
export function statusClass(status: number): string {
  return STATUS_CLASSES[Math.floor(status / 100)] ?? `${Math.floor(status / 100)}xx`
}
