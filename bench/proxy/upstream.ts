/**
 * The benchmark's upstream: one HTTPS server (HTTP/1.1, keep-alive) shared by every target.
 * GET /small answers 64 bytes, GET /1m one MiB. With `?auth=1` it answers 403 unless the
 * request carries the injected credential, so a proxied run proves injection on every request.
 * Prints {"port":N} once listening.
 */
import { readFileSync } from 'node:fs'
import { createServer } from 'node:https'

const [keyPath, certPath, secret] = process.argv.slice(2) as [string, string, string]
const expected = `Bearer ${secret}`
const small = Buffer.from(`${'{"ok":true,"pad":"'.padEnd(62, 'x')}"}`)
const big = Buffer.alloc(1024 * 1024, 'a')
const server = createServer({ key: readFileSync(keyPath), cert: readFileSync(certPath), keepAliveTimeout: 120_000 }, (req, res) => {
  const url = req.url ?? ''
  if (url.endsWith('?auth=1') && req.headers.authorization !== expected) {
    res.writeHead(403, { 'content-length': 0 }).end()
    return
  }
  const body = url.startsWith('/1m') ? big : small
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length })
  res.end(body)
})
server.keepAliveTimeout = 120_000
server.listen(0, '127.0.0.1', () => {
  const a = server.address()
  process.stdout.write(`${JSON.stringify({ port: typeof a === 'object' && a ? a.port : 0 })}\n`)
})
process.on('SIGTERM', () => process.exit(0))
