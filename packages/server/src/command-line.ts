/**
 * The command line of hypeman-ts-server as data: argv in, what to run out (the manager's options,
 * the server's options, where to listen). Pure, so every flag's mapping is tested without
 * starting anything; cli.ts only acts on the result.
 */
import { parseArgs } from 'node:util'
import { parseDuration, parseRate, ValidationError } from '@hypeman-ts/common'
import type { HypemanOptions, NetworkOptions } from '@hypeman-ts/core'
import { DEFAULT_HOST, DEFAULT_PORT, type ServerOptions } from './server.js'

export const USAGE = `usage: hypeman-ts-server serve [options]
       hypeman-ts-server token [--jwt-secret-file FILE] [--subject NAME] [--ttl DURATION]

serve:
  --listen HOST:PORT          where to listen (default ${DEFAULT_HOST}:${DEFAULT_PORT})
  --data-dir DIR              images and instances (default $HYPEMAN_TS_DATA_DIR or /var/lib/hypeman-ts)
  --jwt-secret-file FILE      the HS256 secret (default: $JWT_SECRET)
  --no-network                no host network (instances get none)
  --no-volume-hotplug         boot instances without the SCSI controller that attaching volumes to running ones needs
  --subnet CIDR               the instances' network (default netsetup's)
  --uplink IFACE              the interface NAT goes out of (default: the default route's)
  --dns ADDR                  DNS server for guests (repeatable)
  --capacity-download RATE    host download capacity shared out by vCPU, e.g. 1Gbps
  --capacity-upload RATE      host upload capacity, e.g. 1Gbps
  --egress-port-explicit N    the egress proxy's HTTP_PROXY port on the gateway (default 18080)
  --egress-port-transparent N the port guests' redirected TCP 80/443 reach (default 18443)
  --egress-allow-destination CIDR   exempt a range from the egress proxy's SSRF guard (repeatable)
  --egress-allow-port N       a port guests may reach through the proxy (repeatable; default 80 and 443)
  --egress-allow-host-service ADDR:PORT   a service on this host guests may reach (repeatable)
  --allow-oci-layouts         let clients name local OCI layouts (oci:/dir) as images
  --body-limit BYTES          largest request body (default 1048576)
  --metrics-listen HOST:PORT  serve Prometheus /metrics there (its own listener, no auth; default: off)
  --log                       JSON request logs on stdout

token:
  --subject NAME              the token's sub claim (default hypeman-ts)
  --ttl DURATION              lifetime, e.g. 24h (default: no expiry)`

export interface Listen {
  host: string
  port: number
}

export type Command =
  | { command: 'help' }
  | { command: 'usage' }
  | { command: 'token'; secretFile?: string; subject?: string; ttlSeconds?: number }
  | {
      command: 'serve'
      secretFile?: string
      listen: Listen
      metricsListen?: Listen
      hypeman: HypemanOptions
      server: Omit<ServerOptions, 'jwtSecret'>
    }

export function parseListen(s: string, field = 'listen'): Listen {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(s)
  const port = Number(m?.[3])
  if (!m || !Number.isInteger(port) || port < 0 || port > 65535) throw new ValidationError(field, `"${s}" must be HOST:PORT`)
  return { host: m[1] ?? (m[2] || DEFAULT_HOST), port }
}

function positiveInteger(value: string, field: string, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(value)
  if (!/^\d+$/.test(value) || n < 1 || n > max) throw new ValidationError(field, `"${value}" must be a whole number from 1 to ${max}`)
  return n
}

export function parseCommandLine(argv: string[]): Command {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      listen: { type: 'string' },
      'data-dir': { type: 'string' },
      'jwt-secret-file': { type: 'string' },
      'no-network': { type: 'boolean' },
      'no-volume-hotplug': { type: 'boolean' },
      subnet: { type: 'string' },
      uplink: { type: 'string' },
      dns: { type: 'string', multiple: true },
      'capacity-download': { type: 'string' },
      'capacity-upload': { type: 'string' },
      'egress-port-explicit': { type: 'string' },
      'egress-port-transparent': { type: 'string' },
      'egress-allow-destination': { type: 'string', multiple: true },
      'egress-allow-port': { type: 'string', multiple: true },
      'egress-allow-host-service': { type: 'string', multiple: true },
      'allow-oci-layouts': { type: 'boolean' },
      'body-limit': { type: 'string' },
      'metrics-listen': { type: 'string' },
      log: { type: 'boolean' },
      subject: { type: 'string' },
      ttl: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  if (values.help) return { command: 'help' }
  const command = positionals[0]
  if (positionals.length !== 1 || (command !== 'serve' && command !== 'token')) return { command: 'usage' }
  const secretFile = values['jwt-secret-file'] ? { secretFile: values['jwt-secret-file'] } : {}

  if (command === 'token') {
    const ttlSeconds = values.ttl ? Math.floor(parseDuration(values.ttl, 'ttl') / 1000) : undefined
    return { command, ...secretFile, ...(values.subject ? { subject: values.subject } : {}), ...(ttlSeconds ? { ttlSeconds } : {}) }
  }

  const capacity = {
    ...(values['capacity-download'] ? { download: values['capacity-download'] } : {}),
    ...(values['capacity-upload'] ? { upload: values['capacity-upload'] } : {}),
  }
  const network: false | NetworkOptions = values['no-network']
    ? false
    : {
        ...(values.subnet ? { subnet: values.subnet } : {}),
        ...(values.uplink ? { uplink: values.uplink } : {}),
        ...(values.dns ? { dns: values.dns } : {}),
        ...(Object.keys(capacity).length ? { capacity } : {}),
      }
  const ports = {
    ...(values['egress-port-explicit'] ? { explicit: positiveInteger(values['egress-port-explicit'], 'egress-port-explicit', 65535) } : {}),
    ...(values['egress-port-transparent'] ? { transparent: positiveInteger(values['egress-port-transparent'], 'egress-port-transparent', 65535) } : {}),
  }
  const egress: NonNullable<HypemanOptions['egress']> = {
    ...(Object.keys(ports).length ? { ports } : {}),
    ...(values['egress-allow-destination'] ? { allowDestinations: values['egress-allow-destination'] } : {}),
    ...(values['egress-allow-port'] ? { allowPorts: values['egress-allow-port'].map((p) => positiveInteger(p, 'egress-allow-port', 65535)) } : {}),
    ...(values['egress-allow-host-service'] ? { allowHostServices: values['egress-allow-host-service'] } : {}),
  }
  const bodyLimit = values['body-limit'] === undefined ? undefined : positiveInteger(values['body-limit'], 'body-limit')
  const metricsListen = values['metrics-listen'] === undefined ? undefined : parseListen(values['metrics-listen'], 'metrics-listen')
  return {
    command,
    ...secretFile,
    listen: parseListen(values.listen ?? `${DEFAULT_HOST}:${DEFAULT_PORT}`),
    ...(metricsListen ? { metricsListen } : {}),
    hypeman: {
      ...(values['data-dir'] ? { dataDir: values['data-dir'] } : {}),
      network,
      ...(values['no-volume-hotplug'] ? { volumeHotplug: false } : {}),
      ...(Object.keys(egress).length ? { egress } : {}),
    },
    server: {
      logger: values.log === true,
      allowLocalLayouts: values['allow-oci-layouts'] === true,
      metrics: metricsListen !== undefined,
      ...(bodyLimit ? { bodyLimit } : {}),
      ...(capacity.download ? { networkCapacity: { downloadBitsPerSec: parseRate(capacity.download, 'capacity-download') } } : {}),
    },
  }
}
