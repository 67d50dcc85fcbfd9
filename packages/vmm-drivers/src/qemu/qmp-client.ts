/**
 * A QMP client over a unix socket: connect (retrying until the socket exists, giving up at the
 * deadline or when the signal fires), the capabilities handshake, commands matched to replies by
 * id, and an event stream. The framing lives in qmp-codec.ts.
 *
 * QEMU serves one client per QMP socket: a second client's connect succeeds but no greeting
 * ever comes, so it fails at the deadline with a message saying so.
 */
import { createConnection, type Socket } from 'node:net'
import { errorMessage, pollUntil, TimeoutError, withDeadline } from '@hypeman-ts/common'
import { QmpCommandError, VmmError } from '../errors.js'
import { encodeQmpCommand, QmpDecoder, type QmpEvent, type QmpGreeting, type QmpMessage } from './qmp-codec.js'

export interface QmpConnectOptions {
  /** Absolute time (Date.now() scale) to give up at. */
  deadline: number
  /** Abort the connect, e.g. because the VMM process exited. */
  signal?: AbortSignal
}

export interface QmpExecuteOptions {
  /** Default 30 s. */
  timeoutMs?: number
}

interface Pending {
  command: string
  resolve: (value: unknown) => void
  reject: (err: Error) => void
}

const RETRYABLE = new Set(['ENOENT', 'ECONNREFUSED', 'EAGAIN'])

function connectOnce(path: string): Promise<Socket | undefined> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(path)
    const onError = (err: NodeJS.ErrnoException) => {
      socket.destroy()
      if (err.code && RETRYABLE.has(err.code)) resolve(undefined)
      else reject(new VmmError('control_closed', `cannot connect to QMP socket ${path}: ${err.message}`, { step: 'qmp.connect', cause: err }))
    }
    socket.once('error', onError)
    socket.once('connect', () => {
      socket.off('error', onError)
      resolve(socket)
    })
  })
}

export class QmpClient {
  readonly path: string
  readonly closed: Promise<void>
  #socket: Socket
  #decoder = new QmpDecoder()
  #pending = new Map<string, Pending>()
  #listeners = new Set<(event: QmpEvent) => void>()
  #nextId = 1
  #greeting: Promise<QmpGreeting>
  #closeError: Error | undefined
  #isClosed = false
  #greetingValue: QmpGreeting | undefined

  private constructor(path: string, socket: Socket) {
    this.path = path
    this.#socket = socket
    let onGreeting!: (g: QmpGreeting) => void
    let onGreetingError!: (err: Error) => void
    this.#greeting = new Promise((resolve, reject) => {
      onGreeting = resolve
      onGreetingError = reject
    })
    this.#greeting.catch(() => {})
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.#isClosed = true
        const err =
          this.#closeError ?? new VmmError('control_closed', `QMP connection ${path} closed`, { step: 'qmp' })
        onGreetingError(err)
        for (const p of this.#pending.values()) p.reject(err)
        this.#pending.clear()
        resolve()
      })
    })
    socket.on('error', (err) => {
      this.#closeError ??= new VmmError('control_closed', `QMP connection ${path} failed: ${err.message}`, { step: 'qmp', cause: err })
    })
    socket.on('data', (chunk: Buffer) => {
      let messages: QmpMessage[]
      try {
        messages = this.#decoder.push(chunk)
      } catch (err) {
        this.#closeError = err as Error
        socket.destroy()
        return
      }
      for (const msg of messages) this.#dispatch(msg, onGreeting)
    })
  }

  /** Connects, reads the greeting and negotiates capabilities; ready for commands when it resolves. */
  static async connect(path: string, opts: QmpConnectOptions): Promise<QmpClient> {
    // Polled often: QEMU's socket appears ≈ 80–100 ms after the spawn, and a backed-off poll
    // would notice it up to one interval late (tens of ms on every start). A failed connect is cheap.
    const socket = await pollUntil(() => connectOnce(path), {
      deadline: opts.deadline,
      intervalMs: 2,
      maxIntervalMs: 5,
      ...(opts.signal ? { signal: opts.signal } : {}),
      what: `QMP socket ${path}`,
      step: 'qmp.connect',
    })
    const client = new QmpClient(path, socket)
    try {
      const left = Math.max(1, opts.deadline - Date.now())
      try {
        client.#greetingValue = await withDeadline(client.#greeting, left, `the QMP greeting on ${path}`, 'qmp.greeting', opts.signal)
      } catch (err) {
        if (err instanceof TimeoutError) {
          throw new TimeoutError(`no QMP greeting on ${path} (is another client connected?)`, { step: 'qmp.greeting' })
        }
        throw err
      }
      await withDeadline(client.execute('qmp_capabilities'), Math.max(1, opts.deadline - Date.now()), 'qmp_capabilities', 'qmp.capabilities', opts.signal)
      return client
    } catch (err) {
      client.destroy()
      throw err
    }
  }

  get greeting(): QmpGreeting {
    return this.#greetingValue as QmpGreeting
  }

  get isClosed(): boolean {
    return this.#isClosed
  }

  /** Runs a command; resolves with its `return` value, rejects with QmpCommandError for a QMP error. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: QmpExecuteOptions = {}): Promise<T> {
    if (this.#isClosed) {
      return Promise.reject(new VmmError('control_closed', `QMP connection ${this.path} is closed`, { step: `qmp.${command}` }))
    }
    const id = `hm-${this.#nextId++}`
    const reply = new Promise<unknown>((resolve, reject) => {
      this.#pending.set(id, { command, resolve, reject })
    })
    this.#socket.write(encodeQmpCommand(command, args, id))
    const timeoutMs = opts.timeoutMs ?? 30_000
    return withDeadline(reply, timeoutMs, `the reply to QMP ${command}`, `qmp.${command}`).finally(() => {
      this.#pending.delete(id)
    }) as Promise<T>
  }

  /** Subscribes to QMP events; returns the unsubscribe function. */
  onEvent(listener: (event: QmpEvent) => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  /** Closes the connection (the VMM keeps running) and waits until it is closed. */
  async close(): Promise<void> {
    this.#socket.end()
    const timer = setTimeout(() => this.#socket.destroy(), 1000)
    await this.closed
    clearTimeout(timer)
  }

  destroy(): void {
    this.#socket.destroy()
  }

  #dispatch(msg: QmpMessage, onGreeting: (g: QmpGreeting) => void): void {
    switch (msg.type) {
      case 'greeting':
        onGreeting(msg)
        return
      case 'event':
        for (const l of this.#listeners) {
          try {
            l(msg)
          } catch (err) {
            // A listener's bug must not break the connection for everyone else.
            process.emitWarning(`QMP event listener threw: ${errorMessage(err)}`)
          }
        }
        return
      case 'return':
      case 'error': {
        const p = typeof msg.id === 'string' ? this.#pending.get(msg.id) : undefined
        if (!p) return
        this.#pending.delete(msg.id as string)
        if (msg.type === 'return') p.resolve(msg.value)
        else p.reject(new QmpCommandError(p.command, msg.errorClass, msg.desc, { step: `qmp.${p.command}` }))
      }
    }
  }
}
