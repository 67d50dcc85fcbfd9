/**
 * The scenario of test/update-network.test.ts, run INSIDE the lab's "host" namespace: a manager
 * with a host network and the egress proxy, the server over it on loopback, and the official SDK.
 * A guest with a brokered credential calls the stand-in internet before and after a PATCH that
 * rotates the credential's real value. Prints one line `RESULT <json>`.
 */
import { readFileSync } from 'node:fs'
import HypemanClient from '@onkernel/hypeman'
import { Hypeman } from '@hypeman-ts/core'
import { createServer, mintToken } from '../../src/index.js'

const cfg = JSON.parse(process.argv[2]!) as { dataDir: string; uplink: string; upstreamCa: string; serverIp: string; image: string; secrets: [string, string] }
const results: Record<string, unknown> = {}

const hm = await Hypeman.open({
  dataDir: cfg.dataDir,
  network: { uplink: cfg.uplink, subnet: '10.124.0.0/24', dns: ['10.124.0.1'] },
  egress: {
    upstreamCa: readFileSync(cfg.upstreamCa, 'utf8'),
    allowDestinations: ['198.18.0.0/15'],
    lookup: async (host) => (host === 'api.test' ? [{ address: cfg.serverIp, family: 4 }] : []),
  },
  defaults: { vcpus: 1, size: '512MB', overlaySize: '512MB' },
})
const secret = Buffer.from('update-network-test-secret-0123456789')
const server = await createServer(hm, { jwtSecret: secret, allowLocalLayouts: true })
const { port } = await server.listen({ host: '127.0.0.1', port: 0 })
const client = new HypemanClient({ baseURL: `http://127.0.0.1:${port}`, apiKey: mintToken(secret, { ttlSeconds: 3600 }), maxRetries: 0, timeout: 600_000 })

/** What the stand-in internet saw of a request the guest made (it echoes requests as JSON). */
async function echo(id: string, path: string): Promise<Record<string, any> | string> {
  const r = await hm.instances.exec(id, {
    argv: ['sh', '-c', `curl -s --max-time 20 --noproxy '*' --resolve api.test:443:${cfg.serverIp} -H "Authorization: Bearer $API_KEY" https://api.test${path}`],
    timeoutMs: 60_000,
  })
  const out = r.stdout.toString().trim()
  try {
    return JSON.parse(out) as Record<string, any>
  } catch {
    return `exit ${r.exitCode}: ${out} ${r.stderr.toString().trim()}`
  }
}

try {
  const inst = await client.instances.create({
    image: cfg.image,
    name: 'srv-rotate',
    cmd: ['sleep', '3600'],
    env: { API_KEY_REAL: cfg.secrets[0], VISIBLE: 'yes' },
    credentials: { API_KEY: { source: { env: 'API_KEY_REAL' }, inject: [{ hosts: ['api.test'], as: { header: 'Authorization', format: 'Bearer ${value}' } }] } },
    network: { egress: { enabled: true } },
  })
  results.created = inst
  results.before = await echo(inst.id, '/before')
  const patched = await client.instances.update(inst.id, { env: { API_KEY_REAL: cfg.secrets[1] } }).withResponse()
  results.patchStatus = patched.response.status
  results.patched = patched.data
  results.after = await echo(inst.id, '/after')
  results.unbound = await client.instances.update('srv-rotate', { env: { VISIBLE: 'no' } }).then(
    () => 'accepted',
    (e: { status?: number; error?: unknown }) => ({ status: e.status, error: e.error }),
  )
  await client.instances.delete(inst.id)
} catch (err) {
  results.error = err instanceof Error ? `${err.message}\n${err.stack}` : String(err)
}
await server.close()
// The bridge and NAT live in the lab's namespace: destroying the lab takes them down.
await hm.close()
console.log(`RESULT ${JSON.stringify(results)}`)
process.exit(0)
