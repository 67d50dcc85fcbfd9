/**
 * The destination guard end to end, in both modes and before any byte reaches the destination:
 * special-purpose ranges unless allow_destinations covers them; the proxy's own host (loopback
 * in any spelling, its listeners) whatever allow_destinations says, unless allow_host_services
 * names the exact address and port; and ports other than 80 and 443 unless allow_ports names
 * them. Each refusal is a 403 with its code, and a `denied` audit event naming it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { curl } from './support/clients.js'
import { bearerPolicy, type Harness, startHarness } from './support/harness.js'
import { startHttpsUpstream, startHttpUpstream, type Upstream } from './support/upstream.js'
import type { AuditEvent, EgressProxy } from '../src/index.js'

let h: Harness
/** Two more loopback servers, started after the harness's proxy, so allow_host_services does not name them. */
let unnamedTls: Upstream
let unnamedPlain: Upstream
/** No allow_destinations, no host services; the upstreams' ports allowed, so the range and host rules answer. */
let strict: EgressProxy
/** allow_destinations covers every address; no host services. */
let open: EgressProxy
const openAudit: AuditEvent[] = []

beforeAll(async () => {
  h = await startHarness()
  unnamedTls = await startHttpsUpstream(h.pki.good)
  unnamedPlain = await startHttpUpstream()
  const ports = [h.https.port, h.http.port]
  // The same test names (resolving to 127.0.0.1), and one name resolving to a private address.
  strict = await h.another({
    allowDestinations: [],
    allowHostServices: [],
    allowPorts: ports,
    lookup: async (host) => (host === 'internal.test' ? [{ address: '10.20.30.40', family: 4 }] : [{ address: '127.0.0.1', family: 4 }]),
  })
  strict.policies.set('127.0.0.1', bearerPolicy(['api.test']))
  open = await h.another({ allowDestinations: ['0.0.0.0/0', '::/0'], allowHostServices: [], allowPorts: ports })
  open.policies.set('127.0.0.1', bearerPolicy(['api.test']))
  open.audit.on('event', (e) => openAudit.push(e))
  h.proxy.policies.set('127.0.0.1', bearerPolicy(['api.test']))
})
afterAll(async () => {
  await unnamedTls?.close()
  await unnamedPlain?.close()
  await h?.close()
})

/** Requests that reached any upstream: a refusal leaves this unchanged. */
const reached = () => [h.https, h.http, unnamedTls, unnamedPlain].reduce((n, u) => n + u.connections(), 0)

describe('special-purpose ranges', () => {
  it.each([
    ['a name resolving to loopback', 'api.test', 'host_address_blocked', 'loopback'],
    ['a loopback literal', '127.0.0.1', 'host_address_blocked', 'loopback'],
    ['an IPv6 loopback literal', '[::1]', 'host_address_blocked', 'loopback'],
    ['a name resolving to a private address', 'internal.test', 'destination_blocked', 'private'],
    ['the metadata address', '169.254.169.254', 'destination_blocked', 'link-local'],
  ])('refuses %s at CONNECT and as an absolute URI', async (_what, host, code, range) => {
    const before = reached()
    const r = await curl(['-v', '--cacert', strict.caPath, '-x', strict.url!, `https://${host}:${h.https.port}/echo`])
    expect(r.exitCode).not.toBe(0)
    expect(r.stderr).toMatch(/CONNECT tunnel failed, response 403/)
    const plain = await curl(['-x', strict.url!, `http://${host}:${h.http.port}/echo`, '-D', '-'])
    expect(plain.status).toBe(403)
    expect(plain.body).toContain(`x-hypeman-egress-error: ${code}`)
    expect(plain.body).toContain(range)
    expect(reached()).toBe(before)
  })

  it('refuses a transparent connection whose SNI resolves to loopback', async () => {
    const before = reached()
    const r = await curl(['--cacert', strict.caPath, '--connect-to', `api.test:443:127.0.0.1:${strict.transparentAddress!.port}`, 'https://api.test/echo', '-D', '-'])
    expect(r.status).toBe(403)
    expect(r.body).toContain('host_address_blocked')
    expect(reached()).toBe(before)
  })

  it('the same request passes where allow_host_services names the exact address and port', async () => {
    const r = await curl(['--cacert', h.proxy.caPath, '-x', h.proxy.url!, `https://api.test:${h.https.port}/echo`])
    expect(r.status).toBe(200)
  })
})

describe("the proxy's own host", () => {
  it.each([
    ['a name resolving to loopback', 'api.test'],
    ['a loopback literal', '127.0.0.1'],
    ['another loopback address', '127.0.0.9'],
    ['IPv6 loopback', '[::1]'],
    ['IPv4-mapped loopback', '[::ffff:127.0.0.1]'],
    ['the unspecified address', '0.0.0.0'],
  ])('refuses %s whatever allow_destinations says: CONNECT, HTTP in a tunnel, absolute URI', async (_what, host) => {
    const before = reached()
    const auditBefore = openAudit.length
    const tls = await curl(['-v', '--cacert', open.caPath, '-x', open.url!, `https://${host}:${h.https.port}/echo`])
    expect(tls.stderr).toMatch(/CONNECT tunnel failed, response 403/)
    expect(tls.stderr).toContain('x-hypeman-egress-error: host_address_blocked')
    const tunnelled = await curl(['-v', '-p', '-x', open.url!, `http://${host}:${h.http.port}/echo`])
    expect(tunnelled.stderr).toMatch(/CONNECT tunnel failed, response 403/)
    expect(tunnelled.stderr).toContain('x-hypeman-egress-error: host_address_blocked')
    const plain = await curl(['-x', open.url!, `http://${host}:${h.http.port}/echo`, '-D', '-'])
    expect(plain.status).toBe(403)
    expect(plain.body).toContain('x-hypeman-egress-error: host_address_blocked')
    expect(plain.body).toContain("is on the proxy's own host")
    expect(reached()).toBe(before)
    const denied = openAudit.slice(auditBefore).filter((e) => e.type === 'denied')
    expect(denied.map((e) => (e.type === 'denied' ? e.reason : ''))).toEqual(['host_address_blocked', 'host_address_blocked', 'host_address_blocked'])
    expect(denied[2]).toMatchObject({ source: '127.0.0.1', port: h.http.port, message: expect.stringContaining("proxy's own host") })
  })

  it('refuses it in transparent mode too, over TLS (SNI) and plain HTTP (Host)', async () => {
    const before = reached()
    const auditBefore = openAudit.length
    const tls = await curl(['--cacert', open.caPath, '--connect-to', `api.test:443:127.0.0.1:${open.transparentAddress!.port}`, 'https://api.test/echo', '-D', '-'])
    expect(tls.status).toBe(403)
    expect(tls.body).toContain('x-hypeman-egress-error: host_address_blocked')
    const plain = await curl(['--connect-to', `api.test:80:127.0.0.1:${open.transparentAddress!.port}`, 'http://api.test/echo', '-D', '-'])
    expect(plain.status).toBe(403)
    expect(plain.body).toContain('x-hypeman-egress-error: host_address_blocked')
    expect(reached()).toBe(before)
    expect(openAudit.slice(auditBefore).filter((e) => e.type === 'denied')).toEqual([
      expect.objectContaining({ type: 'denied', reason: 'host_address_blocked', host: 'api.test', port: h.https.port }),
      expect.objectContaining({ type: 'denied', reason: 'host_address_blocked', host: 'api.test', port: h.http.port }),
    ])
  })

  it('refuses to connect to itself', async () => {
    const r = await curl(['-x', h.proxy.url!, `http://127.0.0.1:${h.proxy.address!.port}/`, '-D', '-'])
    expect(r.status).toBe(403)
    expect(r.body).toContain('x-hypeman-egress-error: host_address_blocked')
    expect(r.body).toContain('refusing to connect to itself')
  })
})

describe('ports', () => {
  it('refuses a port other than 80 and 443 on a destination it otherwise reaches: CONNECT, HTTP in a tunnel, absolute URI', async () => {
    const before = reached()
    const auditBefore = h.audit.length
    const tls = await curl(['-v', '--cacert', h.proxy.caPath, '-x', h.proxy.url!, `https://api.test:${unnamedTls.port}/echo`])
    expect(tls.stderr).toMatch(/CONNECT tunnel failed, response 403/)
    expect(tls.stderr).toContain('x-hypeman-egress-error: port_blocked')
    const tunnelled = await curl(['-v', '-p', '-x', h.proxy.url!, `http://api.test:${unnamedPlain.port}/echo`])
    expect(tunnelled.stderr).toMatch(/CONNECT tunnel failed, response 403/)
    expect(tunnelled.stderr).toContain('x-hypeman-egress-error: port_blocked')
    const plain = await curl(['-x', h.proxy.url!, `http://api.test:${unnamedPlain.port}/echo`, '-D', '-'])
    expect(plain.status).toBe(403)
    expect(plain.body).toContain('x-hypeman-egress-error: port_blocked')
    expect(plain.body).toContain(`api.test:${unnamedPlain.port}: the proxy connects to ports 80, 443 only`)
    expect(reached()).toBe(before)
    expect(h.audit.slice(auditBefore).filter((e) => e.type === 'denied')).toEqual([
      expect.objectContaining({ reason: 'port_blocked', host: 'api.test', port: unnamedTls.port }),
      expect.objectContaining({ reason: 'port_blocked', host: 'api.test', port: unnamedPlain.port }),
      expect.objectContaining({ reason: 'port_blocked', host: 'api.test', port: unnamedPlain.port }),
    ])
  })

  it('refuses a port a transparent plain-HTTP request names in its Host header', async () => {
    const before = reached()
    // The connection came to port 80 (the firewall redirects only 80 and 443); the Host header asks for another.
    const r = await curl(['--connect-to', `api.test:80:127.0.0.1:${h.proxy.transparentAddress!.port}`, 'http://api.test/echo', '-H', `Host: api.test:${unnamedPlain.port}`, '-D', '-'])
    expect(r.status).toBe(403)
    expect(r.body).toContain('x-hypeman-egress-error: port_blocked')
    expect(reached()).toBe(before)
    expect(h.audit.at(-1)).toMatchObject({ type: 'denied', reason: 'port_blocked', port: unnamedPlain.port })
  })
})
