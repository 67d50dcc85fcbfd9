/**
 * Clients that are not ours, driven the way users drive them: curl (through -x, or with
 * --connect-to as a firewall-redirected connection would arrive), Python's urllib, and Node's
 * own https and fetch.
 */
import { request as httpRequest } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { connect as tlsConnect } from 'node:tls'
import { run } from '@hypeman-ts/common'

export interface CurlResult {
  status: number
  body: string
  exitCode: number
  stderr: string
}

/** Runs curl and returns the status and body; never throws for a curl failure (exitCode says). */
export async function curl(args: string[], opts: { timeoutMs?: number } = {}): Promise<CurlResult> {
  const marker = '\n__STATUS__:'
  try {
    const r = await run('curl', ['-sS', '--max-time', String((opts.timeoutMs ?? 15_000) / 1000), '-w', `${marker}%{http_code}`, ...args], { timeoutMs: (opts.timeoutMs ?? 15_000) + 5000 })
    const at = r.stdout.lastIndexOf(marker)
    return { status: Number(r.stdout.slice(at + marker.length)), body: r.stdout.slice(0, at), exitCode: 0, stderr: r.stderr }
  } catch (err) {
    const e = err as { exitCode?: number; stderr?: string; message: string }
    return { status: 0, body: '', exitCode: e.exitCode ?? -1, stderr: e.stderr ?? e.message }
  }
}

/** Python's urllib through the proxy (HTTPS_PROXY semantics), trusting `caFile`. */
export async function pythonGet(proxyUrl: string, url: string, caFile: string, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  const script = `
import json, ssl, sys, urllib.request, urllib.error
proxy, url, ca, headers = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
ctx = ssl.create_default_context(cafile=ca)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy, "https": proxy}), urllib.request.HTTPSHandler(context=ctx))
req = urllib.request.Request(url, headers=headers)
try:
    with opener.open(req, timeout=15) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode()}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode()}))
`
  const r = await run('python3', ['-c', script, proxyUrl, url, caFile, JSON.stringify(headers)], { timeoutMs: 30_000 })
  return JSON.parse(r.stdout) as { status: number; body: string }
}

/** Node's https through a CONNECT tunnel made with Node's http, as a hand-rolled HTTPS_PROXY agent does. */
export function nodeHttpsViaConnect(proxy: { host: string; port: number }, target: { host: string; port: number; path: string }, ca: string, headers: Record<string, string> = {}, localAddress?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const connectReq = httpRequest({ host: proxy.host, port: proxy.port, method: 'CONNECT', path: `${target.host}:${target.port}`, ...(localAddress ? { localAddress } : {}) })
    connectReq.on('connect', (res, socket) => {
      if (res.statusCode !== 200) {
        socket.destroy()
        resolve({ status: res.statusCode ?? 0, body: '' })
        return
      }
      const req = httpsRequest({
        host: target.host,
        port: target.port,
        path: target.path,
        headers,
        ca,
        createConnection: () => tlsConnect({ socket, servername: target.host, ca }),
      })
      req.on('response', (r) => {
        let body = ''
        r.setEncoding('utf8')
        r.on('data', (d: string) => (body += d))
        r.on('end', () => resolve({ status: r.statusCode ?? 0, body }))
      })
      req.on('error', reject)
      req.end()
    })
    connectReq.on('error', reject)
    connectReq.end()
  })
}
