#!/usr/bin/env node
// Run inside a test namespace (through nsenter) by the netsetup tests. Plain JS so it starts fast.
//
//   serve <tag> <host> <tcp|udp>:<port>[,...]   answer every TCP connection / UDP datagram with
//                                               "<tag>:<port> from <remote address>"; prints READY
//   tcp <host> <port> [bind] [timeoutMs]        connect, read the first line; prints one JSON line
//   udp <host> <port> [bind] [timeoutMs]        send one datagram, wait for a reply; one JSON line
import dgram from 'node:dgram'
import net from 'node:net'

const [cmd, ...args] = process.argv.slice(2)
const print = (o) => process.stdout.write(`${JSON.stringify(o)}\n`)

if (cmd === 'serve') {
  const [tag, host, specs] = args
  const ready = []
  for (const spec of specs.split(',')) {
    const [proto, p] = spec.split(':')
    const port = Number(p)
    const hello = (remote) => `${tag}:${port} from ${remote.replace(/^::ffff:/, '')}\n`
    if (proto === 'tcp') {
      const srv = net.createServer((s) => {
        s.on('error', () => {})
        s.end(hello(s.remoteAddress ?? '?'))
      })
      ready.push(new Promise((r) => srv.listen({ host, port, ipv6Only: false }, r)))
    } else {
      const sock = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4')
      sock.on('message', (_m, rinfo) => sock.send(hello(rinfo.address), rinfo.port, rinfo.address))
      ready.push(new Promise((r) => sock.bind(port, host, r)))
    }
  }
  await Promise.all(ready)
  process.stdout.write('READY\n')
} else if (cmd === 'tcp') {
  const [host, port, bind, timeout] = args
  const timeoutMs = Number(timeout || 1500)
  const s = net.connect({ host, port: Number(port), ...(bind && bind !== '-' ? { localAddress: bind } : {}) })
  let data = ''
  const timer = setTimeout(() => {
    print({ result: 'timeout' })
    process.exit(0)
  }, timeoutMs)
  s.on('data', (d) => {
    data += d
    if (data.includes('\n')) {
      clearTimeout(timer)
      print({ result: 'ok', data: data.trim() })
      process.exit(0)
    }
  })
  s.on('error', (e) => {
    clearTimeout(timer)
    print({ result: 'error', code: e.code })
    process.exit(0)
  })
  s.on('end', () => {
    clearTimeout(timer)
    print(data ? { result: 'ok', data: data.trim() } : { result: 'closed' })
    process.exit(0)
  })
} else if (cmd === 'udp') {
  const [host, port, bind, timeout] = args
  const timeoutMs = Number(timeout || 1500)
  const sock = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4')
  const timer = setTimeout(() => {
    print({ result: 'timeout' })
    process.exit(0)
  }, timeoutMs)
  sock.on('error', (e) => {
    clearTimeout(timer)
    print({ result: 'error', code: e.code })
    process.exit(0)
  })
  sock.on('message', (m) => {
    clearTimeout(timer)
    print({ result: 'ok', data: String(m).trim() })
    process.exit(0)
  })
  sock.bind({ port: 0, ...(bind && bind !== '-' ? { address: bind } : {}) }, () => {
    sock.connect(Number(port), host, () => sock.send('ping'))
  })
} else {
  process.stderr.write(`unknown command ${cmd}\n`)
  process.exit(2)
}
