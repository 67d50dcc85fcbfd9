import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadConfig, parseConfig } from '../src/config.js'
import { restartOnlyChanges } from '../src/config.js'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-egress-config-'))
  await writeFile(join(dir, 'extra-roots.pem'), '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n')
})
afterAll(() => rm(dir, { recursive: true, force: true }))

const ISSUE_EXAMPLE = `
listen: "127.0.0.1:18080"        # explicit-proxy address; "transparent_listen" likewise
ca_dir: "./ca"                   # ca.pem (give to clients) and ca.key (0600), created if absent
upstream_ca: "./extra-roots.pem" # optional extra roots to verify upstreams with
allow_destinations: ["127.0.0.0/8"]  # CIDRs exempt from the SSRF guard; empty by default
sources:                         # who may use the proxy, and with which credentials
  - match: "10.100.0.5"          # a source IP or CIDR
    env: { OPENAI_REAL: "sk-..." }   # real values, as in the create API's env map
    credentials:                 # exactly the create API's \`credentials\` object
      OPENAI_API_KEY:
        source: { env: OPENAI_REAL }
        inject:
          - hosts: ["api.openai.com"]
            as: { header: Authorization, format: "Bearer \${value}" }
`

describe('policy file', () => {
  it('reads the documented example', async () => {
    const file = join(dir, 'policy.yaml')
    await writeFile(file, ISSUE_EXAMPLE)
    const c = await loadConfig(file)
    expect(c.options).toMatchObject({ listen: '127.0.0.1:18080', stateDir: join(dir, 'ca'), allowDestinations: ['127.0.0.0/8'] })
    expect(c.options.upstreamCa).toContain('BEGIN CERTIFICATE')
    expect(c.sources).toEqual([
      {
        match: '10.100.0.5',
        policy: {
          env: { OPENAI_REAL: 'sk-...' },
          credentials: { OPENAI_API_KEY: { source: { env: 'OPENAI_REAL' }, inject: [{ hosts: ['api.openai.com'], as: { header: 'Authorization', format: 'Bearer ${value}' } }] } },
        },
      },
    ])
  })

  it('reads the ports and the host services the proxy may connect to', async () => {
    const c = await parseConfig(`${ISSUE_EXAMPLE}allow_ports: [80, 443, 8443]\nallow_host_services: ["198.18.0.1:7777", "[0:0::1]:9000"]\n`, dir)
    expect(c.options).toMatchObject({ allowPorts: [80, 443, 8443], allowHostServices: ['198.18.0.1:7777', '[::1]:9000'] })
    const d = await parseConfig(ISSUE_EXAMPLE, dir)
    expect(restartOnlyChanges(d, c)).toEqual(['allow_ports', 'allow_host_services'])
  })

  it('reads JSON, limits, the transparent listener and the block option', async () => {
    const c = await parseConfig(
      JSON.stringify({
        ca_dir: '/var/lib/proxy',
        transparent_listen: '0.0.0.0:18443',
        transparent_ports: { https: 443 },
        metrics_listen: '127.0.0.1:9464',
        limits: { max_header_size: '32KB', idle_timeout: '2m', max_connections_per_source: 64 },
        sources: [{ match: '10.100.0.0/24', env: {}, credentials: {}, unmatched_placeholder: 'block' }],
      }),
      dir,
    )
    expect(c.options).toMatchObject({ stateDir: '/var/lib/proxy', transparentListen: '0.0.0.0:18443', transparentPorts: { https: 443 }, limits: { maxHeaderSize: '32KB', idleTimeout: '2m', maxConnectionsPerSource: 64 } })
    expect(c.metricsListen).toEqual({ host: '127.0.0.1', port: 9464 })
    expect(c.sources[0]).toEqual({ match: '10.100.0.0/24', policy: { env: {}, credentials: {}, unmatchedPlaceholder: 'block' } })
  })

  it.each([
    [ISSUE_EXAMPLE.replace('Bearer ${value}', 'Bearer'), 'sources[0].credentials.OPENAI_API_KEY.inject[0].as.format', 'must contain ${value}'],
    [ISSUE_EXAMPLE.replace('env: OPENAI_REAL }', 'env: MISSING }'), 'sources[0].credentials.OPENAI_API_KEY.source.env', 'not in env'],
    [ISSUE_EXAMPLE.replace('"10.100.0.5"', '"10.100.0.5/24"'), 'sources[0].match', 'host bits'],
    [ISSUE_EXAMPLE.replace('["127.0.0.0/8"]', '["everything"]'), 'allow_destinations[0]', 'not an IP'],
    [ISSUE_EXAMPLE.replace('ca_dir: "./ca"', 'ca_dir: ""'), 'ca_dir', 'non-empty'],
    [ISSUE_EXAMPLE.replace('listen:', 'listen_on:'), 'listen_on', 'unknown setting'],
    [`${ISSUE_EXAMPLE}  - match: "10.100.0.5"\n    credentials: {}\n`, 'sources[1].match', 'already used by sources[0]'],
    [`${ISSUE_EXAMPLE}limits: { max_heap: 1 }\n`, 'limits.max_heap', 'unknown limit'],
    [ISSUE_EXAMPLE.replace('    env: {', '    unmatched_placeholder: drop\n    env: {'), 'sources[0].unmatched_placeholder', '"forward" or "block"'],
    ['listen: [unclosed', 'config', 'not valid JSON or YAML'],
    [`${ISSUE_EXAMPLE}allow_ports: 443\n`, 'allow_ports', 'list of ports'],
    [`${ISSUE_EXAMPLE}allow_ports: [443, 70000]\n`, 'allow_ports[1]', 'not a port'],
    [`${ISSUE_EXAMPLE}allow_host_services: ["198.18.0.1"]\n`, 'allow_host_services[0]', 'exact address and port'],
    [`${ISSUE_EXAMPLE}allow_host_services: ["localhost:7777"]\n`, 'allow_host_services[0]', 'exact address and port'],
    [`${ISSUE_EXAMPLE}allow_host_services: ["198.18.0.0/15:7777"]\n`, 'allow_host_services[0]', 'exact address and port'],
  ])('rejects a bad file naming the field (%#)', async (text, field, words) => {
    await expect(parseConfig(text, dir)).rejects.toMatchObject({ code: 'invalid_input', field, message: expect.stringContaining(words) })
  })

  it('an unreadable upstream_ca is named', async () => {
    await expect(parseConfig(ISSUE_EXAMPLE.replace('extra-roots.pem', 'missing.pem'), dir)).rejects.toMatchObject({ field: 'upstream_ca' })
  })

  it('knows which settings need a restart', async () => {
    const a = await parseConfig(ISSUE_EXAMPLE, dir)
    const b = await parseConfig(ISSUE_EXAMPLE.replace('18080', '18081').replace('sk-...', 'sk-rotated'), dir)
    expect(restartOnlyChanges(a, b)).toEqual(['listen'])
    expect(restartOnlyChanges(a, a)).toEqual([])
  })
})
