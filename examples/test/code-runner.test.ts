/**
 * examples/code-runner as its README says: installed from the packed tarballs (`npm install` in
 * a copy outside the repository), started with `npm start`, and used over real HTTP: a streamed
 * run, a timeout, a 429 and a client that leaves mid-run, a credential brokered to a local HTTPS
 * API, bad input, and a SIGTERM with a run in flight. After it: no instance, TAP or qemu left.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { request, type IncomingMessage } from 'node:http'
import { createServer, type Server } from 'node:https'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Hypeman } from '@hypeman-ts/core'
import { linkNames } from '@hypeman-ts/netsetup/testing'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import { installExample, type InstalledExample } from './support/install.js'

const SECRET = 'sk-code-runner-secret-4d1e'
// A network of its own, so nothing here meets another hypeman-ts user's bridge or tables.
const octet = 100 + Math.floor(Math.random() * 150)
const BRIDGE = `hmcrt${octet}`
const SUBNET = `10.231.${octet}.0/24`
const GATEWAY = `10.231.${octet}.1`

let installed: InstalledExample
let work: string
let dataDir: string
let app: ChildProcess
let base: string
let appLog = ''
let api: Server
let apiPort: number
const apiSaw: (string | undefined)[] = []
const instanceIds = new Set<string>()

interface Event {
  event: string
  data: any
}

/**
 * The events of a POST /run response, read as they arrive. Not an async generator: leaving a
 * `for await` early would close it, and with it the response.
 */
class EventStream {
  private readonly queue: Event[] = []
  private wake: (() => void) | undefined
  private ended = false
  private buf = ''

  constructor(readonly res: IncomingMessage) {
    res.setEncoding('utf8')
    res.on('data', (chunk: string) => {
      this.buf += chunk
      for (let end = this.buf.indexOf('\n\n'); end >= 0; end = this.buf.indexOf('\n\n')) {
        const block = this.buf.slice(0, end).split('\n')
        this.buf = this.buf.slice(end + 2)
        const event = block.find((l) => l.startsWith('event: '))!.slice(7)
        const data = JSON.parse(block.find((l) => l.startsWith('data: '))!.slice(6))
        if (event === 'started') instanceIds.add(data.instance)
        this.queue.push({ event, data })
      }
      this.wake?.()
    })
    const end = () => ((this.ended = true), this.wake?.())
    res.on('end', end)
    res.on('error', end)
    res.on('close', end)
  }

  /** The next event, or undefined once the response ended. */
  async next(): Promise<Event | undefined> {
    while (this.queue.length === 0 && !this.ended) await new Promise<void>((r) => (this.wake = r))
    return this.queue.shift()
  }

  /** Events up to and including the first that `want` accepts. */
  async until(want: (e: Event) => boolean): Promise<Event[]> {
    const seen: Event[] = []
    for (let e = await this.next(); e; e = await this.next()) {
      seen.push(e)
      if (want(e)) return seen
    }
    throw new Error(`the stream ended before the event wanted: ${JSON.stringify(seen)}`)
  }

  /** The rest of the events, until the response ends. */
  async rest(): Promise<Event[]> {
    const out: Event[] = []
    for (let e = await this.next(); e; e = await this.next()) out.push(e)
    return out
  }
}

/** POST /run; `cancel` is a client that goes away. */
function postRun(body: unknown): Promise<{ res: IncomingMessage; events: EventStream; cancel(): void }> {
  return new Promise((resolve, reject) => {
    const req = request(`${base}/run`, { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      resolve({ res, events: new EventStream(res), cancel: () => req.destroy() })
    })
    req.on('error', reject)
    req.end(typeof body === 'string' ? body : JSON.stringify(body))
  })
}

async function getJson(path: string): Promise<{ status: number; headers: IncomingMessage['headers']; body: any }> {
  const res = await fetch(`${base}${path}`)
  return { status: res.status, headers: Object.fromEntries(res.headers), body: await res.json() }
}

async function postJson(body: unknown): Promise<{ status: number; headers: Record<string, string>; body: any }> {
  const res = await fetch(`${base}/run`, { method: 'POST', body: typeof body === 'string' ? body : JSON.stringify(body) })
  return { status: res.status, headers: Object.fromEntries(res.headers), body: await res.json() }
}

const instancesLeft = () => readdir(join(dataDir, 'instances')).catch(() => [])
/**
 * The QEMUs of the app's runs: every QEMU of its data dir but the warm VMMs waiting for the next
 * run (core's pool keeps one spawned ahead; a waiting one's slot dir exists, an adopted one's not).
 */
const qemuOfApp = () => {
  let pids: string[]
  try {
    pids = execFileSync('pgrep', ['-f', `qemu-system.*${dataDir}`], { encoding: 'utf8' }).trim().split('\n')
  } catch {
    return '' // pgrep: no process matched
  }
  const waiting = (pid: string) => {
    let cmdline = ''
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8')
    } catch {
      return true // gone meanwhile
    }
    const slot = /guest=warm-([0-9a-f]+)/.exec(cmdline)
    return slot !== null && existsSync(join(dataDir, 'warm', slot[1]!))
  }
  return pids.filter((pid) => !waiting(pid)).join('\n')
}
const linkExists = (name: string) => existsSync(`/sys/class/net/${name}`)
const groupAlive = (pid: number) => {
  try {
    process.kill(-pid, 0)
    return true
  } catch {
    return false
  }
}

async function waitFor(what: string, check: () => Promise<boolean> | boolean, ms = 60_000): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end; ) {
    if (await check()) return
    await new Promise((r) => setTimeout(r, 250))
  }
  throw new Error(`timed out waiting for ${what}`)
}

beforeAll(async () => {
  installed = await installExample('code-runner', inject('packsDir'))
  work = await mkdtemp(join(tmpdir(), 'hm-code-runner-'))
  dataDir = join(work, 'data')

  // The stand-in API: HTTPS with its own CA, on this host, answering on the bridge's gateway
  // address (which VMs reach only through the egress proxy). It never echoes what it got.
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: work, stdio: 'ignore' })
  ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=code-runner test CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign')
  ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'api.key', '-out', 'api.csr', '-subj', '/CN=api')
  await writeFile(join(work, 'api.ext'), `subjectAltName=IP:${GATEWAY}\n`)
  ssl('x509', '-req', '-in', 'api.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'api.pem', '-days', '1', '-extfile', 'api.ext')
  api = createServer({ key: readFileSync(join(work, 'api.key')), cert: readFileSync(join(work, 'api.pem')) }, (req, res) => {
    apiSaw.push(req.headers.authorization)
    res.end(req.headers.authorization === `Bearer ${SECRET}` ? 'api: authorized\n' : 'api: denied\n')
  })
  // The gateway address exists only once the app made its bridge: listen on all addresses.
  await new Promise<void>((r) => api.listen(0, '0.0.0.0', r))
  apiPort = (api.address() as { port: number }).port

  // As the README says: `npm start` in the app's folder. Its own process group, as a terminal or
  // systemd gives it, so a signal reaches npm, the shell and the app together.
  app = spawn('npm', ['start'], {
    cwd: installed.dir,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      PORT: '0',
      CODE_RUNNER_DATA_DIR: dataDir,
      CODE_RUNNER_MAX_RUNNING: '1',
      CODE_RUNNER_MAX_QUEUED: '0',
      CODE_RUNNER_MAX_OUTPUT_BYTES: '65536',
      CODE_RUNNER_BRIDGE: BRIDGE,
      CODE_RUNNER_SUBNET: SUBNET,
      CODE_RUNNER_UPSTREAM_CA: join(work, 'ca.pem'),
      CODE_RUNNER_ALLOW_HOST_SERVICES: `${GATEWAY}:${apiPort}`,
      // A language whose image cannot be had: its runs fail at create.
      CODE_RUNNER_IMAGE_PERL: `oci:${work}/no-such-layout:latest`,
    },
  })
  app.stdout!.on('data', (d) => (appLog += d))
  app.stderr!.on('data', (d) => (appLog += d))
  await waitFor('the app to listen', () => /listening on (http:\S+)/.test(appLog), 120_000)
  base = /listening on (http:\S+)/.exec(appLog)![1]!
}, 600_000)

afterAll(async () => {
  if (app?.pid && groupAlive(app.pid)) process.kill(-app.pid, 'SIGKILL')
  api?.close()
  // The bridge and nftables tables the app made on its first networked run.
  if (dataDir && existsSync(join(dataDir, 'network', 'network.json'))) {
    const hm = await Hypeman.open({ dataDir, network: { bridge: BRIDGE, subnet: SUBNET, table: `hypeman_${BRIDGE}` } })
    await hm.close({ removeNetwork: true })
  }
  if (work) await rm(work, { recursive: true, force: true })
  await installed?.remove()
})

describe('examples/code-runner', () => {
  it('answers bad input with 400 naming the field, before any VM', async () => {
    const cases: [unknown, string][] = [
      [{ language: 'cobol', code: 'x' }, 'language'],
      [{ language: 'sh', code: 'x'.repeat(64 * 1024 + 1) }, 'code'],
      [{ language: 'sh', code: '' }, 'code'],
      [{ language: 'sh', code: 'true', timeoutMs: 0 }, 'timeoutMs'],
      [{ language: 'sh', code: 'true', timeoutMs: 3_600_000 }, 'timeoutMs'],
      [{ language: 'sh', code: 'true', credentials: { K: { value: 'v', hosts: ['a.test'], format: 'no placeholder' } } }, 'credentials.K.format'],
      [{ language: 'sh', code: 'true', credentials: { K: { value: 'v', hosts: [] } } }, 'credentials.K.hosts'],
      ['{not json', 'body'],
    ]
    for (const [body, field] of cases) {
      const r = await postJson(body)
      expect(r.status, field).toBe(400)
      expect(r.body).toMatchObject({ error: 'invalid_input', field })
    }
    expect(await instancesLeft()).toEqual([])
  })

  it('a create that fails is an error event naming the step, and leaves nothing', async () => {
    const { res, events } = await postRun({ language: 'perl', code: 'print "hi"' })
    expect(res.statusCode).toBe(200)
    const got = await events.rest()
    expect(got).toHaveLength(1)
    expect(got[0]).toMatchObject({ event: 'error', data: { step: 'image' } })
    expect(await instancesLeft()).toEqual([])
    expect((await getJson('/healthz')).body).toMatchObject({ running: 0, queued: 0 })
  })

  it('streams stdout and stderr as the code writes them, then the exit code, and deletes the VM', async () => {
    const { res, events } = await postRun({ language: 'sh', code: 'echo first; sleep 2; echo oops >&2; echo last; exit 3', timeoutMs: 30_000 })
    expect(res.statusCode).toBe(200)
    expect(res.headers['content-type']).toMatch(/^text\/event-stream/)
    const head = await events.until((e) => e.event === 'stdout')
    // The first line is here while the response is still open: it was not held back to the end.
    expect(head.map((e) => e.event)).toEqual(['started', 'stdout'])
    expect(head[1]!.data).toBe('first\n')
    expect(res.complete).toBe(false)
    const rest = await events.rest()
    const text = (type: string) => [...head, ...rest].filter((e) => e.event === type).map((e) => e.data).join('')
    expect(text('stdout')).toBe('first\nlast\n')
    expect(text('stderr')).toBe('oops\n')
    expect(rest.at(-1)).toEqual({ event: 'exit', data: { exitCode: 3, timedOut: false, outputTruncated: false, message: 'exited with code 3' } })
    // The stream ends once the VM is deleted.
    expect(await instancesLeft()).toEqual([])
  })

  it('kills code that runs past timeoutMs, reports the timeout, and deletes the VM', async () => {
    const { events } = await postRun({ language: 'sh', code: 'echo before; sleep 120', timeoutMs: 2000 })
    const got = await events.rest()
    expect(got.filter((e) => e.event === 'stdout').map((e) => e.data)).toEqual(['before\n'])
    expect(got.at(-1)).toMatchObject({ event: 'exit', data: { timedOut: true, exitCode: 137 } })
    expect(await instancesLeft()).toEqual([])
    expect(qemuOfApp()).toBe('')
  })

  it('kills code that writes more than the output limit, and deletes the VM', async () => {
    const { events } = await postRun({ language: 'sh', code: 'yes 0123456789 | head -c 1000000; sleep 120', timeoutMs: 60_000 })
    const got = await events.rest()
    const bytes = got.filter((e) => e.event === 'stdout').reduce((n, e) => n + Buffer.byteLength(e.data), 0)
    expect(bytes).toBeGreaterThan(0)
    expect(bytes).toBeLessThanOrEqual(65536)
    expect(got.at(-1)).toMatchObject({ event: 'exit', data: { outputTruncated: true, timedOut: false, exitCode: 137 } })
    expect(await instancesLeft()).toEqual([])
  })

  it('answers 429 with Retry-After when all slots and the queue are taken; a client leaving mid-run frees its slot and VM', async () => {
    const first = await postRun({ language: 'sh', code: 'echo up; sleep 120', timeoutMs: 60_000 })
    await first.events.until((e) => e.event === 'stdout')
    expect((await getJson('/healthz')).body).toMatchObject({ running: 1, queued: 0 })
    expect(await instancesLeft()).toHaveLength(1)

    const full = await postJson({ language: 'sh', code: 'echo never' })
    expect(full.status).toBe(429)
    expect(Number(full.headers['retry-after'])).toBeGreaterThan(0)
    expect(full.body).toMatchObject({ error: 'queue_full' })

    first.cancel()
    await waitFor('the slot to be free', async () => (await getJson('/healthz')).body.running === 0)
    expect(await instancesLeft()).toEqual([])
    await waitFor('qemu to end', () => qemuOfApp() === '')
  })

  it('credentials: the code sees a placeholder, the API gets the real value through the egress proxy', async () => {
    const code = [
      'echo "key=$API_KEY"',
      `curl -sS --max-time 30 -H "Authorization: Bearer $API_KEY" https://${GATEWAY}:${apiPort}/v1/whoami`,
      'env | grep -c sk-code-runner || true',
    ].join('\n')
    const { events } = await postRun({ language: 'bash', code, timeoutMs: 60_000, credentials: { API_KEY: { value: SECRET, hosts: [GATEWAY] } } })
    const got = await events.rest()
    const stdout = got.filter((e) => e.event === 'stdout').map((e) => e.data).join('')
    expect(got.at(-1), JSON.stringify(got)).toMatchObject({ event: 'exit', data: { exitCode: 0 } })
    expect(stdout).toMatch(/^key=hmph_[0-9a-f]{40}$/m)
    expect(stdout).toMatch(/^api: authorized$/m)
    expect(stdout).toMatch(/^0$/m) // no env var in the VM holds the secret
    expect(apiSaw).toEqual([`Bearer ${SECRET}`])
    expect(JSON.stringify(got)).not.toContain(SECRET)
    expect(await instancesLeft()).toEqual([])
  })

  it('SIGTERM: the run in flight is told, its VM deleted, the app exits, and nothing is left', async () => {
    // A run with a credential, so it has a TAP on the app's bridge.
    const { events } = await postRun({ language: 'sh', code: 'echo up; sleep 120', timeoutMs: 60_000, credentials: { K: { value: 'v', hosts: ['example.test'] } } })
    const head = await events.until((e) => e.event === 'stdout')
    const id = head.find((e) => e.event === 'started')!.data.instance as string
    expect(linkExists(linkNames(id).tap)).toBe(true)

    process.kill(-app.pid!, 'SIGTERM')
    const rest = await events.rest()
    expect(rest.at(-1)).toMatchObject({ event: 'error', data: { error: 'shutting_down' } })
    await waitFor('the app to exit', () => !groupAlive(app.pid!))
    expect(appLog).toMatch(/\[code-runner\] stopped/)

    expect(await instancesLeft()).toEqual([])
    expect(qemuOfApp()).toBe('')
    for (const seen of instanceIds) for (const link of [linkNames(seen).tap, linkNames(seen).ifb]) expect(linkExists(link), link).toBe(false)
    expect(execFileSync('ip', ['-o', 'link', 'show', 'master', BRIDGE], { encoding: 'utf8' }).trim()).toBe('')
  })
})
