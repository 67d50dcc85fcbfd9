/**
 * Networking and mediated egress end to end: real QEMU VMs (a debootstrap'ed Debian with curl)
 * on the host network of netsetup, with the embedded egress proxy, all inside namespaces this
 * test creates (NetLab): the manager runs in the lab's "host" namespace, the "internet" is a
 * server namespace reached through NAT. Nothing touches the real host's network.
 */
import { spawn } from 'node:child_process'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { readFileSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { NetLab } from '@hypeman-ts/netsetup/testing'
import { makeCerts } from '../support/certs.js'
import { FIXTURES } from '../support/registry.js'

const SECRET = 'sk-real-secret-7f3a9c'
const SECRET_2 = 'sk-rotated-running-51c0'
const SECRET_3 = 'sk-rotated-stopped-a9e2'
let lab: NetLab
let work: string
let results: Record<string, any>
let childOutput = ''

/** QEMU processes started for this test's data dir (their command line names files in it). */
function qemuOf(dir: string): string[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .flatMap((pid) => {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8')
        return cmd.includes('qemu-system') && cmd.includes(dir) ? [pid] : []
      } catch {
        return []
      }
    })
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'hm-network-'))
  lab = await NetLab.create({ prefix: 'hmnt' })
  const certs = await makeCerts(work)
  const upstream = lab.spawn(lab.serverNs, process.execPath, [join(__dirname, '../support/upstream-server.mjs'), certs.cert, certs.key])
  await upstream.waitFor(/upstream ready/)
  const cfg = {
    dataDir: join(work, 'data'),
    uplink: lab.uplink,
    upstreamCa: certs.ca,
    serverIp: lab.serverIp,
    hostIp: lab.hostUplinkIp,
    cert: certs.cert,
    key: certs.key,
    image: `oci:${FIXTURES}/debian:bookworm`,
  }
  const child = lab.spawn(lab.hostNs, process.execPath, ['--import', 'tsx', join(__dirname, '../support/network-child.ts'), JSON.stringify(cfg)])
  const m = await child.waitFor(/RESULT (.*)\n/, 600_000)
  childOutput = child.output()
  results = JSON.parse(m[1]!)
}, 660_000)

afterAll(async () => {
  for (const pid of qemuOf(work)) process.kill(Number(pid), 'SIGKILL')
  await lab?.destroy()
  await rm(work, { recursive: true, force: true })
})

describe('networking', () => {
  it('ran the scenario to the end', () => {
    expect(results.error, childOutput.slice(-3000)).toBeUndefined()
  })

  it('gives the guest an address, a resolver and the way out through NAT', () => {
    expect(results.plainInstance).toMatchObject({ enabled: true, name: 'default', ip: expect.stringMatching(/^10\.123\.0\.\d+$/), mac: expect.stringMatching(/^02:/) })
    expect(results.plainResolv).toContain('nameserver 10.123.0.1')
    // The server has no route to 10.123.0.0/24: the reply proves the NAT; it saw the uplink address.
    expect(results.plainHttp).toMatchObject({ url: '/hello', remote: '198.18.0.1' })
  })

  it('a second instance of the shape boots from the first one\'s template, in a warm VMM whose spare TAP became its port, with its own MAC', () => {
    expect(results.templates).toMatchObject({ plainMade: true, mediatedRestored: true, mediatedWarm: true })
    const [plainMac, medMac] = results.templates.macs
    expect(plainMac).not.toBe(medMac)
    // The guest's NIC has the instance's MAC, not the template's (the NAT and the proxy answered it above).
    expect(results.templates.guestMacs).toEqual([plainMac, medMac])
  })

  it('a fork of a running instance has its own address and MAC in the guest, and both reach out', () => {
    const f = results.fork
    expect(f).toMatchObject({ state: 'Running', hostname: 'net-fork', guestMac: f.mac })
    expect(f.ip).not.toBe(results.plainInstance.ip)
    expect(f.mac).not.toBe(results.plainInstance.mac)
    expect(f.guestIp).toBe(f.ip)
    expect(f.sourceGuestIp).toBe(results.plainInstance.ip)
    expect(f.http).toMatchObject({ url: '/hello' })
    expect(f.sourceHttp).toMatchObject({ url: '/hello' })
  })

  it('shapes the guest to its configured rates, both ways (±15%)', () => {
    const [dBytes, dTime] = String(results.shaping.down).split(' ').map(Number) as [number, number]
    const [uBytes, uTime] = String(results.shaping.up).split(' ').map(Number) as [number, number]
    const downMbps = (dBytes * 8) / dTime / 1e6
    const upMbps = (uBytes * 8) / uTime / 1e6
    console.info(`shaping through a QEMU guest: download ${downMbps.toFixed(2)} Mbit/s (20 configured), upload ${upMbps.toFixed(2)} Mbit/s (16 configured)`)
    expect(dBytes).toBe(10_000_000)
    expect(uBytes).toBe(8_000_000)
    expect(downMbps).toBeGreaterThan(20 * 0.85)
    expect(downMbps).toBeLessThan(20 * 1.15)
    expect(upMbps).toBeGreaterThan(16 * 0.85)
    expect(upMbps).toBeLessThan(16 * 1.15)
    expect(results.plainInstance).toMatchObject({ bandwidthDownload: '20Mbps', bandwidthUpload: '16Mbps' })
  })
})

describe('mediated egress with a brokered credential', () => {
  it('gives the guest a placeholder, never the real value', () => {
    const env = String(results.guestEnv)
    expect(env).toMatch(/^OPENAI_API_KEY=hmph_[0-9a-f]{40}$/m)
    expect(env).not.toContain(SECRET)
    expect(env).not.toContain('OPENAI_REAL')
    expect(env).toContain('VISIBLE=yes')
    expect(env).toMatch(/^HTTPS_PROXY=http:\/\/10\.123\.0\.1:\d+$/m)
    expect(results.mediatedInstanceEnv).toEqual({ VISIBLE: 'yes', OPENAI_API_KEY: '<placeholder>' })
  })

  it('puts the real value on the wire to the matching host, transparently and through HTTPS_PROXY', () => {
    expect(results.transparentMatch).toMatchObject({ url: '/t', tls: true, headers: { authorization: `Bearer ${SECRET}` } })
    expect(results.explicitMatch).toMatchObject({ url: '/e', tls: true, headers: { authorization: `Bearer ${SECRET}` } })
  })

  it('stats count the guest\'s network bytes from its TAP', () => {
    expect(results.mediatedStats.networkRxBytes).toBeGreaterThan(1000)
    expect(results.mediatedStats.networkTxBytes).toBeGreaterThan(1000)
    expect(results.mediatedStats.cpuSeconds).toBeGreaterThan(0)
  })

  it('leaves the placeholder untouched for other hosts and on plain HTTP', () => {
    expect(results.transparentOther.headers.authorization).toMatch(/^Bearer hmph_[0-9a-f]{40}$/)
    expect(results.transparentPlainHttp).toMatchObject({ tls: false })
    expect(results.transparentPlainHttp.headers.authorization).toMatch(/^Bearer hmph_/)
  })

  it('mode all refuses direct egress; http_https_only lets other ports through but still mediates 443', () => {
    expect(results.mediatedDirectTcp.out).toContain('blocked')
    expect(results.mediatedDirectTcp.out).not.toContain('tcp-2222-hello')
    expect(results.mediatedDirectPlainHttpPort8080.out).toContain('blocked')
    expect(results.partialDirectTcp.out).toContain('tcp-2222-hello')
    expect(results.partialHttps).toMatchObject({ url: '/p', tls: true })
  })

  it('refuses, through the proxy, every way to this host (uplink, gateway, loopback) and other ports of an allowed server, and audits each refusal', () => {
    const { probes, connections, denied, onAuditDenied, err } = results.hostProbes
    const host = 'host_address_blocked'
    const port = 'port_blocked'
    const expected: Record<string, string> = {
      'explicit-http-uplink': host,
      'explicit-http-uplink-7777': port,
      'explicit-http-gateway': host,
      'explicit-http-loopback': host,
      'explicit-http-loopback-name': host,
      'explicit-http-mapped-loopback': host,
      'explicit-tunnel-http-uplink': host,
      'explicit-https-uplink': host,
      'explicit-https-uplink-name': host,
      'explicit-https-gateway': host,
      'explicit-https-loopback': host,
      'transparent-http-uplink': host,
      'transparent-http-gateway': host,
      'transparent-http-loopback': host,
      'transparent-https-uplink': host,
      'transparent-https-gateway': host,
      'transparent-https-loopback': host,
      'explicit-http-port-8080': port,
      'explicit-tunnel-http-port-8080': port,
      'explicit-https-port-8443': port,
      'transparent-http-port-8080': port,
    }
    for (const [name, code] of Object.entries(expected)) {
      const p = probes[name]
      // A refused CONNECT is a 403 to the CONNECT (curl: http_connect); otherwise to the request.
      expect([p?.http, p?.connect], `${name}: ${JSON.stringify(p)} ${err}`).toContain('403')
      expect(p?.error, name).toBe(code)
    }
    // The probe set works: the same proxy still serves the allowed server on 443.
    expect(probes['explicit-https-allowed']).toMatchObject({ http: '200', error: 'none' })
    // Nothing reached the services this host runs on every address, port 80, 443 and 7777.
    expect(connections).toEqual([])
    // One denied event per refused probe, naming the rule, through hm.egress.events() and onAudit alike.
    const ip = results.mediatedInstanceIp
    const reasons = (events: any[]) => events.filter((e) => e.source === ip).map((e) => e.reason).sort()
    const want = Object.values(expected).sort()
    expect(reasons(denied)).toEqual(want)
    expect(reasons(onAuditDenied)).toEqual(want)
    expect(denied).toContainEqual(expect.objectContaining({ type: 'denied', reason: host, host: '198.18.0.1', port: 80 }))
    expect(denied).toContainEqual(expect.objectContaining({ type: 'denied', reason: host, host: 'gateway.test', port: 443 }))
    expect(denied).toContainEqual(expect.objectContaining({ type: 'denied', reason: port, host: 'api.test', port: 8443 }))
    expect(denied).toContainEqual(expect.objectContaining({ type: 'denied', reason: port, host: '198.18.0.1', port: 7777 }))
  })

  it('rotates the real value of a running instance with update({ env }), with no restart and nothing new in the guest', () => {
    const r = results.rotation
    expect(r.sameBoot).toBe(true)
    expect(r.match).toMatchObject({ url: '/rot', tls: true, headers: { authorization: `Bearer ${SECRET_2}` } })
    expect(r.guestEnv).toBe(results.guestEnv)
    expect(r.env).toEqual({ VISIBLE: 'yes', OPENAI_API_KEY: '<placeholder>' })
    // Only credential sources change this way; the spec's other update fields are not features here.
    expect(r.unbound).toEqual({ code: 'invalid_input', field: 'env.VISIBLE' })
    expect(r.ttl).toEqual({ code: 'not_supported', field: 'ttl' })
    expect(r.empty).toEqual({ code: 'invalid_input', field: 'env' })
  })

  it('a stopped instance started by a new host process gets its policy back, with the value rotated while it was stopped', () => {
    expect(results.afterRestartMatch?.headers?.authorization).toBe(`Bearer ${SECRET_3}`)
  })

  it('a delete during create cancels it, and the create undoes itself before the delete returns', () => {
    expect(results.cancelledCreate.outcome).toMatch(/deleted while it was being created/)
    expect(results.cancelledCreate.listedAfter).toBe(false)
  })

  it('delete leaves no instance, and no VMM behind', () => {
    expect(results.afterDelete).toEqual([])
    expect(qemuOf(work)).toEqual([])
  })

  it('close({ removeNetwork }) is refused while instances hold addresses, and afterwards takes the bridge and our tables away', () => {
    expect(results.removeWhileUsed).toEqual({ code: 'conflict', field: 'removeNetwork' })
    expect(results.afterRemove.links).not.toContain('hmbr0')
    expect(results.afterRemove.links.filter((l: string) => l.startsWith('hmt'))).toEqual([])
    expect(results.afterRemove.tables.filter((t: string) => t.includes('hypeman'))).toEqual([])
  })

  it('wrote the real secret nowhere but the instance record (root-only)', async () => {
    expect(results.secretHolders).toEqual([{ file: expect.stringMatching(/^\/instances\/[a-z0-9]+\/instance\.json$/), mode: '600' }])
    const hits: string[] = []
    const walk = async (dir: string): Promise<void> => {
      for (const ent of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
        const p = join(dir, ent.name)
        if (ent.isDirectory()) await walk(p)
        else if (ent.isFile() && !p.endsWith('.ext4') && !p.endsWith('.erofs') && [SECRET, SECRET_2, SECRET_3].some((x) => readFileSync(p).includes(x))) hits.push(p)
      }
    }
    await walk(join(work, 'data'))
    expect(hits).toEqual([]) // instances are deleted, so their records are gone too
    // Everything the manager and the proxy logged (the RESULT line quotes the upstream, which must see it).
    expect(childOutput.replace(/^RESULT .*$/m, '')).not.toMatch(new RegExp([SECRET, SECRET_2, SECRET_3].join('|')))
    expect(childOutput).toMatch(/^RESULT /m)
  })
})

describe('kill -9 of the host process while it attaches an instance to the network', () => {
  it('the next open detaches it: no allocation, port, rule or shaper is left', async () => {
    const cfg = { dataDir: join(work, 'crash-data'), uplink: lab.uplink, image: `oci:${FIXTURES}/small:busybox-amd64` }
    const child = lab.spawn(lab.hostNs, process.execPath, ['--import', 'tsx', join(__dirname, '../support/network-crash-child.ts'), 'create', JSON.stringify(cfg)])
    await child.waitFor(/creating/, 120_000)
    // Kill it once the instance's port exists on the bridge (the attach is under way or done, the VM not yet running).
    for (let i = 0; i < 600; i++) {
      const links = (await lab.exec(lab.hostNs, 'ip', ['-j', 'link', 'show'])).stdout
      if (links.includes('"hmt')) break
      await new Promise((r) => setTimeout(r, 20))
    }
    child.child.kill('SIGKILL')
    await new Promise((r) => child.child.once('exit', r))
    const again = lab.spawn(lab.hostNs, process.execPath, ['--import', 'tsx', join(__dirname, '../support/network-crash-child.ts'), 'reopen', JSON.stringify(cfg)])
    const m = await again.waitFor(/RESULT (.*)\n/, 120_000)
    const { instances, inventory } = JSON.parse(m[1]!)
    expect(instances).toEqual([])
    expect(inventory.allocations ?? []).toEqual([])
    expect(JSON.stringify(inventory.links ?? [])).not.toContain('hmt')
    expect(inventory.nft?.inet?.mediated ?? []).toEqual([])
    expect(inventory.nft?.bridge?.ports ?? []).toEqual([])
    expect(qemuOf(cfg.dataDir)).toEqual([])
  })
})
