/**
 * The REST transport against real HTTP servers on unix sockets (one per test): bodies both ways,
 * every failure as a typed error carrying what the VMM said, deadlines, aborts, and readiness
 * (socket present and an answer, with a deadline, stopping at once on a signal).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { RestClient, VmmApiError, type ApiCall } from '../src/index.js'

type Handler = (req: IncomingMessage, body: string, res: ServerResponse) => void

interface Seen {
  method: string
  url: string
  contentType: string | undefined
  body: string
}

let dir: string
let n = 0
const servers: Server[] = []
const clients: RestClient[] = []

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-rest-'))
})
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy()
  for (const s of servers.splice(0)) {
    s.closeAllConnections()
    await new Promise((r) => s.close(r))
  }
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

function socketPath(): string {
  return join(dir, `api${n++}.sock`)
}

async function serve(path: string, handler: Handler, seen: Seen[] = []): Promise<Server> {
  const server = createServer((req, res) => {
    let body = ''
    req.on('data', (d: Buffer) => (body += d.toString()))
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', contentType: req.headers['content-type'], body })
      handler(req, body, res)
    })
  })
  servers.push(server)
  await new Promise<void>((resolve) => server.listen(path, resolve))
  return server
}

function client(path: string, opts: ConstructorParameters<typeof RestClient>[1] = {}): RestClient {
  const c = new RestClient(path, { name: 'test-vmm', ...opts })
  clients.push(c)
  return c
}

const json = (res: ServerResponse, status: number, body?: unknown) => {
  if (body === undefined) res.writeHead(status).end()
  else res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body))
}

const put: ApiCall = { op: 'putThing', method: 'PUT', path: '/thing/a', body: { a: 1, s: 'x y' } }

describe('RestClient.call', () => {
  it('sends JSON bodies under the base path and parses JSON answers; 204 is undefined', async () => {
    const path = socketPath()
    const seen: Seen[] = []
    await serve(path, (req, _b, res) => (req.method === 'GET' ? json(res, 200, { state: 'Running' }) : json(res, 204)), seen)
    const c = client(path, { basePath: '/api/v1' })
    expect(await c.call(put)).toBeUndefined()
    expect(await c.call({ op: 'info', method: 'GET', path: '/vm.info' })).toEqual({ state: 'Running' })
    expect(seen).toEqual([
      { method: 'PUT', url: '/api/v1/thing/a', contentType: 'application/json', body: '{"a":1,"s":"x y"}' },
      { method: 'GET', url: '/api/v1/vm.info', contentType: undefined, body: '' },
    ])
  })

  it("turns an error status into VmmApiError carrying Firecracker's fault_message", async () => {
    const path = socketPath()
    await serve(path, (_r, _b, res) => json(res, 400, { fault_message: 'The kernel file cannot be opened: No such file or directory (os error 2)' }))
    const err = await client(path).call(put).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(VmmApiError)
    expect(err).toMatchObject({
      code: 'vmm_api_error',
      step: 'test-vmm.putThing',
      status: 400,
      method: 'PUT',
      path: '/thing/a',
      body: { fault_message: 'The kernel file cannot be opened: No such file or directory (os error 2)' },
      vmmMessage: 'The kernel file cannot be opened: No such file or directory (os error 2)',
    })
    expect((err as Error).message).toMatch(/PUT \/thing\/a answered 400: The kernel file cannot be opened/)
  })

  it("keeps a plain-text error body as Cloud Hypervisor sends it", async () => {
    const path = socketPath()
    await serve(path, (_r, _b, res) => res.writeHead(500).end('Error from API: The VM could not be booted: VmBoot(...)\n'))
    await expect(client(path).call(put)).rejects.toMatchObject({
      status: 500,
      body: 'Error from API: The VM could not be booted: VmBoot(...)\n',
      vmmMessage: 'Error from API: The VM could not be booted: VmBoot(...)',
    })
  })

  it('gives up at the deadline with a TimeoutError naming the step', async () => {
    const path = socketPath()
    await serve(path, () => {})
    await expect(client(path).call(put, { timeoutMs: 300 })).rejects.toMatchObject({ code: 'timeout', step: 'test-vmm.putThing' })
  })

  it('says control_closed when nothing listens, and when the server drops the connection', async () => {
    await expect(client(socketPath()).call(put)).rejects.toMatchObject({ code: 'control_closed', details: { errno: 'ENOENT' } })
    const path = socketPath()
    await serve(path, (req) => req.socket.destroy())
    await expect(client(path).call(put)).rejects.toMatchObject({ code: 'control_closed' })
  })

  it('stops when the caller aborts', async () => {
    const path = socketPath()
    await serve(path, () => {})
    const ac = new AbortController()
    setTimeout(() => ac.abort(new Error('stop')), 100)
    await expect(client(path).call(put, { signal: ac.signal, timeoutMs: 10_000 })).rejects.toMatchObject({ code: 'aborted' })
  })

  it('fails calls in flight when destroyed, and refuses new ones', async () => {
    const path = socketPath()
    await serve(path, () => {})
    const c = client(path)
    const pending = c.call(put, { timeoutMs: 10_000 })
    setTimeout(() => c.destroy(), 100)
    await expect(pending).rejects.toMatchObject({ code: 'control_closed' })
    await expect(c.call(put)).rejects.toMatchObject({ code: 'control_closed' })
  })

  it('runs the check before sending: a call it refuses never reaches the VMM', async () => {
    const path = socketPath()
    const seen: Seen[] = []
    await serve(path, (_r, _b, res) => json(res, 204), seen)
    const c = client(path, {
      check: (call) => {
        if (call.path.includes('bad')) throw new Error(`spec says no to ${call.path}`)
      },
    })
    await expect(c.call({ ...put, path: '/bad' })).rejects.toThrow('spec says no to /bad')
    await c.call(put)
    expect(seen.map((s) => s.url)).toEqual(['/thing/a'])
  })
})

describe('RestClient.waitReady', () => {
  const ping: ApiCall = { op: 'ping', method: 'GET', path: '/ping' }

  it('waits for the socket to exist and the API to answer 2xx', async () => {
    const path = socketPath()
    let calls = 0
    setTimeout(
      () =>
        void serve(path, (_r, _b, res) => {
          calls++
          // Not ready at first: an error status is not readiness.
          if (calls < 3) json(res, 503, { fault_message: 'starting' })
          else json(res, 200, { version: '1' })
        }),
      150,
    )
    expect(await client(path).waitReady(ping, { deadline: Date.now() + 5000 })).toEqual({ version: '1' })
    expect(calls).toBe(3)
  })

  it('gives up at the deadline saying what the last attempt saw', async () => {
    const path = socketPath()
    await serve(path, (_r, _b, res) => json(res, 500, { fault_message: 'still broken' }))
    const err = await client(path).waitReady(ping, { deadline: Date.now() + 400, step: 'x.ready' }).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'timeout', step: 'x.ready' })
    expect((err as Error).message).toMatch(/last: GET \/ping answered 500: still broken/)
    const missing = await client(socketPath()).waitReady(ping, { deadline: Date.now() + 200 }).catch((e: unknown) => e)
    expect((missing as Error).message).toMatch(/the socket does not exist yet/)
  })

  it('stops at once when its signal fires (the VMM process exited), long before the deadline', async () => {
    const ac = new AbortController()
    setTimeout(() => ac.abort(new Error('VMM exited')), 100)
    const t0 = Date.now()
    await expect(client(socketPath()).waitReady(ping, { deadline: Date.now() + 30_000, signal: ac.signal })).rejects.toMatchObject({ code: 'aborted' })
    // Not a speed check: it proves the wait ended on the signal, not at the 30 s deadline.
    expect(Date.now() - t0).toBeLessThan(20_000)
  })
})
