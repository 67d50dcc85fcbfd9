/**
 * startHttpsUpstream in a process of its own (argv: cert path, key path), for a test whose own
 * event loop is busy with many guests: in one process, guests and upstream would starve each
 * other's handshakes. Records nothing (a long run's requests would pile up). Prints {"port"}.
 */
import { startHttpsUpstream } from './upstream.js'

const [cert, key] = process.argv.slice(2) as [string, string]
const upstream = await startHttpsUpstream({ cert, key }, { record: false })
process.stdout.write(`${JSON.stringify({ port: upstream.port })}\n`)
process.on('SIGTERM', () => {
  void upstream.close().then(() => process.exit(0))
})
