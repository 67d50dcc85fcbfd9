/**
 * The proxy in a process of its own, configured as the harness configures it, so a test can
 * read its memory and open files from /proc without counting its own clients and upstreams.
 * argv[2]: JSON ProxyOptions minus the functions (lookup and logger are the harness's).
 * Prints {"port","transparentPort","caPem"} once listening; on stdin, a line "metrics" is
 * answered with {"metrics": text}. SIGTERM destroys the proxy and exits.
 */
import { createInterface } from 'node:readline'
import { silentLogger } from '@hypeman-ts/common'
import { createProxy, type ProxyOptions } from '../../src/index.js'
import { bearerPolicy, testLookup } from './harness.js'

const options = JSON.parse(process.argv[2]!) as ProxyOptions
const proxy = await createProxy({ ...options, lookup: testLookup, logger: silentLogger })
proxy.policies.set('127.0.0.1', bearerPolicy(['api.test']))
process.stdout.write(`${JSON.stringify({ port: proxy.address!.port, transparentPort: proxy.transparentAddress!.port, caPem: proxy.caPem })}\n`)
createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() === 'metrics') process.stdout.write(`${JSON.stringify({ metrics: proxy.metrics() })}\n`)
})
process.on('SIGTERM', () => {
  void proxy.destroy().then(() => process.exit(0))
})
