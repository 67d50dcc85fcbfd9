/**
 * Instances through the official SDK against a real server and real VMs (QEMU under TCG).
 * One instance carries most checks, so the suite boots few VMs: create, list by tags and state,
 * get by name and by prefix, stat, wait, logs (tail and follow), exec over the WebSocket,
 * a deterministic 409, standby/restore, stop/start, delete.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { ConflictError, NotFoundError } from '@onkernel/hypeman'
import type { Instance } from '@onkernel/hypeman/resources/instances/instances'
import { createServer } from '../src/index.js'
import { BUSYBOX, specValidator, startServer, type TestServer } from './support/server.js'

let t: TestServer
const valid = specValidator()
let inst: Instance

// The program prints a marker, then one line each time /tmp/say holds something: a log line the
// test can make appear after a follow started.
const PROGRAM = ['sh', '-c', 'echo "hello $GREETING"; while true; do if [ -s /tmp/say ]; then cat /tmp/say; rm /tmp/say; fi; sleep 0.2; done']

beforeAll(async () => {
  t = await startServer()
  inst = await t.client.instances.create({
    name: 'srv-one',
    image: BUSYBOX,
    cmd: PROGRAM,
    env: { GREETING: 'from-the-api' },
    tags: { team: 'server', tier: 'test' },
    network: { enabled: false },
  })
})
afterAll(async () => {
  await t?.close()
})

interface ExecOutcome {
  output: string
  exitCode: number | undefined
}

/** One exec over the WebSocket, as hypeman's CLI does it. */
function execWs(id: string, request: Record<string, unknown>, stdin?: string, base = t.base): Promise<ExecOutcome> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${base.replace('http', 'ws')}/instances/${id}/exec`, { headers: { authorization: `Bearer ${t.token}` } })
    const chunks: Buffer[] = []
    let exitCode: number | undefined
    ws.on('open', () => {
      ws.send(JSON.stringify(request))
      if (stdin !== undefined) ws.send(Buffer.from(stdin))
    })
    ws.on('message', (data: Buffer, isBinary) => {
      if (isBinary) chunks.push(data)
      else exitCode = (JSON.parse(data.toString()) as { exitCode: number }).exitCode
    })
    ws.on('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (d: Buffer) => (body += d.toString()))
      res.on('end', () => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode, body: JSON.parse(body), headers: res.headers })))
    })
    ws.on('error', reject)
    ws.on('close', () => resolve({ output: Buffer.concat(chunks).toString(), exitCode }))
  })
}

async function logLines(id: string, query: Record<string, unknown>): Promise<string[]> {
  const out: string[] = []
  for await (const line of await t.client.instances.logs(id, query)) out.push(line)
  return out
}

describe('an instance through the API', () => {
  it('was created Running, with the spec shape, env and tags', async () => {
    valid('Instance', inst)
    expect(inst).toMatchObject({ name: 'srv-one', state: 'Running', env: { GREETING: 'from-the-api' }, tags: { team: 'server', tier: 'test' } })
    expect(inst.id).toMatch(/^[a-z0-9]+$/)
  })

  it('is found by id, by name and by a unique prefix of its id', async () => {
    for (const ref of [inst.id, 'srv-one', inst.id.slice(0, 6)]) {
      const got = await t.client.instances.get(ref)
      valid('Instance', got)
      expect(got.id).toBe(inst.id)
    }
  })

  it('is listed by tags (deepObject) and by state, as a bare array', async () => {
    const byTags = await t.client.instances.list({ tags: { team: 'server', tier: 'test' } })
    expect(byTags.map((i) => i.id)).toEqual([inst.id])
    byTags.forEach((i) => valid('Instance', i))
    expect(await t.client.instances.list({ tags: { team: 'other' } })).toEqual([])
    expect((await t.client.instances.list({ state: 'Running' })).map((i) => i.id)).toEqual([inst.id])
    expect(await t.client.instances.list({ state: 'Stopped' })).toEqual([])
    expect(await t.server.metrics!.registry.getSingleMetricAsString('hypeman_instances')).toContain('hypeman_instances{state="Running"} 1')
  })

  it('refuses a second instance of the same name: 409 ConflictError, not to be retried', async () => {
    const err = await t.client.instances.create({ name: 'srv-one', image: BUSYBOX, network: { enabled: false } }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ConflictError)
    const e = err as ConflictError
    expect(e.headers?.get('x-should-retry')).toBe('false')
    expect(e.error).toMatchObject({ code: 'conflict', details: [{ message: 'name' }] })
  })

  it('refuses to delete the image the instance boots from: 409 image_in_use', async () => {
    const err = await t.client.images.delete(BUSYBOX).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ConflictError)
    expect((err as ConflictError).error).toMatchObject({ code: 'image_in_use' })
    expect((err as ConflictError).headers?.get('x-should-retry')).toBe('false')
    expect((await t.client.images.get(BUSYBOX)).status).toBe('ready')
  })

  it('answers restore of a running instance with 409 invalid_state', async () => {
    const err = await t.client.instances.restore('srv-one').catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ConflictError)
    expect((err as ConflictError).error).toMatchObject({ code: 'invalid_state' })
    expect((err as ConflictError).headers?.get('x-should-retry')).toBe('false')
  })

  it('waits for a state it is in, and for one it will not reach within the timeout', async () => {
    const running = await t.client.instances.wait('srv-one', { state: 'Running' })
    valid('WaitForStateResponse', running)
    expect(running).toEqual({ state: 'Running', timed_out: false })
    expect(await t.client.instances.wait('srv-one', { state: 'Standby', timeout: '1s' })).toEqual({ state: 'Running', timed_out: true })
  })

  it('stats a path in the guest', async () => {
    const info = await t.client.instances.stat('srv-one', { path: '/bin' })
    valid('PathInfo', info)
    expect(info).toMatchObject({ exists: true, is_dir: true })
    expect(await t.client.instances.stat('srv-one', { path: '/no/such' })).toMatchObject({ exists: false })
  })

  it('runs a program over the exec WebSocket: output, stdin and the exit code', async () => {
    const r = await execWs(inst.id, { command: ['sh', '-c', 'echo out-$X; echo err >&2; exit 3'], env: { X: 'y' } })
    expect(r.exitCode).toBe(3)
    expect(r.output).toContain('out-y')
    expect(r.output).toContain('err')
    const withStdin = await execWs('srv-one', { command: ['sh', '-c', 'read line; echo "got $line"'] }, 'typed\n')
    expect(withStdin).toEqual({ output: 'got typed\n', exitCode: 0 })
    const tty = await execWs('srv-one', { command: ['tty'], tty: true })
    expect(tty.output).toMatch(/^\/dev\/pts\/\d+/)
    const missing = await execWs('srv-one', { command: ['/no/such/program'] })
    expect(missing.exitCode).toBe(127)
    // More output than the server buffers before it pauses the program: all of it, in order, then the exit.
    const big = await execWs('srv-one', { command: ['sh', '-c', 'yes 0123456789abcdef | head -c 3000000; echo; echo end'] })
    expect(big.exitCode).toBe(0)
    expect(big.output.length).toBe(3_000_005)
    expect(big.output.endsWith('\nend\n')).toBe(true)
  })

  it('keeps quiet long requests (exec, wait) past an idle timeout meant for stalled clients', async () => {
    const impatient = await createServer(t.hm, { jwtSecret: t.secret, idleTimeoutMs: 300 })
    try {
      const { port } = await impatient.listen({ port: 0 })
      const base = `http://127.0.0.1:${port}`
      const ws = await execWs(inst.id, { command: ['sh', '-c', 'sleep 1.5; echo awake'] }, undefined, base)
      expect(ws).toEqual({ output: 'awake\n', exitCode: 0 })
      const r = await fetch(`${base}/instances/${inst.id}/wait?state=Standby&timeout=1500ms`, { headers: { authorization: `Bearer ${t.token}` } })
      expect(await r.json()).toEqual({ state: 'Running', timed_out: true })
    } finally {
      await impatient.close()
    }
  })

  it('streams the logs as SSE: tail, and follow delivering a line printed after the request', async () => {
    expect(await logLines('srv-one', { tail: 10 })).toContain('hello from-the-api')
    expect(await logLines('srv-one', { tail: 10, source: 'hypeman' })).toEqual(expect.any(Array))

    const stream = await t.client.instances.logs('srv-one', { follow: true, tail: 0 })
    const seen: string[] = []
    const reader = (async () => {
      for await (const line of stream) {
        seen.push(line)
        if (line === 'after-the-follow') break
      }
    })()
    // The follow is open (headers came back); now the guest prints.
    expect((await execWs('srv-one', { command: ['sh', '-c', 'echo after-the-follow > /tmp/say'] })).exitCode).toBe(0)
    await reader
    expect(seen).toEqual(['after-the-follow'])
  }, 60_000)

  it('goes to standby and is restored where it was', async () => {
    const standby = await t.client.instances.standby('srv-one')
    valid('Instance', standby)
    expect(standby).toMatchObject({ state: 'Standby', has_snapshot: true })
    const err = await execWs('srv-one', { command: ['true'] }).catch((e: { status: number; body: unknown; headers: Record<string, string> }) => e)
    expect(err).toMatchObject({ status: 409, body: { code: 'invalid_state' }, headers: { 'x-should-retry': 'false' } })
    const restored = await t.client.instances.restore('srv-one')
    valid('Instance', restored)
    expect(restored.state).toBe('Running')
    expect((await execWs('srv-one', { command: ['echo', 'back'] })).output).toBe('back\n')
  })

  it('stops and starts again', async () => {
    const stopped = await t.client.instances.stop('srv-one')
    valid('Instance', stopped)
    expect(stopped.state).toBe('Stopped')
    expect((await t.client.instances.list({ state: 'Stopped' })).map((i) => i.id)).toEqual([inst.id])
    const started = await t.client.instances.start('srv-one', {})
    valid('Instance', started)
    expect(started.state).toBe('Running')
  })

  it('is forked through the SDK: 409 while Running without from_running, then a Running fork of its own', async () => {
    const refused = await t.client.instances.fork('srv-one', { name: 'srv-fork' }).catch((e: { status: number; error: unknown }) => e)
    expect(refused).toMatchObject({ status: 409 })
    const forked = await t.client.instances.fork('srv-one', { name: 'srv-fork', from_running: true })
    valid('Instance', forked)
    expect(forked).toMatchObject({ name: 'srv-fork', state: 'Running' })
    expect((await t.client.instances.get('srv-one')).state).toBe('Running')
    expect((await execWs('srv-fork', { command: ['hostname'] })).output).toBe('srv-fork\n')
    const stopped = await t.client.instances.fork('srv-fork', { name: 'srv-fork-2', from_running: true, target_state: 'Stopped' })
    expect(stopped.state).toBe('Stopped')
    for (const name of ['srv-fork', 'srv-fork-2']) await t.client.instances.delete(name)
  })

  it('is deleted with 204, and is gone', async () => {
    const res = await t.client.instances.delete(inst.id.slice(0, 8)).asResponse()
    expect(res.status).toBe(204)
    await expect(t.client.instances.get(inst.id)).rejects.toBeInstanceOf(NotFoundError)
    expect(await t.client.instances.list()).toEqual([])
  })
})

describe('a client that goes away', () => {
  it('mid-create leaves no half-made instance', async () => {
    const ac = new AbortController()
    const request = fetch(`${t.base}/instances`, {
      method: 'POST',
      headers: { authorization: `Bearer ${t.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'srv-abandoned', image: BUSYBOX, cmd: ['sleep', '3600'], network: { enabled: false } }),
      signal: ac.signal,
    }).catch((e: unknown) => e)
    // Leave only once the create is under way (its record exists), not before it reached the server.
    let seen: string | undefined
    for (let i = 0; i < 1200 && !seen; i++) {
      seen = (await t.hm.instances.list()).find((x) => x.name === 'srv-abandoned')?.state
      if (!seen) await new Promise((r) => setTimeout(r, 25))
    }
    expect(seen).toMatch(/^(Created|Initializing)$/)
    ac.abort()
    expect(await request).toMatchObject({ name: 'AbortError' })
    let left = await t.hm.instances.list()
    for (let i = 0; i < 600 && left.length > 0; i++) {
      await new Promise((r) => setTimeout(r, 100))
      left = await t.hm.instances.list()
    }
    expect(left).toEqual([])
    await expect(t.client.instances.get('srv-abandoned')).rejects.toBeInstanceOf(NotFoundError)
  })
})
