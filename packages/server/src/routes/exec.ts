/**
 * GET /instances/{id}/exec over a WebSocket, hypeman's protocol (not in the OpenAPI file):
 *
 * 1. before the upgrade: auth, then the instance is resolved and must be Running or
 *    Initializing, else a plain HTTP 404/409 `{code,message}`;
 * 2. the client's first message is text JSON `{command?, tty?, env?, cwd?, timeout?, wait_for_agent?}`
 *    (`command` defaults to ["/bin/sh"], `timeout` and `wait_for_agent` are seconds);
 * 3. then every client message is stdin, and the program's stdout and stderr come back merged
 *    as binary messages;
 * 4. the server's last message is text `{"exitCode":N}`. A request that could not run the
 *    program gets `Error: …\r\n` as binary and `{"exitCode":127}`, as hypeman sends.
 *
 * The client closing the socket kills the program (SIGKILL to its process group).
 */
import { finished } from 'node:stream/promises'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { RawData, WebSocket } from 'ws'
import { errorMessage, ValidationError } from '@hypeman-ts/common'
import type { ExecProcess } from '@hypeman-ts/core'
import { guestSocketCheck, instanceIdOf, parseFirstMessage, toBuffer } from './guest-socket.js'
import type { RouteContext } from './types.js'

export interface ExecRequest {
  argv: string[]
  tty: boolean
  env?: Record<string, string>
  cwd?: string
  timeoutMs?: number
  connectTimeoutMs?: number
}

/** The first message, checked field by field (it is outside the OpenAPI file, so not checked by schema). */
export function parseExecRequest(text: string): ExecRequest {
  const r = parseFirstMessage(text)
  const out: ExecRequest = { argv: ['/bin/sh'], tty: false }
  if (r.command !== undefined && r.command !== null) {
    if (!Array.isArray(r.command) || r.command.some((c) => typeof c !== 'string')) throw new ValidationError('command', 'must be an array of strings')
    if (r.command.length) out.argv = r.command as string[]
  }
  if (r.tty !== undefined && r.tty !== null) {
    if (typeof r.tty !== 'boolean') throw new ValidationError('tty', 'must be true or false')
    out.tty = r.tty
  }
  if (r.env !== undefined && r.env !== null) {
    if (typeof r.env !== 'object' || Array.isArray(r.env) || Object.values(r.env).some((v) => typeof v !== 'string')) {
      throw new ValidationError('env', 'must be an object of strings')
    }
    out.env = r.env as Record<string, string>
  }
  if (r.cwd !== undefined && r.cwd !== null && r.cwd !== '') {
    if (typeof r.cwd !== 'string') throw new ValidationError('cwd', 'must be a string')
    out.cwd = r.cwd
  }
  const seconds = (field: 'timeout' | 'wait_for_agent'): number | undefined => {
    const v = r[field]
    if (v === undefined || v === null || v === 0) return undefined
    if (!Number.isInteger(v) || (v as number) < 0) throw new ValidationError(field, 'must be a whole number of seconds')
    return (v as number) * 1000
  }
  const timeoutMs = seconds('timeout')
  const connectTimeoutMs = seconds('wait_for_agent')
  if (timeoutMs !== undefined) out.timeoutMs = timeoutMs
  if (connectTimeoutMs !== undefined) out.connectTimeoutMs = connectTimeoutMs
  return out
}

export function registerExec(app: FastifyInstance, { hm }: RouteContext): void {
  app.get(
    '/instances/:id/exec',
    {
      websocket: true,
      preHandler: guestSocketCheck(hm, 'exec'),
    },
    (socket: WebSocket, req: FastifyRequest) => {
      const id = instanceIdOf(req)
      const ac = new AbortController()
      socket.once('close', () => ac.abort())
      socket.once('message', (data: RawData, isBinary: boolean) => {
        // Stdin that arrives while the program is being started waits here, in order.
        const early: Buffer[] = []
        const keep = (d: RawData) => early.push(toBuffer(d))
        socket.on('message', keep)
        if (isBinary) return fail(socket, new ValidationError('request', 'the first message must be JSON text'))
        let request: ExecRequest
        try {
          request = parseExecRequest(toBuffer(data).toString('utf8'))
        } catch (err) {
          return fail(socket, err)
        }
        void run(id, request, early, keep).catch((err: unknown) => fail(socket, err))
      })

      async function run(instanceId: string, r: ExecRequest, early: Buffer[], keep: (d: RawData) => void): Promise<void> {
        const proc: ExecProcess = await hm.instances.execStream(instanceId, {
          argv: r.argv,
          tty: r.tty,
          stdin: true,
          signal: ac.signal,
          ...(r.env ? { env: r.env } : {}),
          ...(r.cwd ? { cwd: r.cwd } : {}),
          ...(r.timeoutMs ? { timeoutMs: r.timeoutMs } : {}),
          ...(r.connectTimeoutMs ? { connectTimeoutMs: r.connectTimeoutMs } : {}),
        })
        socket.off('message', keep)
        // A stdin write that fails (the agent connection dropped) is told through `exit`; unheard,
        // the stream's 'error' event would take the whole server down.
        proc.stdin?.on('error', () => {})
        const toStdin = (chunk: Buffer) => {
          if (proc.stdin?.writable) proc.stdin.write(chunk)
        }
        early.forEach(toStdin)
        socket.on('message', (d: RawData) => toStdin(toBuffer(d)))
        proc.stdout.on('data', forward(socket, proc.stdout))
        proc.stderr.on('data', forward(socket, proc.stderr))
        const exit = await proc.exit
        // Output frames come before the exit frame; let the streams deliver all of it first.
        await Promise.all([finished(proc.stdout), finished(proc.stderr)]).catch(() => {})
        if (socket.readyState !== socket.OPEN) return
        socket.send(JSON.stringify({ exitCode: exit.exitCode }))
        socket.close(1000)
      }
    },
  )
}

/** Past this much unsent output, the program's streams pause (and core pauses the guest agent). */
const HIGH_WATER = 1024 * 1024

/** Output to a client that reads slower than the program writes waits in the guest, not in our memory. */
function forward(socket: WebSocket, stream: NodeJS.ReadableStream): (chunk: Buffer) => void {
  return (chunk) => {
    if (socket.readyState !== socket.OPEN) return
    socket.send(chunk, { binary: true }, () => {
      if (stream.isPaused() && socket.bufferedAmount < HIGH_WATER) stream.resume()
    })
    if (socket.bufferedAmount >= HIGH_WATER) stream.pause()
  }
}

function fail(socket: WebSocket, err: unknown): void {
  if (socket.readyState !== socket.OPEN) return
  socket.send(Buffer.from(`Error: ${errorMessage(err)}\r\n`), { binary: true })
  socket.send(JSON.stringify({ exitCode: 127 }))
  socket.close(1000)
}
