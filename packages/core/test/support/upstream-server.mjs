// A stand-in for the internet, run inside the server namespace of a network test: HTTPS on 443
// and 8443 (certificate for api.test/other.test from the test's own CA) and HTTP on 80 and 8080
// echo each request as JSON; /bytes?n=N streams N bytes; POST /sink counts what it receives;
// TCP 2222 greets.
import { readFileSync } from 'node:fs'
import { createServer as createHttp } from 'node:http'
import { createServer as createHttps } from 'node:https'
import { createServer as createTcp } from 'node:net'

const [certFile, keyFile] = process.argv.slice(2)

function handler(req, res) {
  const url = new URL(req.url, 'http://x')
  if (url.pathname === '/bytes') {
    const n = Number(url.searchParams.get('n') ?? 0)
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': n })
    const chunk = Buffer.alloc(64 * 1024, 120)
    let left = n
    const pump = () => {
      while (left > 0) {
        const part = left >= chunk.length ? chunk : chunk.subarray(0, left)
        left -= part.length
        if (!res.write(part)) return res.once('drain', pump)
      }
      res.end()
    }
    return pump()
  }
  let received = 0
  req.on('data', (d) => (received += d.length))
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, remote: req.socket.remoteAddress, received, tls: !!req.socket.encrypted }))
  })
}

for (const port of [443, 8443]) createHttps({ cert: readFileSync(certFile), key: readFileSync(keyFile) }, handler).listen(port, '0.0.0.0')
for (const port of [80, 8080]) createHttp(handler).listen(port, '0.0.0.0')
createTcp((s) => s.end('tcp-2222-hello\n')).listen(2222, '0.0.0.0', () => console.log('upstream ready'))
