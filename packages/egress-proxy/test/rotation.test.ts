/**
 * Policies change at run time: a new secret applies to the next request on a connection that
 * stays open, a response streaming across the change completes, and a removed source is
 * refused on its existing connection.
 */
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https'
import type { LookupFunction } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { bearerPolicy, type Harness, SECRET, SECRET_2, startHarness } from './support/harness.js'

let h: Harness

beforeAll(async () => {
  h = await startHarness()
})
afterAll(() => h?.close())

const toProxy: LookupFunction = (_h, opts, cb) => {
  if ((opts as { all?: boolean }).all) (cb as (e: null, a: Array<{ address: string; family: number }>) => void)(null, [{ address: '127.0.0.1', family: 4 }])
  else (cb as (e: null, a: string, f: number) => void)(null, '127.0.0.1', 4)
}

interface Answer {
  status: number
  body: string
  reused: boolean
  localPort: number
}

function get(agent: HttpsAgent, path: string, onChunk?: (chunk: string) => void): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({ host: 'api.test', port: h.proxy.transparentAddress!.port, path, agent, lookup: toProxy, ca: h.proxy.caPem }, (res) => {
      let body = ''
      res.on('data', (d: Buffer) => {
        body += d.toString()
        onChunk?.(d.toString())
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, reused: req.reusedSocket, localPort: req.socket?.localPort ?? 0 }))
    })
    req.on('error', reject)
    req.end()
  })
}

describe('rotation', () => {
  it('applies a new secret to the next request on the same open connection, without dropping a stream in flight', async () => {
    const agent = new HttpsAgent({ keepAlive: true, maxSockets: 1 })
    const streamAgent = new HttpsAgent({ keepAlive: true, maxSockets: 1 })
    try {
      h.proxy.policies.set('127.0.0.1', bearerPolicy(['api.test'], SECRET))
      const first = await get(agent, '/echo')
      expect(JSON.parse(first.body).headers.authorization).toBe(`Bearer ${SECRET}`)

      // A response that streams for a while, started with the old secret.
      let rotate!: () => void
      const firstChunk = new Promise<void>((r) => (rotate = r))
      const streaming = get(streamAgent, '/slow?chunks=6&ms=80', () => rotate())
      await firstChunk
      const connectionsBefore = h.proxy.metrics().match(/hypeman_egress_connections_total\{listener="transparent"\} (\d+)/)![1]
      h.proxy.policies.set('127.0.0.1', bearerPolicy(['api.test'], SECRET_2))

      const second = await get(agent, '/echo')
      expect(second.reused).toBe(true)
      expect(second.localPort).toBe(first.localPort)
      expect(JSON.parse(second.body).headers.authorization).toBe(`Bearer ${SECRET_2}`)

      const streamed = await streaming
      expect(streamed.status).toBe(200)
      expect(streamed.body.split('\n').filter((l) => l.startsWith('chunk'))).toHaveLength(6)
      expect(JSON.parse(streamed.body.trim().split('\n').at(-1)!).headers.authorization).toBe(`Bearer ${SECRET}`)
      expect(h.proxy.metrics().match(/hypeman_egress_connections_total\{listener="transparent"\} (\d+)/)![1]).toBe(connectionsBefore)
    } finally {
      agent.destroy()
      streamAgent.destroy()
    }
  })

  it('refuses a removed source on its existing connection, and serves it again once re-registered', async () => {
    const agent = new HttpsAgent({ keepAlive: true, maxSockets: 1 })
    try {
      h.proxy.policies.set('127.0.0.1', bearerPolicy(['api.test'], SECRET))
      const ok = await get(agent, '/echo')
      expect(ok.status).toBe(200)
      expect(h.proxy.policies.delete('127.0.0.1')).toBe(true)
      const refused = await get(agent, '/echo')
      expect(refused.reused).toBe(true)
      expect(refused.status).toBe(403)
      expect(refused.body).toContain('no policy is registered for source 127.0.0.1')
      h.proxy.policies.set('127.0.0.0/8', bearerPolicy(['api.test'], SECRET_2))
      const back = await get(agent, '/echo')
      expect(back.status).toBe(200)
      expect(JSON.parse(back.body).headers.authorization).toBe(`Bearer ${SECRET_2}`)
      expect(h.audit.map((e) => e.type)).toEqual(expect.arrayContaining(['policy_set', 'policy_deleted']))
    } finally {
      agent.destroy()
      h.proxy.policies.delete('127.0.0.0/8')
    }
  })

  it('placeholders are stable across updates and restarts on the same state directory', async () => {
    const a = h.proxy.policies.set('10.9.0.5', bearerPolicy()).placeholders.OPENAI_API_KEY
    const b = h.proxy.policies.set('10.9.0.5', bearerPolicy(['api.test'], SECRET_2)).placeholders.OPENAI_API_KEY
    expect(b).toBe(a)
    expect(h.proxy.placeholderFor('10.9.0.5/32', 'OPENAI_API_KEY')).toBe(a)
    const restarted = await h.another({ listen: '127.0.0.1:0', transparentListen: null })
    expect(restarted.placeholderFor('10.9.0.5', 'OPENAI_API_KEY')).toBe(a)
    expect(restarted.caPem).toBe(h.proxy.caPem)
    await restarted.close()
  })
})
