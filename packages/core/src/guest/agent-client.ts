/**
 * Host side of the guest agent: one connection per instance to the `hypeman.agent` port's unix
 * socket (QEMU is the server and accepts one client at a time, so share the client), many
 * concurrent exec/stat requests multiplexed over it by stream id.
 */
import { randomBytes } from 'node:crypto'
import { connect as netConnect, type Socket } from 'node:net'
import { PassThrough, Writable } from 'node:stream'
import { constants as osConstants } from 'node:os'
import { AbortedError, pollUntil, silentLogger, TimeoutError, type Logger } from '@hypeman-ts/common'
import {
  decodeError,
  decodeExit,
  decodeStatResult,
  encodeExecRequest,
  type AgentBuiltin,
  encodeFrame,
  encodeHello,
  encodeResize,
  encodeSignal,
  encodeStatRequest,
  FrameDecoder,
  FrameType,
  type ExecExit,
  type ExecRequest,
  type Frame,
  type PathInfo,
} from './agent-protocol.js'
import { GuestError } from './errors.js'
import { TlvView } from './tlv.js'

const STDIN_CHUNK = 64 * 1024
const RETRY_MS = 50

export interface AgentConnectOptions {
  /** The unix socket of the instance's `hypeman.agent` port. */
  socketPath: string
  /** The instance was created with skipGuestAgent: fail at once, nothing in the guest would answer. */
  skipGuestAgent?: boolean
  /** How long to keep trying while the guest boots. Default 30 s. */
  timeoutMs?: number
  signal?: AbortSignal
  logger?: Logger
}

export interface ExecOptions extends ExecRequest {
  /** Aborting sends SIGKILL to the program; `exit` then reports how it ended. */
  signal?: AbortSignal
}

export interface ExecResult extends ExecExit {
  stdout: Buffer
  stderr: Buffer
}

type Pending = { onFrame(f: Frame): void; onClose(err: Error): void }

function signalNumber(sig: number | NodeJS.Signals): number {
  if (typeof sig === 'number') return sig
  const n = osConstants.signals[sig]
  if (n === undefined) throw new RangeError(`unknown signal ${sig}`)
  return n
}

/** A running `exec`: streams in both directions, the pid once started, the exit once ended. */
export class ExecProcess {
  readonly stdout = new PassThrough()
  readonly stderr = new PassThrough()
  /** Present when the request set `stdin: true`; ending it closes the program's stdin. */
  readonly stdin: Writable | null
  /** The guest pid, or undefined when the program could not be started (see `exit`). */
  readonly pid: Promise<number | undefined>
  readonly exit: Promise<ExecExit>
  private resolvePid!: (pid: number | undefined) => void
  private resolveExit!: (e: ExecExit) => void
  private rejectExit!: (e: Error) => void
  private done = false

  constructor(
    private readonly client: GuestAgentClient,
    readonly id: number,
    req: ExecOptions,
  ) {
    this.pid = new Promise((r) => (this.resolvePid = r))
    this.exit = new Promise((res, rej) => {
      this.resolveExit = res
      this.rejectExit = rej
    })
    // Callers that only await `exit` must not see an unhandled rejection from the pid promise.
    this.exit.catch(() => {})
    this.stdin = req.stdin
      ? new Writable({
          write: (chunk: Buffer, _enc, cb) => this.client.sendStdin(this.id, chunk, cb),
          final: (cb) => this.client.sendRaw(FrameType.Stdin, this.id, Buffer.alloc(0), cb),
        })
      : null
    if (req.signal) {
      const onAbort = () => this.kill('SIGKILL')
      if (req.signal.aborted) queueMicrotask(onAbort)
      else req.signal.addEventListener('abort', onAbort, { once: true })
      this.exit.finally(() => req.signal?.removeEventListener('abort', onAbort)).catch(() => {})
    }
  }

  kill(sig: number | NodeJS.Signals = 'SIGTERM'): void {
    if (!this.done) this.client.sendRaw(FrameType.Signal, this.id, encodeSignal(signalNumber(sig)))
  }

  resize(rows: number, cols: number): void {
    if (!this.done) this.client.sendRaw(FrameType.Resize, this.id, encodeResize(rows, cols))
  }

  /** @internal */
  handle(f: Frame): boolean {
    switch (f.type) {
      case FrameType.Started:
        this.resolvePid(TlvView.decode(f.payload).int('pid'))
        return false
      case FrameType.Stdout:
        return this.client.pushOutput(this.stdout, f.payload)
      case FrameType.Stderr:
        return this.client.pushOutput(this.stderr, f.payload)
      case FrameType.Exit:
        this.finish()
        this.resolvePid(undefined)
        this.resolveExit(decodeExit(f.payload))
        return true
      case FrameType.Error: {
        const e = decodeError(f.payload)
        this.fail(new GuestError('agent_request_failed', `exec failed in the guest: ${e.code}: ${e.message}`, { details: { agentCode: e.code } }))
        return true
      }
      default:
        return false
    }
  }

  /** @internal */
  fail(err: Error): void {
    if (this.done) return
    this.done = true
    this.resolvePid(undefined)
    // The error is reported once, through `exit`: a stream destroyed with it would crash a caller
    // that only awaits `exit` (an 'error' event nobody listens to). Readers see the streams close early.
    this.stdout.destroy()
    this.stderr.destroy()
    this.stdin?.destroy()
    this.rejectExit(err)
  }

  private finish(): void {
    this.done = true
    this.stdout.end()
    this.stderr.end()
    this.stdin?.destroy()
  }
}

export class GuestAgentClient {
  /** The agent's protocol version, from its HELLO_ACK. */
  readonly version: string
  private readonly decoder = new FrameDecoder()
  private readonly pending = new Map<number, Pending>()
  private readonly blocked = new Set<PassThrough>()
  private nextId = 1
  private closedErr: Error | undefined

  private constructor(
    private readonly socket: Socket,
    version: string,
    private readonly logger: Logger,
  ) {
    this.version = version
    socket.on('data', (chunk: Buffer) => this.onData(chunk))
    socket.on('close', () => this.onClose(new GuestError('agent_disconnected', 'the guest agent connection closed')))
    socket.on('error', (err) => this.onClose(new GuestError('agent_disconnected', `the guest agent connection failed: ${err.message}`, { cause: err })))
    socket.resume()
  }

  /**
   * Connects and handshakes (HELLO with a nonce; anything before the matching HELLO_ACK is a stale
   * reply to an earlier connection and is dropped). Retries until the deadline while the guest boots.
   */
  static async connect(opts: AgentConnectOptions): Promise<GuestAgentClient> {
    if (opts.skipGuestAgent) {
      throw new GuestError('agent_disabled', 'the guest agent is disabled for this instance (skipGuestAgent: true): exec and stat are unavailable')
    }
    const timeoutMs = opts.timeoutMs ?? 30_000
    const deadline = Date.now() + timeoutMs
    let lastError = 'no connection'
    try {
      return await pollUntil(
        async () => {
          const socket = await openSocket(opts.socketPath).catch((err: NodeJS.ErrnoException) => {
            lastError = `${opts.socketPath}: ${err.code ?? err.message}`
            return undefined
          })
          if (!socket) return undefined
          try {
            const version = await handshake(socket, deadline - Date.now(), opts.signal)
            return new GuestAgentClient(socket, version, opts.logger ?? silentLogger)
          } catch (err) {
            socket.destroy()
            if (err instanceof AbortedError) throw err
            lastError = (err as Error).message
            return undefined
          }
        },
        {
          deadline,
          ...(opts.signal ? { signal: opts.signal } : {}),
          intervalMs: RETRY_MS,
          maxIntervalMs: RETRY_MS,
          what: `the guest agent on ${opts.socketPath}`,
          step: 'agent.connect',
        },
      )
    } catch (err) {
      if (!(err instanceof TimeoutError)) throw err
      throw new GuestError(
        'agent_unreachable',
        `no answer from the guest agent on ${opts.socketPath} within ${timeoutMs} ms (${lastError}); the guest may still be booting, have stopped, or another client holds the port`,
      )
    }
  }

  get closed(): boolean {
    return this.closedErr !== undefined
  }

  async ping(opts: { timeoutMs?: number } = {}): Promise<{ version: string; rttMs: number }> {
    const t0 = performance.now()
    const f = await this.request(FrameType.Ping, Buffer.alloc(0), FrameType.Pong, opts.timeoutMs ?? 10_000)
    return { version: TlvView.decode(f.payload).str('version') ?? '', rttMs: performance.now() - t0 }
  }

  /** stat/lstat in the workload's filesystem, as the spec's PathInfo. */
  async stat(path: string, opts: { followLinks?: boolean; timeoutMs?: number } = {}): Promise<PathInfo> {
    const f = await this.request(FrameType.Stat, encodeStatRequest(path, opts.followLinks ?? false), FrameType.StatResult, opts.timeoutMs ?? 10_000)
    return decodeStatResult(f.payload)
  }

  /** Starts a program in the guest; read its streams and await `exit`. */
  exec(req: ExecOptions): ExecProcess {
    if (!Array.isArray(req.argv) || req.argv.length === 0 || !req.argv[0]) throw new RangeError('exec: argv must name a program')
    return this.#start(req)
  }

  /**
   * Runs a built-in of the agent (file copy, volume mounts: guest/src/files.h) as an exec session, as root in
   * `/`, so it works on images with no shell or tools; `args` are its arguments.
   */
  builtin(name: AgentBuiltin, args: string[], opts: { stdin?: boolean; signal?: AbortSignal; timeoutMs?: number } = {}): ExecProcess {
    return this.#start({ argv: args, user: '0', cwd: '/', ...opts }, name)
  }

  #start(req: ExecOptions, builtin?: AgentBuiltin): ExecProcess {
    const id = this.allocId()
    const proc = new ExecProcess(this, id, req)
    if (this.closedErr) {
      proc.fail(this.closedErr)
      return proc
    }
    this.pending.set(id, {
      onFrame: (f) => {
        if (proc.handle(f)) this.pending.delete(id)
      },
      onClose: (err) => proc.fail(err),
    })
    this.sendRaw(FrameType.Exec, id, encodeExecRequest(req, builtin))
    return proc
  }

  /** exec, feeding `input` (if any) to stdin and collecting the output. */
  async run(req: ExecOptions & { input?: string | Buffer }): Promise<ExecResult> {
    const { input, ...rest } = req
    const proc = this.exec({ ...rest, stdin: rest.stdin || input !== undefined })
    const out: Buffer[] = []
    const err: Buffer[] = []
    proc.stdout.on('data', (d: Buffer) => out.push(d))
    proc.stderr.on('data', (d: Buffer) => err.push(d))
    proc.stdout.on('error', () => {})
    proc.stderr.on('error', () => {})
    if (proc.stdin) {
      proc.stdin.on('error', () => {})
      proc.stdin.end(input ?? '')
    }
    const exit = await proc.exit
    return { ...exit, stdout: Buffer.concat(out), stderr: Buffer.concat(err) }
  }

  close(): void {
    this.socket.end()
    this.socket.destroy()
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close()
  }

  /** @internal */
  sendRaw(type: number, id: number, payload: Buffer, cb?: (err?: Error | null) => void): void {
    if (this.closedErr) {
      cb?.(this.closedErr)
      return
    }
    this.socket.write(encodeFrame(type, id, payload), cb)
  }

  /** @internal Splits stdin into frames no larger than the guest wants to buffer at once. */
  sendStdin(id: number, chunk: Buffer, cb: (err?: Error | null) => void): void {
    if (chunk.length === 0) return cb()
    for (let off = 0; off < chunk.length; off += STDIN_CHUNK) {
      const last = off + STDIN_CHUNK >= chunk.length
      this.sendRaw(FrameType.Stdin, id, chunk.subarray(off, off + STDIN_CHUNK), last ? cb : undefined)
    }
  }

  /** @internal A slow reader of one stream pauses the whole connection (the guest then stops reading). */
  pushOutput(stream: PassThrough, data: Buffer): false {
    if (!stream.write(data) && !this.blocked.has(stream)) {
      this.blocked.add(stream)
      this.socket.pause()
      stream.once('drain', () => {
        this.blocked.delete(stream)
        if (this.blocked.size === 0) this.socket.resume()
      })
    }
    return false
  }

  private allocId(): number {
    const id = this.nextId
    this.nextId = this.nextId >= 0xfffffff0 ? 1 : this.nextId + 1
    return id
  }

  private request(type: number, payload: Buffer, replyType: number, timeoutMs: number): Promise<Frame> {
    if (this.closedErr) return Promise.reject(this.closedErr)
    const id = this.allocId()
    return new Promise<Frame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new GuestError('agent_unreachable', `the guest agent did not answer within ${timeoutMs} ms`))
      }, timeoutMs)
      this.pending.set(id, {
        onFrame: (f) => {
          if (f.type !== replyType && f.type !== FrameType.Error) return
          clearTimeout(timer)
          this.pending.delete(id)
          if (f.type === replyType) resolve(f)
          else {
            const e = decodeError(f.payload)
            reject(new GuestError('agent_request_failed', `${e.code}: ${e.message}`, { details: { agentCode: e.code } }))
          }
        },
        onClose: (err) => {
          clearTimeout(timer)
          reject(err)
        },
      })
      this.sendRaw(type, id, payload)
    })
  }

  private onData(chunk: Buffer): void {
    let frames: Frame[]
    try {
      frames = this.decoder.push(chunk)
    } catch (err) {
      this.logger.error('guest agent protocol error', { error: (err as Error).message })
      this.onClose(err as Error)
      this.socket.destroy()
      return
    }
    for (const f of frames) {
      const p = this.pending.get(f.id)
      if (p) p.onFrame(f)
      else if (f.type === FrameType.Error) this.logger.warn('guest agent error', decodeError(f.payload) as unknown as Record<string, unknown>)
    }
  }

  private onClose(err: Error): void {
    if (this.closedErr) return
    this.closedErr = err
    for (const p of this.pending.values()) p.onClose(err)
    this.pending.clear()
  }
}

function openSocket(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = netConnect(path)
    s.once('connect', () => {
      s.removeListener('error', reject)
      resolve(s)
    })
    s.once('error', reject)
  })
}

function handshake(socket: Socket, timeoutMs: number, signal?: AbortSignal): Promise<string> {
  const nonce = randomBytes(12).toString('hex')
  const decoder = new FrameDecoder()
  return new Promise<string>((resolve, reject) => {
    const cleanup = () => {
      clearTimeout(timer)
      socket.removeListener('data', onData)
      socket.removeListener('close', onClose)
      socket.removeListener('error', onClose)
      signal?.removeEventListener('abort', onAbort)
    }
    const timer = setTimeout(() => {
      cleanup()
      reject(new Error('no HELLO_ACK before the deadline'))
    }, Math.max(timeoutMs, 1))
    const onData = (chunk: Buffer) => {
      try {
        for (const f of decoder.push(chunk)) {
          if (f.type !== FrameType.HelloAck) continue
          const v = TlvView.decode(f.payload)
          if (v.str('nonce') !== nonce) continue
          cleanup()
          // Paused until the client attaches its own reader, so no later byte is lost in between.
          socket.pause()
          resolve(v.str('version') ?? '')
          return
        }
      } catch (err) {
        cleanup()
        reject(err)
      }
    }
    const onClose = () => {
      cleanup()
      reject(new Error('connection closed during the handshake'))
    }
    const onAbort = () => {
      cleanup()
      reject(new AbortedError('connecting to the guest agent: aborted', { cause: signal?.reason }))
    }
    socket.on('data', onData)
    socket.once('close', onClose)
    socket.once('error', onClose)
    signal?.addEventListener('abort', onAbort, { once: true })
    socket.write(encodeFrame(FrameType.Hello, 0, encodeHello(nonce)))
  })
}
