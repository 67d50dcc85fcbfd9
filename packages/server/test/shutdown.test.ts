/**
 * close() with a long-poll in flight, over a stand-in manager so "in flight" is a fact the test
 * observes (the wait reached the manager) rather than a guess about timing.
 */
import { expect, it } from 'vitest'
import type { Hypeman, Instance } from '@hypeman-ts/core'
import { createServer, mintToken } from '../src/index.js'

it('answers a wait in flight at once when the server closes, ending its connection, then stops listening', async () => {
  let reached!: () => void
  const inWait = new Promise<void>((r) => (reached = r))
  const hm = {
    instances: {
      get: async (id: string) => ({ id: 'abc123', name: id, state: 'Running', createdAt: '2026-01-01T00:00:00Z', image: 'x' }) as Instance,
      waitForState: (_id: string, _state: string, opts: { signal: AbortSignal }) => {
        reached()
        return new Promise((resolve) => opts.signal.addEventListener('abort', () => resolve({ state: 'Running', stateError: null, timedOut: true })))
      },
    },
  } as unknown as Hypeman
  const secret = Buffer.from('a-secret-of-at-least-16-bytes')
  const server = await createServer(hm, { jwtSecret: secret })
  const { port } = await server.listen({ port: 0 })
  const headers = { authorization: `Bearer ${mintToken(secret)}` }
  const waiting = fetch(`http://127.0.0.1:${port}/instances/abc123/wait?state=Stopped&timeout=5m`, { headers })
  await inWait
  const closing = server.close()
  const answer = await waiting
  expect(answer.status).toBe(200)
  expect(answer.headers.get('connection')).toBe('close')
  expect(await answer.json()).toEqual({ state: 'Running', timed_out: true })
  await closing
  await expect(fetch(`http://127.0.0.1:${port}/health`)).rejects.toThrow()
})
