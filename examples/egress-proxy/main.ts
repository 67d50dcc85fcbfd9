/**
 * The egress proxy embedded in a program, end to end on one machine:
 *
 *   1. a stand-in for a real API: a local HTTPS server that prints the Authorization it got;
 *   2. the proxy, with one policy for 127.0.0.1 injecting OPENAI_API_KEY towards that API;
 *   3. a "guest" request through the proxy that only knows the placeholder.
 *
 * Run it with `npx tsx examples/egress-proxy/main.ts` (after `bash scripts/setup`). Against a
 * real API you would drop step 1, `upstreamCa`, `allowHostServices` and `lookup`.
 */
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:https'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createProxy } from '@hypeman-ts/egress-proxy'
import { ProxyAgent, fetch } from 'undici'

const dir = mkdtempSync(join(tmpdir(), 'egress-example-'))

// 1. The stand-in API, with its own CA (made by openssl) so the proxy can verify it.
const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' })
ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'api-ca.key', '-out', 'api-ca.pem', '-days', '1', '-subj', '/CN=example API CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign')
ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'api.key', '-out', 'api.csr', '-subj', '/CN=api.example.test')
writeFileSync(join(dir, 'api.ext'), 'subjectAltName=DNS:api.example.test\n')
ssl('x509', '-req', '-in', 'api.csr', '-CA', 'api-ca.pem', '-CAkey', 'api-ca.key', '-CAcreateserial', '-out', 'api.pem', '-days', '1', '-extfile', 'api.ext')
const api = createServer({ key: readFileSync(join(dir, 'api.key')), cert: readFileSync(join(dir, 'api.pem')) }, (req, res) => {
  res.end(`the API received Authorization: ${req.headers.authorization}\n`)
})
await new Promise<void>((resolve) => api.listen(0, '127.0.0.1', resolve))
const apiPort = (api.address() as { port: number }).port

// 2. The proxy.
const proxy = await createProxy({
  stateDir: join(dir, 'proxy-state'),
  listen: '127.0.0.1:0',
  upstreamCa: readFileSync(join(dir, 'api-ca.pem'), 'utf8'),
  // The stand-in API is on this host's loopback: the proxy never connects to its own host unless
  // told the exact address and port (nor to ports other than 80 and 443).
  allowHostServices: [`127.0.0.1:${apiPort}`],
  lookup: async () => [{ address: '127.0.0.1', family: 4 }], // api.example.test → the stand-in
})
const { placeholders } = proxy.policies.set('127.0.0.1', {
  env: { OPENAI_REAL: 'sk-the-real-secret' },
  credentials: {
    OPENAI_API_KEY: {
      source: { env: 'OPENAI_REAL' },
      inject: [{ hosts: ['api.example.test'], as: { header: 'Authorization', format: 'Bearer ${value}' } }],
    },
  },
})
proxy.audit.on('event', (e) => console.log(`audit: ${e.type}`, 'credentials' in e ? e.credentials : ''))
console.log(`proxy ${proxy.url}, CA ${proxy.caPath}`)
console.log(`the guest's OPENAI_API_KEY is ${placeholders.OPENAI_API_KEY}`)

// 3. The guest: it trusts the proxy's CA and sends the placeholder.
const dispatcher = new ProxyAgent({ uri: proxy.url!, requestTls: { ca: proxy.caPem } })
const res = await fetch(`https://api.example.test:${apiPort}/v1/models`, {
  dispatcher,
  headers: { authorization: `Bearer ${placeholders.OPENAI_API_KEY}` },
})
process.stdout.write(await res.text())

await dispatcher.close()
await proxy.close()
api.close()
rmSync(dir, { recursive: true, force: true })
