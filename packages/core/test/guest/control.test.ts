// The control client against a unix socket peer speaking init's line protocol (the real init is
// exercised in vm.test.ts); here: replies, refusals, and a peer that never answers or goes away.
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { pingGuestControl, requestGuestStop, sendControlCommand, signalGuestProgram } from '../../src/guest/control.js'

let dir: string
const servers: Server[] = []
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-ctl-'))
})
afterAll(async () => {
  for (const s of servers) s.close()
  await rm(dir, { recursive: true, force: true })
})

async function peer(name: string, reply: (line: string) => string | null): Promise<{ path: string; lines: string[] }> {
  const path = join(dir, name)
  const lines: string[] = []
  const server = createServer((sock) => {
    let buf = ''
    sock.on('data', (d) => {
      buf += d.toString()
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        lines.push(line)
        const r = reply(line)
        if (r === null) sock.destroy()
        else if (r !== '') sock.write(`${r}\n`)
      }
    })
  })
  servers.push(server)
  await new Promise<void>((r) => server.listen(path, r))
  return { path, lines }
}

describe('control port client', () => {
  it('sends stop, signal and ping as init expects them', async () => {
    const p = await peer('ok.sock', (l) => (l === 'ping' ? 'pong stopping' : 'ok'))
    await requestGuestStop(p.path, 2500)
    await signalGuestProgram(p.path, 10)
    expect(await pingGuestControl(p.path)).toBe('stopping')
    expect(p.lines).toEqual(['stop 2500', 'signal 10', 'ping'])
  })

  it('turns an error reply into control_refused', async () => {
    const p = await peer('refuse.sock', () => 'error program not running')
    await expect(signalGuestProgram(p.path, 15)).rejects.toMatchObject({ code: 'control_refused', message: expect.stringContaining('program not running') })
  })

  it('fails with control_unreachable when nobody listens, nobody answers, or the peer hangs up', async () => {
    await expect(sendControlCommand(join(dir, 'none.sock'), 'ping', { timeoutMs: 1000 })).rejects.toMatchObject({ code: 'control_unreachable' })
    const silent = await peer('silent.sock', () => '')
    await expect(sendControlCommand(silent.path, 'ping', { timeoutMs: 200 })).rejects.toMatchObject({ code: 'control_unreachable', message: expect.stringContaining('within 200 ms') })
    const gone = await peer('gone.sock', () => null)
    await expect(requestGuestStop(gone.path, 1)).rejects.toMatchObject({ code: 'control_unreachable', message: expect.stringContaining('closed before replying') })
  })

  it('validates its arguments', async () => {
    await expect(requestGuestStop('/x', -1)).rejects.toThrow(RangeError)
    await expect(signalGuestProgram('/x', 0)).rejects.toThrow(RangeError)
    expect(() => sendControlCommand('/x', 'a\nb')).toThrow(RangeError)
  })
})
