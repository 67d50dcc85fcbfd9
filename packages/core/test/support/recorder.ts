/**
 * A pass-through HTTP recorder in front of a registry: an independent witness of which requests
 * our client made (method and path), e.g. that a second pull downloads no blob.
 */
import { createServer, request as httpRequest } from 'node:http'

export interface Recorder {
  host: string
  requests: string[]
  close(): Promise<void>
}

export async function startRecorder(target: string): Promise<Recorder> {
  const [targetHost, targetPort] = target.split(':') as [string, string]
  const requests: string[] = []
  const server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`)
    const upstream = httpRequest(
      { host: targetHost, port: Number(targetPort), method: req.method, path: req.url, headers: { ...req.headers, host: target } },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers)
        up.pipe(res)
      },
    )
    upstream.on('error', () => res.destroy())
    req.pipe(upstream)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const { port } = server.address() as { port: number }
  return {
    host: `127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections()
        server.close(() => r())
      }),
  }
}
