/**
 * The server through the official SDK and plain HTTP, without VMs: auth, validation from the
 * spec, error bodies, 501s, and the images endpoints (a real pull of a local OCI layout).
 */
import { readFileSync } from 'node:fs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import HypemanClient, { APIError, AuthenticationError, BadRequestError, NotFoundError } from '@onkernel/hypeman'
import { cpFromInstance } from '@onkernel/hypeman/lib/cp'
import { createServer, loadSpec, mintToken } from '../src/index.js'
import { BUSYBOX, specValidator, startServer, type TestServer } from './support/server.js'

let t: TestServer
const valid = specValidator()

beforeAll(async () => {
  t = await startServer()
})
afterAll(async () => {
  await t?.close()
})

async function http(method: string, path: string, opts: { token?: string | null; body?: string; headers?: Record<string, string> } = {}) {
  const token = opts.token === undefined ? t.token : opts.token
  const r = await fetch(t.base + path, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}), ...opts.headers },
    ...(opts.body !== undefined ? { body: opts.body } : {}),
  })
  const text = await r.text()
  return { status: r.status, headers: r.headers, body: text ? (JSON.parse(text) as Record<string, unknown>) : undefined }
}

describe('auth', () => {
  it('lets anyone ask /health', async () => {
    expect(await http('GET', '/health', { token: null })).toMatchObject({ status: 200, body: { status: 'ok' } })
    valid('Health', await t.client.health.check())
  })

  it.each([
    ['no token', null, 'authorization header required'],
    ['a token signed with another secret', () => mintToken(Buffer.from('not-the-secret-of-this-server')), 'invalid token signature'],
    ['an expired token', () => mintToken(t.secret, { ttlSeconds: 60, now: Date.now() - 3_600_000 }), 'token expired'],
    ['garbage', 'x', 'malformed token'],
  ])('answers %s with 401 {code, message} on every other route', async (_what, token, message) => {
    const tok = typeof token === 'function' ? token() : token
    for (const [method, path] of [['GET', '/instances'], ['GET', '/images'], ['GET', '/resources'], ['GET', '/volumes'], ['POST', '/instances/x/stop']] as const) {
      const r = await http(method, path, { token: tok })
      expect(r.status, `${method} ${path}`).toBe(401)
      expect(r.body).toEqual({ code: 'unauthorized', message })
      valid('Error', r.body)
    }
  })

  it('gives the SDK its AuthenticationError', async () => {
    const stranger = new HypemanClient({ baseURL: t.base, apiKey: mintToken(Buffer.from('someone-elses-secret-key')), maxRetries: 0 })
    await expect(stranger.instances.list()).rejects.toBeInstanceOf(AuthenticationError)
  })

  it('refuses an exec WebSocket without a token before the upgrade', async () => {
    const { default: WebSocket } = await import('ws')
    const status = await new Promise<number | undefined>((resolve, reject) => {
      const ws = new WebSocket(`${t.base.replace('http', 'ws')}/instances/x/exec`)
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode))
      ws.on('open', () => reject(new Error('upgraded without a token')))
      ws.on('error', reject)
    })
    expect(status).toBe(401)
  })

  it('refuses hypeman registry tokens for the API', async () => {
    const { createHmac } = await import('node:crypto')
    const head = `${Buffer.from('{"alg":"HS256"}').toString('base64url')}.${Buffer.from('{"sub":"b","repos":["x"]}').toString('base64url')}`
    const tok = `${head}.${createHmac('sha256', t.secret).update(head).digest('base64url')}`
    expect(await http('GET', '/instances', { token: tok })).toMatchObject({ status: 401, body: { message: 'invalid token type' } })
  })
})

describe('validation from the spec', () => {
  it.each([
    ['a wrong type', { name: 'a', image: BUSYBOX, vcpus: 'two' }, 'vcpus'],
    ['a missing field', { image: BUSYBOX }, 'name'],
    ['a name against the pattern', { name: 'Bad_Name', image: BUSYBOX }, 'name'],
    ['a nested wrong type', { name: 'a', image: BUSYBOX, network: { bandwidth_download: 5 } }, 'network.bandwidth_download'],
    ['an unknown enum value', { name: 'a', image: BUSYBOX, hypervisor: 'bhyve' }, 'hypervisor'],
    ['a bad tag key', { name: 'a', image: BUSYBOX, tags: { 'no{braces}': 'x' } }, 'tags.no{braces}'],
    ['a value core refuses', { name: 'a', image: BUSYBOX, size: 'lots' }, 'size'],
  ])('refuses %s with 400 naming the field, as a BadRequestError', async (_what, body, field) => {
    const err = await t.client.instances.create(body as never).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(BadRequestError)
    const e = err as BadRequestError
    expect(e.error).toMatchObject({ code: 'invalid_input', details: [{ code: 'field', message: field }] })
    expect((e.error as { message: string }).message).toContain(field)
    valid('Error', e.error)
    expect(await t.hm.instances.list()).toEqual([])
  })

  it('refuses malformed JSON, a non-JSON body and a body over the limit', async () => {
    expect(await http('POST', '/instances', { body: '{"name":' })).toMatchObject({ status: 400, body: { code: 'invalid_input', details: [{ message: 'body' }] } })
    expect(await http('POST', '/instances', { body: 'name=a', headers: { 'content-type': 'application/x-www-form-urlencoded' } })).toMatchObject({ status: 400 })
    expect(await http('POST', '/instances', { body: '{"name":"a","image":"b","__proto__":{"x":1}}' })).toMatchObject({ status: 400, body: { code: 'invalid_input' } })
    const big = JSON.stringify({ name: 'big', image: BUSYBOX, env: { A: 'x'.repeat(100 * 1024) } })
    expect(await http('POST', '/instances', { body: big })).toMatchObject({ status: 413, body: { code: 'body_too_large' } })
    expect(await t.hm.instances.list()).toEqual([])
  })

  it('checks queries: enum values and deepObject tags', async () => {
    expect(await http('GET', '/instances?state=Sleeping')).toMatchObject({ status: 400, body: { details: [{ message: 'state' }] } })
    expect(await http('GET', '/instances/x/logs?source=kernel')).toMatchObject({ status: 400, body: { details: [{ message: 'source' }] } })
    expect(await http('GET', '/instances/x/logs?tail=many')).toMatchObject({ status: 400, body: { details: [{ message: 'tail' }] } })
    expect(await http('GET', `/instances?tags%5B${'k'.repeat(200)}%5D=v`)).toMatchObject({ status: 400 })
  })

  it('refuses path traversal in names, creating nothing', async () => {
    expect(await http('GET', '/images/..%2F..%2Fetc%2Fpasswd')).toMatchObject({ status: 400, body: { code: 'invalid_input', details: [{ message: 'name' }] } })
    expect(await http('DELETE', '/images/..%2F..%2Fetc')).toMatchObject({ status: 400 })
    expect(await http('GET', '/instances/..%2F..%2Fetc')).toMatchObject({ status: 404 })
    expect(await http('POST', '/instances', { body: JSON.stringify({ name: '../escape', image: BUSYBOX }) })).toMatchObject({ status: 400, body: { details: [{ message: 'name' }] } })
    expect(await t.hm.instances.list()).toEqual([])
  })

  it('refuses fields of the spec that core cannot honour with 501 naming them', async () => {
    const r = await http('POST', '/instances', { body: JSON.stringify({ name: 'a', image: BUSYBOX, ttl: '1h' }) })
    expect(r).toMatchObject({ status: 501, body: { code: 'not_supported', details: [{ message: 'ttl' }] } })
    expect(await http('POST', '/instances/x/start', { body: '{"cmd":["sh"]}' })).toMatchObject({ status: 501, body: { details: [{ message: 'cmd' }] } })
    expect(await http('POST', '/instances/x/standby', { body: '{"compression":{"enabled":true}}' })).toMatchObject({ status: 501, body: { details: [{ message: 'compression' }] } })
    // Volumes are honoured now: an unknown one is a 404 (volume_not_found), and nothing is created either.
    expect(await http('POST', '/instances', { body: JSON.stringify({ name: 'a', image: BUSYBOX, volumes: [{ volume_id: 'v', mount_path: '/data' }] }) })).toMatchObject({ status: 404 })
    expect(await t.hm.instances.list()).toEqual([])
  })

  it('refuses an update of what core cannot change with 501 naming the field, through the SDK', async () => {
    for (const [field, update] of [
      ['ttl', { ttl: '1h' }],
      ['expires_at', { expires_at: '2030-01-01T00:00:00Z' }],
      ['health_check', { health_check: { type: 'none' } }],
      ['restart_policy', { restart_policy: { policy: 'never' } }],
      ['auto_standby', { auto_standby: { enabled: false } }],
    ] as const) {
      const err = (await t.client.instances.update('x', { env: { K: 'v' }, ...update }).catch((e: unknown) => e)) as APIError
      expect(err, field).toBeInstanceOf(APIError)
      expect(err.status, field).toBe(501)
      expect(err.error, field).toMatchObject({ code: 'not_supported', details: [{ code: 'field', message: field }] })
      valid('Error', err.error)
    }
  })

  it('refuses an update with no env, an empty or a mistyped one with 400 (the schema, then core), before any lookup', async () => {
    for (const body of ['{"env":{}}', '{"env":{"K":1}}', '{}']) {
      const r = await http('PATCH', '/instances/x', { body })
      expect(r, body).toMatchObject({ status: 400, body: { code: 'invalid_input', details: [{ message: expect.stringMatching(/^env/) }] } })
    }
  })
})

describe('errors', () => {
  it('answers an unknown instance with 404 as NotFoundError on every instance route', async () => {
    for (const call of [
      () => t.client.instances.get('nosuchinstance'),
      () => t.client.instances.stop('nosuchinstance'),
      () => t.client.instances.start('nosuchinstance', {}),
      () => t.client.instances.standby('nosuchinstance'),
      () => t.client.instances.restore('nosuchinstance'),
      () => t.client.instances.delete('nosuchinstance'),
      () => t.client.instances.wait('nosuchinstance', { state: 'Running' }),
      () => t.client.instances.stat('nosuchinstance', { path: '/' }),
      () => t.client.instances.logs('nosuchinstance'),
      () => t.client.instances.update('nosuchinstance', { env: { K: 'v' } }),
      () => t.client.instances.stats('nosuchinstance'),
    ]) {
      const err = await call().catch((e: unknown) => e)
      expect(err).toBeInstanceOf(NotFoundError)
      expect((err as NotFoundError).error).toMatchObject({ code: 'not_found' })
    }
  })

  it('answers what the spec has and we do not with 501 not_implemented, never a fake', async () => {
    for (const [method, path, body] of [
      ['POST', '/snapshots/x/fork', '{"name":"y"}'],
      ['GET', '/snapshots', undefined],
      ['GET', '/builds', undefined],
      ['GET', '/ingresses', undefined],
    ] as const) {
      const r = await http(method, path, body ? { body } : {})
      expect(r.status, `${method} ${path}`).toBe(501)
      expect(r.body).toMatchObject({ code: 'not_implemented' })
      valid('Error', r.body)
    }
  })

  it('answers cp (hypeman WebSocket, not in the spec) to an unknown instance with 404 before the upgrade', async () => {
    const { default: WebSocket } = await import('ws')
    const answer = await new Promise<{ status?: number; body: string }>((resolve, reject) => {
      const ws = new WebSocket(`${t.base.replace('http', 'ws')}/instances/x/cp`, { headers: { authorization: `Bearer ${t.token}` } })
      ws.on('unexpected-response', (_req, res) => {
        let body = ''
        res.on('data', (d: Buffer) => (body += d.toString()))
        res.on('end', () => resolve({ status: res.statusCode, body }))
      })
      ws.on('open', () => reject(new Error('upgraded')))
      ws.on('error', reject)
    })
    expect(answer.status).toBe(404)
    expect(JSON.parse(answer.body)).toMatchObject({ code: 'not_found' })
    const sdk = { baseURL: t.base, apiKey: t.token }
    await expect(cpFromInstance(sdk, { instanceId: 'x', srcPath: '/etc/hostname', dstPath: '/tmp/never' })).rejects.toThrow(/404/)
  })

  it('answers a path outside the spec with 404 {code, message}', async () => {
    expect(await http('GET', '/nowhere')).toMatchObject({ status: 404, body: { code: 'not_found' } })
  })
})

describe('capabilities', () => {
  it('reports the host, qemu as the default and only available runtime, and what this server serves', async () => {
    const c = await t.client.capabilities.get()
    valid('Capabilities', c)
    expect(c.server).toEqual({ version: JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version, api_version: loadSpec().version })
    expect(c.host).toEqual({ os: 'linux', arch: process.arch === 'x64' ? 'amd64' : process.arch })
    expect(c.default_runtime).toEqual({ name: 'qemu', available: true })
    expect(c.runtimes.map((r) => r.name)).toEqual(['cloud-hypervisor', 'firecracker', 'qemu'])
    expect(c.runtimes.find((r) => r.name === 'qemu')).toEqual({ name: 'qemu', available: true, features: ['standby', 'fork', 'pause', 'disk-io-limit', 'gpu-passthrough'] })
    expect(c.runtimes.filter((r) => r.available).map((r) => r.name)).toEqual(['qemu'])
    // The test server has no host network: the model, and no gateway or subnet to tell.
    expect(c.network).toEqual({ model: 'bridge', guest_to_guest: false })
    expect(c.images).toEqual({ platforms: [`linux/${c.host.arch}`], default_platform: 'linux/amd64' })
    expect(c.features).toEqual(['instances', 'images', 'volumes', 'exec', 'logs', 'devices'])
  })
})

describe('resources', () => {
  it('reports the host as the spec shapes it', async () => {
    const r = await t.client.resources.get()
    valid('Resources', r)
    expect(r.cpu.capacity).toBeGreaterThan(0)
    expect(r.memory.capacity).toBeGreaterThan(0)
    expect(r.network.source).toBe('unknown')
  })
})

describe('images', () => {
  it('starts a pull with 202, then gets, lists and deletes it by its %2F-encoded name', async () => {
    const created = await t.client.images.create({ name: BUSYBOX, tags: { suite: 'server' } }).withResponse()
    expect(created.response.status).toBe(202)
    valid('Image', created.data)
    expect(created.data.name).toBe(BUSYBOX)

    let image = created.data
    for (let i = 0; i < 600 && image.status !== 'ready' && image.status !== 'failed'; i++) {
      await new Promise((r) => setTimeout(r, 100))
      image = await t.client.images.get(BUSYBOX)
    }
    expect(image).toMatchObject({ status: 'ready', tags: { suite: 'server' } })
    valid('Image', image)
    expect(image.digest).toMatch(/^sha256:/)

    const listed = await t.client.images.list({ tags: { suite: 'server' } })
    expect(listed.map((i) => i.name)).toEqual([BUSYBOX])
    listed.forEach((i) => valid('Image', i))
    expect(await t.client.images.list({ tags: { suite: 'other' } })).toEqual([])

    expect((await t.client.images.delete(BUSYBOX).asResponse()).status).toBe(204)
    await expect(t.client.images.get(BUSYBOX)).rejects.toBeInstanceOf(NotFoundError)
  })

  it('refuses local OCI layouts on a server that did not allow them (the default)', async () => {
    const strict = await createServer(t.hm, { jwtSecret: t.secret })
    strict.app.get('/embedder-route', async () => ({ mine: true })) // an embedder's own, behind the same auth
    try {
      const { port } = await strict.listen({ port: 0 })
      expect((await fetch(`http://127.0.0.1:${port}/embedder-route`)).status).toBe(401)
      expect(await (await fetch(`http://127.0.0.1:${port}/embedder-route`, { headers: { authorization: `Bearer ${t.token}` } })).json()).toEqual({ mine: true })
      const client = new HypemanClient({ baseURL: `http://127.0.0.1:${port}`, apiKey: t.token, maxRetries: 0 })
      const err = await client.images.create({ name: BUSYBOX }).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(BadRequestError)
      expect((err as BadRequestError).error).toMatchObject({ code: 'invalid_input', details: [{ message: 'name' }] })
      await expect(client.instances.create({ name: 'layout', image: BUSYBOX })).rejects.toBeInstanceOf(BadRequestError)
    } finally {
      await strict.close()
    }
  })

  it('refuses a bad platform with 400', async () => {
    await expect(t.client.images.create({ name: BUSYBOX, platform: 'Linux!' })).rejects.toBeInstanceOf(BadRequestError)
  })
})

describe('metrics', () => {
  it('are served on their own listener, without auth, with route patterns as labels', async () => {
    const { port } = await t.server.metrics!.listen({ host: '127.0.0.1', port: 0 })
    await t.client.instances.list()
    await t.client.images.get('docker.io/library/nothing:here').catch(() => undefined)
    const r = await fetch(`http://127.0.0.1:${port}/metrics`)
    expect(r.status).toBe(200)
    const text = await r.text()
    expect(text).toMatch(/hypeman_http_request_duration_seconds_count\{method="GET",route="\/instances",status="200"\} [1-9]/)
    expect(text).toMatch(/hypeman_http_request_duration_seconds_count\{method="GET",route="\/images\/:name",status="404"\} [1-9]/)
    expect(text).toMatch(/hypeman_image_pulls_total\{outcome="started"\} 1/) // the images test above
    expect(text).toMatch(/hypeman_image_pulls_total\{outcome="ready"\} [1-9]/) // ... and how it ended
    expect(text).toContain('hypeman_images ') // declared, even with no image left
    expect(text).toContain('process_cpu_seconds_total')
    expect(text).not.toContain('nothing:here')
    expect((await fetch(`http://127.0.0.1:${port}/instances`)).status).toBe(404)
  })
})
