/**
 * Start, graceful close, abrupt destroy, and the failure paths of start-up.
 */
import { createServer } from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createProxy, type EgressProxy } from '../src/index.js'
import { curl } from './support/clients.js'
import { bearerPolicy, type Harness, startHarness, testLookup } from './support/harness.js'

let h: Harness

beforeAll(async () => {
  h = await startHarness()
})
afterAll(() => h?.close())

async function fresh(): Promise<EgressProxy> {
  const p = await h.another({ transparentListen: null })
  p.policies.set('127.0.0.1', bearerPolicy(['api.test']))
  return p
}

const slowUrl = () => `https://api.test:${h.https.port}/slow?chunks=5&ms=100`

describe('close()', () => {
  it('lets a response in flight finish, refuses new connections, then resolves', async () => {
    const p = await fresh()
    const inflight = curl(['--cacert', p.caPath, '-x', p.url!, slowUrl()])
    await new Promise((r) => setTimeout(r, 200))
    const closing = p.close()
    const late = await curl(['--cacert', p.caPath, '-x', p.url!, `https://api.test:${h.https.port}/echo`])
    expect(late.exitCode).not.toBe(0)
    const r = await inflight
    expect(r.status).toBe(200)
    expect(r.body.split('\n').filter((l) => l.startsWith('chunk'))).toHaveLength(5)
    await closing
    expect(p.metrics()).toMatch(/hypeman_egress_connections_active 0/)
  })

  it('closes idle kept-alive connections at once', async () => {
    const p = await fresh()
    const r = await curl(['--cacert', p.caPath, '-x', p.url!, `https://api.test:${h.https.port}/echo`])
    expect(r.status).toBe(200)
    const t0 = Date.now()
    await p.close()
    expect(Date.now() - t0).toBeLessThan(5000)
  })

  it('gives up on exchanges that outlast the grace period', async () => {
    const p = await fresh()
    const inflight = curl(['--cacert', p.caPath, '-x', p.url!, `https://api.test:${h.https.port}/slow?chunks=50&ms=100`])
    await new Promise((r) => setTimeout(r, 200))
    const t0 = Date.now()
    await p.close({ grace: '300ms' })
    expect(Date.now() - t0).toBeLessThan(3000)
    expect((await inflight).exitCode).not.toBe(0)
  })
})

describe('destroy()', () => {
  it('cuts exchanges in flight at once', async () => {
    const p = await fresh()
    const inflight = curl(['--cacert', p.caPath, '-x', p.url!, slowUrl()])
    await new Promise((r) => setTimeout(r, 200))
    await p.destroy()
    const r = await inflight
    expect(r.exitCode).not.toBe(0)
  })

  it('await using closes the proxy at the end of the scope', async () => {
    let port = 0
    {
      await using p = await fresh()
      port = p.address!.port
    }
    const r = await curl(['-x', `http://127.0.0.1:${port}`, 'http://api.test/'])
    expect(r.exitCode).toBe(7)
  })
})

describe('start-up failures', () => {
  it('a port in use is listen_failed, naming the option, and leaves nothing listening', async () => {
    const blocker = createServer()
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()))
    const port = (blocker.address() as { port: number }).port
    try {
      await expect(createProxy({ stateDir: join(h.dir, 'state'), listen: '127.0.0.1:0', transparentListen: `127.0.0.1:${port}`, lookup: testLookup })).rejects.toMatchObject({
        code: 'listen_failed',
        field: 'transparentListen',
      })
    } finally {
      blocker.close()
    }
  })

  it.each([
    [{ listen: 'nowhere' }, 'listen'],
    [{ limits: { maxHeaderSize: '1XB' } }, 'limits.maxHeaderSize'],
    [{ limits: { idleTimeout: 'soon' } }, 'limits.idleTimeout'],
    [{ allowDestinations: ['10.0.0.1/8'] }, 'allowDestinations[0]'],
    [{ leafValidity: '1h', leafRenewBefore: '2h' }, 'leafRenewBefore'],
    [{ policies: { '10.0.0.5': { credentials: { K: { source: { env: 'NOPE' }, inject: [{ as: { header: 'A', format: '${value}' } }] } } } } }, 'policies.10.0.0.5.credentials.K.source.env'],
  ])('bad options are rejected naming the field (%#)', async (options, field) => {
    await expect(createProxy({ stateDir: join(h.dir, 'state'), ...(options as object) })).rejects.toMatchObject({ code: 'invalid_input', field })
  })
})
