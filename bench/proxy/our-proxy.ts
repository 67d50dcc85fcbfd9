/**
 * Our proxy as the benchmark runs it: embedded exactly as core would, one policy for the
 * client's source that injects `Authorization: Bearer <secret>` towards the upstream.
 * Prints {"port":N,"ca":path} once listening. `--general-path` turns the HTTP/1.1 fast path off.
 */
import { readFileSync } from 'node:fs'
import { silentLogger } from '@hypeman-ts/common'
import { createProxy } from '@hypeman-ts/egress-proxy'

const [stateDir, upstreamCaPath, secret, upstream, mode] = process.argv.slice(2) as [string, string, string, string, string | undefined]
const proxy = await createProxy({
  stateDir,
  listen: '127.0.0.1:0',
  upstreamCa: readFileSync(upstreamCaPath, 'utf8'),
  // The upstream is on this host's loopback ("127.0.0.1:port"), which the proxy refuses unless named.
  allowHostServices: [upstream],
  logger: silentLogger,
  // --general-path: Node's HTTP server and undici for every request, to compare with the fast path.
  http1FastPath: mode !== '--general-path',
})
proxy.policies.set('127.0.0.1', {
  env: { BENCH_REAL: secret },
  credentials: {
    API_KEY: { source: { env: 'BENCH_REAL' }, inject: [{ hosts: ['127.0.0.1'], as: { header: 'Authorization', format: 'Bearer ${value}' } }] },
  },
})
process.stdout.write(`${JSON.stringify({ port: proxy.address!.port, ca: proxy.caPath })}\n`)
process.on('SIGTERM', () => {
  void proxy.destroy().then(() => process.exit(0))
})
