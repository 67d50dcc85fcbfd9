/**
 * Our proxy as the benchmark runs it: embedded exactly as core would, one policy for the
 * client's source that injects `Authorization: Bearer <secret>` towards the upstream, reached
 * through the explicit listener (CONNECT to the upstream's address) or the transparent one
 * (TLS straight to the proxy, the upstream named by SNI, as a guest's redirected connection).
 * Prints {"port":N,"transparentPort":N,"ca":path} once listening. `--general-path` turns the
 * HTTP/1.1 fast path off.
 */
import { readFileSync } from 'node:fs'
import { silentLogger } from '@hypeman-ts/common'
import { createProxy } from '@hypeman-ts/egress-proxy'

const [stateDir, upstreamCaPath, secret, upstream, upstreamName, mode] = process.argv.slice(2) as [string, string, string, string, string, string | undefined]
const upstreamPort = Number(upstream.slice(upstream.lastIndexOf(':') + 1))
const proxy = await createProxy({
  stateDir,
  listen: '127.0.0.1:0',
  // A guest's redirected connection keeps its port only in the firewall's rule; here every
  // transparent connection goes to the upstream's port, which is what that rule would say.
  transparentListen: '127.0.0.1:0',
  transparentPorts: { https: upstreamPort },
  upstreamCa: readFileSync(upstreamCaPath, 'utf8'),
  // The upstream is on this host's loopback ("127.0.0.1:port"), which the proxy refuses unless named.
  allowHostServices: [upstream],
  // The name the transparent client puts in its SNI, resolved without /etc/hosts.
  lookup: async (name) => (name === upstreamName ? [{ address: '127.0.0.1', family: 4 }] : []),
  logger: silentLogger,
  // --general-path: Node's HTTP server and undici for every request, to compare with the fast path.
  http1FastPath: mode !== '--general-path',
})
proxy.policies.set('127.0.0.1', {
  env: { BENCH_REAL: secret },
  credentials: {
    API_KEY: { source: { env: 'BENCH_REAL' }, inject: [{ hosts: ['127.0.0.1', upstreamName], as: { header: 'Authorization', format: 'Bearer ${value}' } }] },
  },
})
process.stdout.write(`${JSON.stringify({ port: proxy.address!.port, transparentPort: proxy.transparentAddress!.port, ca: proxy.caPath })}\n`)
process.on('SIGTERM', () => {
  void proxy.destroy().then(() => process.exit(0))
})
