/**
 * Soak: 1,000 concurrent guests for 60 s, through a proxy in a process of its own, to a
 * loopback upstream: keep-alive clients, a new connection (full handshake) per request, slow
 * readers (the proxy must hold back, not buffer), slow writers (an upload trickling in), half
 * over CONNECT and half over the transparent listener. What is asserted are counts, never
 * timings: every kind of guest gets work done; no request fails except by a limit's own
 * refusal (counted by the proxy); the proxy's RSS stays under a bound (and is reported); and
 * once the guests are gone, the proxy's open files come back to where they started.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { readdir, readFile, rm, mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TLSSocket } from 'node:tls'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { guestTls } from './support/guest.js'
import { SECRET } from './support/harness.js'
import { makePki } from './support/pki.js'

const DURATION_MS = 60_000
const GUESTS = { keepalive: 500, newconn: 250, slowReader: 150, slowWriter: 100 } as const
type Kind = keyof typeof GUESTS
/** Generous, but far below what buffering whole responses would take (150 slow readers × 1 MiB, per pass). */
const RSS_BOUND_MIB = 512
const UPLOAD = 16 * 1024
const SLOW_BODY = 1024 * 1024

const root = fileURLToPath(new URL('../../..', import.meta.url))
const support = (file: string) => fileURLToPath(new URL(`./support/${file}`, import.meta.url))

/** A TypeScript support script in a process of its own, and the JSON lines it prints. */
interface Child {
  process: ChildProcess
  nextLine(ms?: number): Promise<string>
  stop(): Promise<void>
}

function startChild(file: string, args: string[]): Child {
  const proc = spawn(process.execPath, ['--import', 'tsx', support(file), ...args], { cwd: root, stdio: ['pipe', 'pipe', 'inherit'] })
  const lines: string[] = []
  let waiting: ((line: string) => void) | undefined
  let out = ''
  proc.stdout!.on('data', (d: Buffer) => {
    out += d.toString()
    let nl: number
    while ((nl = out.indexOf('\n')) >= 0) {
      const line = out.slice(0, nl)
      out = out.slice(nl + 1)
      if (waiting) waiting(line)
      else lines.push(line)
    }
  })
  return {
    process: proc,
    nextLine: (ms = 30_000) => {
      const queued = lines.shift()
      if (queued !== undefined) return Promise.resolve(queued)
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${file} said nothing in ${ms} ms`)), ms)
        waiting = (line) => {
          clearTimeout(timer)
          waiting = undefined
          resolve(line)
        }
      })
    },
    stop: async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) return
      const exited = new Promise((r) => proc.once('exit', r))
      proc.kill('SIGTERM')
      await exited
    },
  }
}

let dir: string
let upstream: Child
let proxy: Child
let upstreamPort: number
let info: { port: number; transparentPort: number; caPem: string }

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-egress-soak-'))
  const pki = await makePki(dir)
  // Three processes: guests here, the upstream and the proxy each in their own, so that the
  // proxy's memory and open files are its own and no event loop starves another's.
  upstream = startChild('upstream-process.ts', [pki.good.cert, pki.good.key])
  upstreamPort = (JSON.parse(await upstream.nextLine()) as { port: number }).port
  const options = {
    stateDir: join(dir, 'state'),
    listen: '127.0.0.1:0',
    transparentListen: '127.0.0.1:0',
    transparentPorts: { https: upstreamPort },
    upstreamCa: pki.caPem,
    allowHostServices: [`127.0.0.1:${upstreamPort}`],
    // Pooled upstream connections close soon after the run, so the open-file count can settle.
    limits: { upstreamIdleTimeout: '2s' },
  }
  proxy = startChild('proxy-process.ts', [JSON.stringify(options)])
  info = JSON.parse(await proxy.nextLine()) as typeof info
})

afterAll(async () => {
  await proxy?.stop()
  await upstream?.stop()
  if (dir) await rm(dir, { recursive: true, force: true })
})

async function proxyMetric(name: string, label: string): Promise<number> {
  proxy.process.stdin!.write('metrics\n')
  const { metrics } = JSON.parse(await proxy.nextLine()) as { metrics: string }
  const line = metrics.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(label))
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0
}

const openFiles = async (pid: number) => (await readdir(`/proc/${pid}/fd`)).length
const rssMiB = async (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${pid}/status`, 'utf8'))![1]) / 1024
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * Reads one response with a Content-Length, keeping its body only when `keep`. With `slowMs`
 * the guest takes one buffered piece per tick, so the proxy sees a reader slower than the
 * upstream and must stop reading upstream rather than buffer.
 */
function readResponse(socket: TLSSocket, opts: { slowMs?: number; keep?: boolean } = {}): Promise<{ status: number; bytes: number; body: string }> {
  return new Promise((resolve, reject) => {
    let head: Buffer = Buffer.alloc(0)
    let status = 0
    let left = -1
    let bytes = 0
    let body = ''
    let done = false
    const finish = (err?: Error) => {
      if (done) return
      done = true
      clearInterval(ticker)
      socket.removeListener('readable', pull)
      socket.removeListener('close', onClose)
      if (err) reject(err)
      else resolve({ status, bytes, body })
    }
    const onChunk = (piece: Buffer) => {
      let chunk = piece
      if (left < 0) {
        head = Buffer.concat([head, chunk])
        const end = head.indexOf('\r\n\r\n')
        if (end < 0) return
        const text = head.subarray(0, end).toString('latin1')
        status = Number(text.slice(9, 12))
        const m = /\r\ncontent-length: *(\d+)/i.exec(text)
        if (!m) return finish(new Error(`no content-length: ${text.split('\r\n')[0]}`))
        left = Number(m[1])
        chunk = head.subarray(end + 4)
      }
      bytes += chunk.length
      left -= chunk.length
      if (opts.keep) body += chunk.toString('latin1')
      if (left < 0) finish(new Error('more bytes than the content-length'))
      else if (left === 0) finish()
    }
    const pull = () => {
      let chunk: Buffer | null
      while (!done && (chunk = socket.read() as Buffer | null) !== null) {
        onChunk(chunk)
        if (opts.slowMs) return
      }
    }
    const onClose = () => finish(new Error(`closed mid-response (status ${status || 'none'})`))
    const ticker = opts.slowMs ? setInterval(pull, opts.slowMs) : undefined
    if (!opts.slowMs) socket.on('readable', pull)
    socket.once('close', onClose)
    pull()
  })
}

describe('soak: 1,000 concurrent guests for 60 s', { timeout: 120_000 }, () => {
  it('serves them all, refuses only by its limits, stays within its memory bound and leaks no file', async () => {
    const pid = proxy.process.pid!
    const filesBefore = await openFiles(pid)
    const rssBefore = await rssMiB(pid)
    const target = `api.test:${upstreamPort}`
    const deadline = Date.now() + DURATION_MS
    const done: Record<Kind, number> = { keepalive: 0, newconn: 0, slowReader: 0, slowWriter: 0 }
    const failures: string[] = []
    const open = new Set<TLSSocket>()

    // Slow readers go to another name of the same upstream, so to their own pool of upstream
    // connections. Node's HTTP server, when its socket was paused by backpressure (which a slow
    // reader causes, as the proxy stops reading), can fail the next request on that connection
    // (clientError HPE_PAUSED) or never read it: a POST cannot be replayed, so shared with
    // slow writers that would be the fixture's failure, not the proxy's.
    const readerTarget = `other.test:${upstreamPort}`
    const connect = async (i: number, to = target) => {
      const socket = await guestTls({ port: i % 2 === 0 ? info.port : info.transparentPort, ca: info.caPem, target: to, via: i % 2 === 0 ? 'connect' : 'transparent' })
      open.add(socket)
      socket.once('close', () => open.delete(socket))
      return socket
    }
    const get = (path: string, close = false) => `GET ${path} HTTP/1.1\r\nHost: ${target}\r\n${close ? 'Connection: close\r\n' : ''}\r\n`

    /**
     * One guest: requests until the deadline; a failure is recorded and the guest reconnects.
     * Paced, because guests and upstream share this process's one event loop: flat out, they
     * would starve the upstream's handshakes past the proxy's connect timeout, and the soak
     * would measure this process rather than the proxy.
     */
    const guest = async (kind: Kind, i: number) => {
      let socket: TLSSocket | undefined
      // Staggered start, over the first 10 s, so 1,000 handshakes do not land at once.
      await sleep((i * 37) % 10_000)
      while (Date.now() < deadline) {
        try {
          socket ??= await connect(i, kind === 'slowReader' ? readerTarget : target)
          if (kind === 'keepalive') {
            socket.write(get('/bytes?n=256'))
            const r = await readResponse(socket)
            if (r.status !== 200 || r.bytes !== 256) throw new Error(`keepalive: ${r.status}, ${r.bytes} bytes`)
            await sleep(300 + (i % 5) * 50)
          } else if (kind === 'newconn') {
            socket.write(get('/bytes?n=64', true))
            const r = await readResponse(socket)
            if (r.status !== 200) throw new Error(`newconn: ${r.status}`)
            socket.destroy()
            socket = undefined
            await sleep(2000 + (i % 10) * 100)
          } else if (kind === 'slowReader') {
            socket.write(`GET /stream?n=${SLOW_BODY} HTTP/1.1\r\nHost: ${readerTarget}\r\n\r\n`)
            const r = await readResponse(socket, { slowMs: 50 })
            if (r.status !== 200 || r.bytes !== SLOW_BODY) throw new Error(`slow reader: ${r.status}, ${r.bytes} bytes`)
          } else {
            socket.write(`POST /echo HTTP/1.1\r\nHost: ${target}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${UPLOAD}\r\n\r\n`)
            const piece = Buffer.alloc(1024, 'u')
            for (let sent = 0; sent < UPLOAD; sent += piece.length) {
              socket.write(piece)
              await sleep(100)
            }
            const r = await readResponse(socket, { keep: true })
            // The echo proves the whole upload arrived and the credential was put on it.
            if (r.status !== 200 || !r.body.includes(`"bodyBytes":${UPLOAD}`) || !r.body.includes(`Bearer ${SECRET}`)) throw new Error(`slow writer: ${r.status} ${r.body.slice(0, 120)}`)
          }
          done[kind]++
        } catch (err) {
          failures.push(`${kind} #${i} at ${Math.round(DURATION_MS - (deadline - Date.now()))} ms: ${(err as Error).message}`)
          socket?.destroy()
          socket = undefined
          await sleep(200)
        }
      }
      socket?.destroy()
    }

    const rss: number[] = []
    const sampler = setInterval(() => void rssMiB(pid).then((v) => rss.push(v), () => {}), 2000)
    const guests = (Object.keys(GUESTS) as Kind[]).flatMap((kind) => Array.from({ length: GUESTS[kind] }, (_, i) => guest(kind, i)))
    await Promise.all(guests)
    clearInterval(sampler)
    rss.push(await rssMiB(pid))
    for (const s of open) s.destroy()

    // Connections the proxy refused for a limit (a guest sees a reset) are the only failures allowed.
    const refused = await proxyMetric('hypeman_egress_denied_total', 'reason="too_many_connections"')
    // Back to where it started once guests and idle upstream connections are gone (bounded wait).
    let filesAfter = await openFiles(pid)
    for (let i = 0; i < 40 && filesAfter > filesBefore + 4; i++) {
      await sleep(250)
      filesAfter = await openFiles(pid)
    }
    const maxRss = Math.max(...rss)
    console.log(
      `soak: ${JSON.stringify(done)} exchanges; ${failures.length} failures, ${refused} connections refused by limits; ` +
        `proxy RSS ${rssBefore.toFixed(0)} MiB before, max ${maxRss.toFixed(0)} MiB, last ${rss.at(-1)!.toFixed(0)} MiB; open files ${filesBefore} before, ${filesAfter} after`,
    )

    expect(failures.length, failures.slice(0, 20).join('\n')).toBeLessThanOrEqual(refused)
    // Every kind of guest got real work done (a 60 s run does hundreds of each; these are floors).
    expect(done.keepalive).toBeGreaterThan(GUESTS.keepalive * 10)
    expect(done.newconn).toBeGreaterThan(GUESTS.newconn * 5)
    expect(done.slowReader).toBeGreaterThan(GUESTS.slowReader)
    expect(done.slowWriter).toBeGreaterThan(GUESTS.slowWriter * 5)
    expect(maxRss).toBeLessThan(RSS_BOUND_MIB)
    expect(filesAfter).toBeLessThanOrEqual(filesBefore + 4)
  })
})
