import { describe, expect, it } from 'vitest'
import { Counter, Histogram, ProxyMetrics } from '../src/metrics.js'

describe('metrics', () => {
  it('renders counters with escaped labels and cumulative histograms', () => {
    const c = new Counter('x_total', 'Things.', ['kind'])
    c.inc(['a"b\\c\nd'])
    c.inc(['plain'], 2)
    expect(c.render()).toBe('# HELP x_total Things.\n# TYPE x_total counter\nx_total{kind="a\\"b\\\\c\\nd"} 1\nx_total{kind="plain"} 2\n')
    const h = new Histogram('d_seconds', 'Durations.', [0.1, 1])
    for (const v of [0.05, 0.5, 0.5, 5]) h.observe(v)
    expect(h.render()).toBe(
      '# HELP d_seconds Durations.\n# TYPE d_seconds histogram\nd_seconds_bucket{le="0.1"} 1\nd_seconds_bucket{le="1"} 3\nd_seconds_bucket{le="+Inf"} 4\nd_seconds_sum 6.05\nd_seconds_count 4\n',
    )
  })

  it('exposes every series the proxy keeps, each well-formed', () => {
    const m = new ProxyMetrics()
    m.gauge('hypeman_egress_connections_active', 'Open.', () => 3)
    m.requests.inc(['explicit', 'https', '2xx'])
    const text = m.render()
    for (const name of ['requests_total', 'injections_total', 'unmatched_placeholders_total', 'upstream_failures_total', 'denied_total', 'request_duration_seconds', 'connections_active']) {
      expect(text).toContain(`# TYPE hypeman_egress_${name}`)
    }
    for (const line of text.split('\n').filter((l) => l && !l.startsWith('#'))) {
      expect(line).toMatch(/^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? [0-9.e+-]+$/)
    }
  })
})
