#!/usr/bin/env node
/**
 * hypeman-ts-server: argv in, `createServer` out (the same factory embedders call).
 *
 *   serve   open the manager over --data-dir and serve hypeman's API until SIGTERM/SIGINT, which
 *           stop accepting, let in-flight requests finish and leave the VMs running (the next
 *           serve reattaches to them).
 *   token   print a JWT signed with the same secret, for clients (HYPEMAN_API_KEY).
 *
 * The secret comes from $JWT_SECRET or --jwt-secret-file; neither it nor a token is ever logged.
 */
import { readFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { parseDuration, parseRate, ValidationError } from '@hypeman-ts/common'
import { Hypeman, type HypemanOptions } from '@hypeman-ts/core'
import { mintToken } from './jwt.js'
import { createServer, DEFAULT_HOST, DEFAULT_PORT } from './server.js'

const USAGE = `usage: hypeman-ts-server serve [options]
       hypeman-ts-server token [--jwt-secret-file FILE] [--subject NAME] [--ttl DURATION]

serve:
  --listen HOST:PORT          where to listen (default ${DEFAULT_HOST}:${DEFAULT_PORT})
  --data-dir DIR              images and instances (default $HYPEMAN_TS_DATA_DIR or /var/lib/hypeman-ts)
  --jwt-secret-file FILE      the HS256 secret (default: $JWT_SECRET)
  --no-network                no host network (instances get none)
  --subnet CIDR               the instances' network (default netsetup's)
  --uplink IFACE              the interface NAT goes out of (default: the default route's)
  --dns ADDR                  DNS server for guests (repeatable)
  --capacity-download RATE    host download capacity shared out by vCPU, e.g. 1Gbps
  --capacity-upload RATE      host upload capacity, e.g. 1Gbps
  --egress-allow-destination CIDR   exempt a range from the egress proxy's SSRF guard (repeatable)
  --allow-oci-layouts         let clients name local OCI layouts (oci:/dir) as images
  --body-limit BYTES          largest request body (default 1048576)
  --metrics-listen HOST:PORT  serve Prometheus /metrics there (its own listener, no auth; default: off)
  --log                       JSON request logs on stdout

token:
  --subject NAME              the token's sub claim (default hypeman-ts)
  --ttl DURATION              lifetime, e.g. 24h (default: no expiry)`

async function secretFrom(file: string | undefined): Promise<Buffer> {
  // A trailing newline (echo > file) is not part of the secret.
  if (file) return Buffer.from((await readFile(file, 'utf8')).trim(), 'utf8')
  const env = process.env.JWT_SECRET
  if (!env) throw new ValidationError('jwt-secret-file', 'set JWT_SECRET or pass --jwt-secret-file')
  return Buffer.from(env, 'utf8')
}

function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(s)
  const port = Number(m?.[3])
  if (!m || !Number.isInteger(port) || port < 0 || port > 65535) throw new ValidationError('listen', `"${s}" must be HOST:PORT`)
  return { host: m[1] ?? (m[2] || DEFAULT_HOST), port }
}

export async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      listen: { type: 'string' },
      'data-dir': { type: 'string' },
      'jwt-secret-file': { type: 'string' },
      'no-network': { type: 'boolean' },
      subnet: { type: 'string' },
      uplink: { type: 'string' },
      dns: { type: 'string', multiple: true },
      'capacity-download': { type: 'string' },
      'capacity-upload': { type: 'string' },
      'egress-allow-destination': { type: 'string', multiple: true },
      'allow-oci-layouts': { type: 'boolean' },
      'body-limit': { type: 'string' },
      'metrics-listen': { type: 'string' },
      log: { type: 'boolean' },
      subject: { type: 'string' },
      ttl: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  const command = positionals[0]
  if (values.help || positionals.length !== 1 || (command !== 'serve' && command !== 'token')) {
    process[values.help ? 'stdout' : 'stderr'].write(`${USAGE}\n`)
    return values.help ? 0 : 2
  }
  const secret = await secretFrom(values['jwt-secret-file'])
  if (command === 'token') {
    const ttlSeconds = values.ttl ? Math.floor(parseDuration(values.ttl, 'ttl') / 1000) : undefined
    process.stdout.write(`${mintToken(secret, { ...(values.subject ? { subject: values.subject } : {}), ...(ttlSeconds ? { ttlSeconds } : {}) })}\n`)
    return 0
  }

  const listen = parseListen(values.listen ?? `${DEFAULT_HOST}:${DEFAULT_PORT}`)
  const metricsListen = values['metrics-listen'] === undefined ? undefined : parseListen(values['metrics-listen'])
  const capacity = {
    ...(values['capacity-download'] ? { download: values['capacity-download'] } : {}),
    ...(values['capacity-upload'] ? { upload: values['capacity-upload'] } : {}),
  }
  const opts: HypemanOptions = {
    ...(values['data-dir'] ? { dataDir: values['data-dir'] } : {}),
    network: values['no-network']
      ? false
      : {
          ...(values.subnet ? { subnet: values.subnet } : {}),
          ...(values.uplink ? { uplink: values.uplink } : {}),
          ...(values.dns ? { dns: values.dns } : {}),
          ...(Object.keys(capacity).length ? { capacity } : {}),
        },
    ...(values['egress-allow-destination'] ? { egress: { allowDestinations: values['egress-allow-destination'] } } : {}),
  }
  const bodyLimit = values['body-limit'] === undefined ? undefined : Number(values['body-limit'])
  if (bodyLimit !== undefined && (!Number.isSafeInteger(bodyLimit) || bodyLimit < 1)) throw new ValidationError('body-limit', 'must be a positive number of bytes')

  const hm = await Hypeman.open(opts)
  let server
  try {
    server = await createServer(hm, {
      jwtSecret: secret,
      logger: values.log === true,
      allowLocalLayouts: values['allow-oci-layouts'] === true,
      metrics: metricsListen !== undefined,
      ...(bodyLimit ? { bodyLimit } : {}),
      ...(capacity.download ? { networkCapacity: { downloadBitsPerSec: parseRate(capacity.download, 'capacity-download') } } : {}),
    })
    const addr = await server.listen(listen)
    if (metricsListen && server.metrics) {
      const m = await server.metrics.listen(metricsListen)
      process.stderr.write(`hypeman-ts-server: metrics on ${m.address}:${m.port}\n`)
    }
    process.stderr.write(`hypeman-ts-server: listening on ${addr.address}:${addr.port}\n`)
  } catch (err) {
    await server?.close().catch(() => {})
    await hm.close()
    throw err
  }
  const running = server
  await new Promise<void>((resolve) => {
    const stop = (sig: NodeJS.Signals) => {
      process.stderr.write(`hypeman-ts-server: ${sig}: finishing in-flight requests; VMs keep running\n`)
      resolve()
    }
    process.once('SIGTERM', stop)
    process.once('SIGINT', stop)
  })
  await running.close()
  await hm.close()
  return 0
}

// Run when executed, not when imported (tests import main).
if (/(?:^|[/\\])(?:cli\.(?:ts|js|mjs)|hypeman-ts-server)$/.test(process.argv[1] ?? '')) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`hypeman-ts-server: ${err instanceof Error ? err.message : String(err)}\n`)
      process.exit(2)
    },
  )
}
