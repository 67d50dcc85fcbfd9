/**
 * The hybrid vsock handshake (`CONNECT <port>\n` → `OK <host port>\n`) of Firecracker and Cloud
 * Hypervisor: the pure decoder as a table, and the transport against a fake VMM-side peer on a
 * real unix socket that behaves as the VMMs document (closes when no guest listens on the port).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { connectVsock } from '../src/index.js'
import { AckDecoder, encodeConnect } from '../src/testing.js'

describe('AckDecoder', () => {
  it('encodes CONNECT', () => {
    expect(encodeConnect(52).toString()).toBe('CONNECT 52\n')
    expect(() => encodeConnect(-1)).toThrow(RangeError)
    expect(() => encodeConnect(2 ** 32)).toThrow(RangeError)
  })

  const ok: [string, string[], number, string][] = [
    ['one chunk', ['OK 1073741824\n'], 1073741824, ''],
    ['byte by byte', [...'OK 7\n'], 7, ''],
    ['guest bytes right after the line', ['OK 9\nhello'], 9, 'hello'],
    ['line split with data after', ['OK', ' 12', '\nab', 'c'], 12, 'ab'],
  ]
  it.each(ok)('accepts %s', (_name, chunks, port, rest) => {
    const d = new AckDecoder()
    let result
    for (const c of chunks) {
      result = d.push(Buffer.from(c))
      if (result.done) break
    }
    expect(result).toMatchObject({ done: true, hostPort: port })
    expect((result as { rest: Buffer }).rest.toString()).toBe(rest)
  })

  const bad: [string, string][] = [
    ['another word', 'NO 5\n'],
    ['no port', 'OK\n'],
    ['a port beyond 32 bits', 'OK 99999999999\n'],
    ['trailing junk on the line', 'OK 5 x\n'],
    ['no newline for too long', `OK ${'1'.repeat(40)}`],
  ]
  it.each(bad)('refuses %s as control_protocol', (_name, text) => {
    expect(() => new AckDecoder().push(Buffer.from(text))).toThrow(expect.objectContaining({ code: 'control_protocol', step: 'vsock.handshake' }))
  })
})

/** A VMM-side muxer: answers CONNECT for ports whose guest "listens", closes for the others. */
class FakeMuxer {
  readonly server: Server
  readonly seen: string[] = []
  listening = new Set<number>()
  /** What to send instead of a proper OK (to test a broken peer), or 'silent' to never answer. */
  reply: ((port: number) => string[] | 'silent') | undefined
  readonly sockets = new Set<Socket>()

  constructor(readonly path: string) {
    this.server = createServer((s) => {
      this.sockets.add(s)
      s.on('close', () => this.sockets.delete(s))
      let line = ''
      const onData = (d: Buffer) => {
        line += d.toString('latin1')
        const nl = line.indexOf('\n')
        if (nl < 0) return
        s.off('data', onData)
        this.seen.push(line.slice(0, nl + 1))
        void this.#answer(s, Number(/^CONNECT (\d+)$/.exec(line.slice(0, nl))?.[1]))
      }
      s.on('data', onData)
    })
  }

  async #answer(s: Socket, port: number): Promise<void> {
    const custom = this.reply?.(port)
    if (custom === 'silent') return
    if (custom) {
      for (const part of custom) {
        s.write(part)
        await sleep(5)
      }
    } else if (!this.listening.has(port)) {
      s.destroy()
      return
    } else s.write(`OK 1073741824\nhello from ${port}\n`)
    s.on('data', (d: Buffer) => s.write(`echo:${d.toString()}`))
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.path, resolve))
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }
}

function firstData(s: Socket): Promise<string> {
  return new Promise((resolve) => s.once('data', (d: Buffer) => resolve(d.toString())))
}

let dir: string
let n = 0
const muxers: FakeMuxer[] = []
const clients: Socket[] = []

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-vsock-'))
})
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy()
  for (const m of muxers.splice(0)) await m.close()
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

async function muxer(opts: { listen?: boolean } = {}): Promise<FakeMuxer> {
  const m = new FakeMuxer(join(dir, `v${n++}.sock`))
  muxers.push(m)
  if (opts.listen !== false) await m.listen()
  return m
}

describe('connectVsock', () => {
  it('sends CONNECT, waits for OK and hands over a socket that already carries the guest bytes after it', async () => {
    const m = await muxer()
    m.listening.add(1024)
    const s = await connectVsock(m.path, 1024, { timeoutMs: 2000 })
    clients.push(s)
    expect(m.seen).toEqual(['CONNECT 1024\n'])
    // The bytes that came in the same segment as the OK are not lost, even with a listener attached late.
    await sleep(20)
    expect(await firstData(s)).toBe('hello from 1024\n')
    const echoed = firstData(s)
    s.write('ping')
    expect(await echoed).toBe('echo:ping')
  })

  it('reads an OK line split across segments', async () => {
    const m = await muxer()
    m.reply = () => ['O', 'K 5', '\nfirst']
    const s = await connectVsock(m.path, 5, { timeoutMs: 2000 })
    clients.push(s)
    expect(await firstData(s)).toBe('first')
  })

  it('retries while nothing listens on the guest port, and connects once the guest does', async () => {
    const m = await muxer()
    setTimeout(() => m.listening.add(2000), 300)
    const s = await connectVsock(m.path, 2000, { timeoutMs: 5000 })
    clients.push(s)
    expect(m.seen.length).toBeGreaterThan(1)
    expect(new Set(m.seen)).toEqual(new Set(['CONNECT 2000\n']))
  })

  it('waits for the socket to appear', async () => {
    const m = await muxer({ listen: false })
    m.listening.add(7)
    setTimeout(() => void m.listen(), 200)
    const s = await connectVsock(m.path, 7, { timeoutMs: 5000 })
    clients.push(s)
    expect(await firstData(s)).toBe('hello from 7\n')
  })

  it('gives up at the deadline with a TimeoutError that says what it saw', async () => {
    const m = await muxer()
    const err = await connectVsock(m.path, 3, { timeoutMs: 400 }).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'timeout', step: 'vsock.connect' })
    expect((err as Error).message).toMatch(/closed the connection before OK/)
  })

  it('retries a peer that never answers, one attempt at a time', async () => {
    const m = await muxer()
    m.reply = () => 'silent'
    const err = await connectVsock(m.path, 3, { timeoutMs: 700, attemptTimeoutMs: 200 }).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'timeout' })
    expect((err as Error).message).toMatch(/no OK within/)
    expect(m.seen.length).toBeGreaterThanOrEqual(2)
  })

  it('does not retry a peer that answers something else than OK', async () => {
    const m = await muxer()
    m.reply = () => ['HELLO\n']
    await expect(connectVsock(m.path, 3, { timeoutMs: 3000 })).rejects.toMatchObject({ code: 'control_protocol' })
    expect(m.seen).toHaveLength(1)
  })

  it('stops when aborted', async () => {
    const m = await muxer()
    const ac = new AbortController()
    setTimeout(() => ac.abort(new Error('enough')), 150)
    await expect(connectVsock(m.path, 3, { timeoutMs: 5000, signal: ac.signal })).rejects.toMatchObject({ code: 'aborted' })
  })
})
