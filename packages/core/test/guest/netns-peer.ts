/**
 * The far side of a guest's NIC in the network tests, run inside the test's namespace
 * (`ip netns exec <ns> node --import tsx netns-peer.ts '<json>'`): an HTTP and an HTTPS server that
 * tell the client its own address, and a DNS server that answers A queries for a fixed table.
 * Prints "ready" once all three listen; stops on SIGTERM.
 */
import { createSocket } from 'node:dgram'
import { readFileSync } from 'node:fs'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { createServer as createTlsServer } from 'node:https'

interface PeerOptions {
  ip: string
  httpPort: number
  httpsPort: number
  dnsPort: number
  certPath: string
  keyPath: string
  /** name → IPv4 */
  names: Record<string, string>
}

const opts = JSON.parse(process.argv[2]!) as PeerOptions

const answer = (scheme: string) => (req: IncomingMessage, res: ServerResponse) => {
  res.end(`${scheme} ${req.url} from the namespace, you are ${req.socket.remoteAddress}\n`)
}

/** A DNS response to `query`: the A record from the table, no records for other types, NXDOMAIN for other names. */
function dnsAnswer(query: Buffer, names: Record<string, string>): Buffer | undefined {
  if (query.length < 12) return undefined
  let off = 12
  const labels: string[] = []
  while (off < query.length && query[off] !== 0) {
    const len = query[off]!
    labels.push(query.toString('ascii', off + 1, off + 1 + len))
    off += 1 + len
  }
  const qEnd = off + 5 // zero label, qtype, qclass
  if (qEnd > query.length) return undefined
  const qtype = query.readUInt16BE(off + 1)
  const ip = names[labels.join('.').toLowerCase()]
  const header = Buffer.alloc(12)
  query.copy(header, 0, 0, 2) // id
  header.writeUInt16BE(0x8180 | (ip ? 0 : 3), 2) // response, recursion desired+available, NXDOMAIN for unknown names
  header.writeUInt16BE(1, 4)
  const a = ip && qtype === 1
  header.writeUInt16BE(a ? 1 : 0, 6)
  const parts = [header, query.subarray(12, qEnd)]
  if (a) {
    const rr = Buffer.alloc(16)
    rr.writeUInt16BE(0xc00c, 0)
    rr.writeUInt16BE(1, 2)
    rr.writeUInt16BE(1, 4)
    rr.writeUInt32BE(60, 6)
    rr.writeUInt16BE(4, 10)
    ip.split('.').forEach((o, i) => rr.writeUInt8(Number(o), 12 + i))
    parts.push(rr)
  }
  return Buffer.concat(parts)
}

const http = createServer(answer('http'))
const https = createTlsServer({ cert: readFileSync(opts.certPath), key: readFileSync(opts.keyPath) }, answer('https'))
const dns = createSocket('udp4')
dns.on('message', (msg, rinfo) => {
  const reply = dnsAnswer(msg, opts.names)
  if (reply) dns.send(reply, rinfo.port, rinfo.address)
})

await Promise.all([
  new Promise<void>((resolve) => http.listen(opts.httpPort, opts.ip, resolve)),
  new Promise<void>((resolve) => https.listen(opts.httpsPort, opts.ip, resolve)),
  new Promise<void>((resolve) => dns.bind(opts.dnsPort, opts.ip, resolve)),
])
process.stdout.write('ready\n')
process.on('SIGTERM', () => {
  http.close()
  https.close()
  dns.close()
  process.exit(0)
})
