/**
 * code-runner: an HTTP service that runs a piece of code in a fresh VM and streams its output.
 *
 *   POST /run  {"language": "sh", "code": "echo hi", "timeoutMs": 5000, "credentials": {...}}
 *              → 200 text/event-stream: queued?, started, stdout/stderr..., exit (or error)
 *              → 400 JSON naming the bad field, 429 with Retry-After when the queue is full
 *   GET /healthz → {"running": 1, "queued": 0, ...}
 *
 * Configuration is the environment (see README.md). Run as root: VMs and their network need it.
 */
import { readFileSync } from 'node:fs'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { Hypeman } from '@hypeman-ts/core'
import { languages } from './languages.js'
import { RunQueue } from './queue.js'
import { runInVm, type Credential, type RunEvent, type RunRequest } from './runner.js'

const env = process.env
const num = (name: string, fallback: number) => {
  const n = env[name] ? Number(env[name]) : fallback
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a whole number, not ${env[name]}`)
  return n
}
const config = {
  host: env.HOST ?? '127.0.0.1',
  port: num('PORT', 8080),
  dataDir: env.CODE_RUNNER_DATA_DIR ?? '/var/lib/hypeman-ts/code-runner',
  maxRunning: num('CODE_RUNNER_MAX_RUNNING', 2),
  maxQueued: num('CODE_RUNNER_MAX_QUEUED', 10),
  retryAfterSeconds: num('CODE_RUNNER_RETRY_AFTER_S', 5),
  maxCodeBytes: num('CODE_RUNNER_MAX_CODE_BYTES', 64 * 1024),
  maxTimeoutMs: num('CODE_RUNNER_MAX_TIMEOUT_MS', 60_000),
  runner: { memory: env.CODE_RUNNER_VM_MEMORY ?? '256MB', disk: env.CODE_RUNNER_VM_DISK ?? '256MB', maxOutputBytes: num('CODE_RUNNER_MAX_OUTPUT_BYTES', 1024 * 1024) },
}

// The network is made on the first run that brings credentials: its own bridge, subnet and
// nftables tables, so it never meets another hypeman-ts user's on this host.
const bridge = env.CODE_RUNNER_BRIDGE ?? 'hmcode0'
const hm = await Hypeman.open({
  dataDir: config.dataDir,
  network: { bridge, table: `hypeman_${bridge}`, subnet: env.CODE_RUNNER_SUBNET ?? '10.250.0.0/24' },
  egress: {
    // An API with a private CA, and services on this host runs may reach ("10.250.0.1:8443").
    ...(env.CODE_RUNNER_UPSTREAM_CA ? { upstreamCa: readFileSync(env.CODE_RUNNER_UPSTREAM_CA, 'utf8') } : {}),
    ...(env.CODE_RUNNER_ALLOW_HOST_SERVICES ? { allowHostServices: env.CODE_RUNNER_ALLOW_HOST_SERVICES.split(',') } : {}),
  },
})
// Every VM here lives for one request: any found now is left over from a crash. Delete them.
for (const vm of await hm.instances.list()) {
  console.error(`[code-runner] deleting ${vm.name}, left over from an earlier run of this service`)
  await hm.instances.delete(vm.id)
}

const queue = new RunQueue(config.maxRunning, config.maxQueued)
const runs = new Set<{ abort: AbortController; done: Promise<void> }>()
let stopping = false

class BadInput extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`)
  }
}

/** The request body as a run, or BadInput naming the first field that is wrong. */
function parseRun(body: unknown): RunRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new BadInput('body', 'must be a JSON object')
  const { language, code, timeoutMs = 10_000, credentials = {} } = body as Record<string, unknown>
  if (typeof language !== 'string' || !Object.hasOwn(languages, language)) throw new BadInput('language', `must be one of ${Object.keys(languages).join(', ')}`)
  if (typeof code !== 'string' || code.length === 0) throw new BadInput('code', 'must be a non-empty string')
  if (Buffer.byteLength(code) > config.maxCodeBytes || code.includes('\0')) throw new BadInput('code', `must be at most ${config.maxCodeBytes} bytes, without NUL`)
  if (!Number.isInteger(timeoutMs) || (timeoutMs as number) < 1 || (timeoutMs as number) > config.maxTimeoutMs) throw new BadInput('timeoutMs', `must be a whole number of milliseconds from 1 to ${config.maxTimeoutMs}`)
  return { language: languages[language]!, code, timeoutMs: timeoutMs as number, credentials: parseCredentials(credentials) }
}

function parseCredentials(input: unknown): Record<string, Credential> {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw new BadInput('credentials', 'must be an object of env var name to { value, hosts, header?, format? }')
  const out: Record<string, Credential> = {}
  for (const [name, c] of Object.entries(input as Record<string, Record<string, unknown>>)) {
    const field = `credentials.${name}`
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new BadInput(field, 'must be an env var name')
    const { value, hosts, header = 'Authorization', format = 'Bearer ${value}' } = c ?? {}
    if (typeof value !== 'string' || value === '') throw new BadInput(`${field}.value`, 'must be a non-empty string')
    if (!Array.isArray(hosts) || hosts.length === 0 || !hosts.every((h) => typeof h === 'string' && h !== '')) throw new BadInput(`${field}.hosts`, 'must be a non-empty list of host names')
    if (typeof header !== 'string' || !/^[A-Za-z0-9-]+$/.test(header)) throw new BadInput(`${field}.header`, 'must be a header name')
    if (typeof format !== 'string' || !format.includes('${value}')) throw new BadInput(`${field}.format`, 'must contain ${value}')
    out[name] = { value, hosts, header, format }
  }
  return out
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body) + '\n')
}

async function readBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length
    // JSON escaping can make code up to 6 times larger; anything past that is refused unread.
    if (size > config.maxCodeBytes * 6 + 64 * 1024) throw new BadInput('code', `must be at most ${config.maxCodeBytes} bytes`)
    chunks.push(chunk)
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch {
    throw new BadInput('body', 'must be JSON')
  }
}

async function handleRun(req: IncomingMessage, res: ServerResponse): Promise<void> {
  // Ends the run when the client goes away (or the server shuts down: see shutdown()).
  const abort = new AbortController()
  res.on('close', () => abort.abort(new Error('the client went away')))
  let run: RunRequest
  try {
    run = parseRun(await readBody(req))
  } catch (err) {
    if (!(err instanceof BadInput)) throw err
    return sendJson(res, 400, { error: 'invalid_input', field: err.field, message: err.message })
  }
  if (abort.signal.aborted) return
  // A kept-alive connection can still send a request after the shutdown began.
  if (stopping) return sendJson(res, 503, { error: 'shutting_down', message: 'the server is shutting down' })
  const turn = queue.enter(abort.signal)
  if (!turn) {
    return sendJson(res, 429, { error: 'queue_full', message: `${queue.running} running and ${queue.queued} queued; try again later` }, { 'retry-after': String(config.retryAfterSeconds) })
  }

  // Server-sent events: each chunk of output as it comes, as a JSON string (newlines and all).
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' })
  const send = (event: string, data: unknown) => {
    if (!res.destroyed && !res.writableEnded) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`)
  }
  const emit = (e: RunEvent) => {
    if (e.type === 'stdout' || e.type === 'stderr') return send(e.type, e.data)
    const { type, ...data } = e
    send(type, data)
  }
  const fail = (err: unknown) => {
    const e = (abort.signal.aborted ? abort.signal.reason : err) as { code?: string; message?: string; step?: string }
    if (!abort.signal.aborted) console.error(`[code-runner] run failed: ${e.message ?? String(err)}`)
    send('error', { error: e.code ?? 'internal', message: e.message ?? String(err), ...(e.step ? { step: e.step } : {}) })
  }
  // Waiting runs are all behind running ones: a non-empty queue means this run is its last.
  if (queue.queued > 0) send('queued', { position: queue.queued })

  const done = (async () => {
    try {
      await turn
    } catch (err) {
      return fail(err) // left the queue (client gone, or shutdown): it never ran
    }
    try {
      await runInVm(hm, run, config.runner, emit, abort.signal)
    } catch (err) {
      fail(err)
    } finally {
      queue.done()
    }
  })()
  const entry = { abort, done }
  runs.add(entry)
  await done
  runs.delete(entry)
  res.end()
}

const server = createServer((req, res) => {
  const path = new URL(req.url ?? '/', 'http://x').pathname
  let handling: Promise<void> | void
  if (req.method === 'POST' && path === '/run') handling = handleRun(req, res)
  else if (req.method === 'GET' && path === '/healthz') handling = sendJson(res, 200, { running: queue.running, queued: queue.queued, maxRunning: queue.maxRunning, maxQueued: queue.maxQueued })
  else handling = sendJson(res, 404, { error: 'not_found', message: 'POST /run or GET /healthz' })
  Promise.resolve(handling).catch((err: Error) => {
    console.error('[code-runner] request failed:', err)
    if (!res.headersSent) sendJson(res, 500, { error: 'internal', message: err.message })
    else res.end()
  })
})

/** SIGTERM/SIGINT: stop accepting, end every run (each deletes its VM), let go of the data dir, exit. */
async function shutdown(signal: string): Promise<void> {
  console.error(`[code-runner] ${signal}: stopping ${runs.size} run(s)`)
  server.close()
  for (const run of runs) run.abort.abort(Object.assign(new Error('the server is shutting down'), { code: 'shutting_down' }))
  await Promise.all([...runs].map((r) => r.done))
  server.closeAllConnections()
  await hm.close()
  console.error('[code-runner] stopped')
  process.exit(0)
}
// A signal can arrive twice (a terminal or systemd signals the whole process group, and tsx
// passes it on too): the first one starts the shutdown, the others must not cut it short.
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    if (stopping) return
    stopping = true
    void shutdown(signal)
  })
}

server.listen(config.port, config.host, () => {
  const { address, port } = server.address() as { address: string; port: number }
  console.log(`code-runner listening on http://${address}:${port} (languages: ${Object.keys(languages).join(', ')})`)
})
