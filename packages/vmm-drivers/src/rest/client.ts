/**
 * The REST transport of Cloud Hypervisor and Firecracker: HTTP/1.1 over the VMM's unix socket,
 * through undici. It only sends calls that a planner made (`ApiCall`: method, path, body) and
 * turns every way a call can go wrong into a typed error: an error status carries the VMM's own
 * error body (`VmmApiError`), a deadline is a `TimeoutError`, a socket that is gone or refuses
 * is `control_closed`, an abort is an `AbortedError`. Each call has a deadline.
 */
import { stat } from 'node:fs/promises'
import { AbortedError, errorMessage, pollUntil, TimeoutError } from '@hypeman-ts/common'
import { Client } from 'undici'
import { VmmApiError, VmmError } from '../errors.js'

export type ApiMethod = 'GET' | 'PUT' | 'PATCH'

/** One request of a VMM's API, as data. `op` names it for errors and logs (the spec's operation). */
export interface ApiCall {
  op: string
  method: ApiMethod
  /** The path as the spec writes it, without the API's base path (`/vm.create`, `/drives/disk0`). */
  path: string
  body?: unknown
}

export interface RestClientOptions {
  /** Prefix of every path on the wire: `/api/v1` for Cloud Hypervisor, none for Firecracker. */
  basePath?: string
  /** Deadline of one call when the caller gives none. Default 10 s. */
  timeoutMs?: number
  /**
   * Checks a call before it is sent and throws when it is wrong (tests plug the API spec in
   * here, so a request that would not validate never reaches the VMM).
   */
  check?: (call: ApiCall) => void
  /** For errors: `firecracker`, `cloud-hypervisor`. */
  name?: string
}

export interface CallOptions {
  timeoutMs?: number
  signal?: AbortSignal
}

const DEFAULT_TIMEOUT_MS = 10_000
const MESSAGE_MAX = 2000

/** The error codes of a socket that is not (or no longer) there: worth another try while a VMM starts. */
const GONE_CODES = new Set(['ENOENT', 'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_DESTROYED'])

function errCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown })?.code
  if (typeof code === 'string') return code
  const cause = (err as { cause?: unknown })?.cause
  return cause && cause !== err ? errCode(cause) : undefined
}

/** The VMM's words in an error body: Firecracker's `fault_message`, or the text Cloud Hypervisor sends. */
export function vmmMessageOf(body: unknown): string {
  let text: string
  if (typeof body === 'string') text = body
  else if (body && typeof body === 'object' && typeof (body as { fault_message?: unknown }).fault_message === 'string') {
    text = (body as { fault_message: string }).fault_message
  } else if (body === undefined || body === null) text = ''
  else text = JSON.stringify(body)
  text = text.trim()
  return text.length > MESSAGE_MAX ? `${text.slice(0, MESSAGE_MAX)}…` : text
}

/** A response body: JSON when it parses as JSON, else its text; `undefined` when empty. */
export function parseBody(text: string): unknown {
  if (text.trim() === '') return undefined
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}

export class RestClient {
  readonly socketPath: string
  readonly #client: Client
  readonly #opts: RestClientOptions
  #closed = false

  constructor(socketPath: string, opts: RestClientOptions = {}) {
    this.socketPath = socketPath
    this.#opts = opts
    // One request at a time, as the VMMs serve their API: a call never waits behind a pipelined one.
    this.#client = new Client('http://localhost', { socketPath, pipelining: 1, connect: { timeout: 5_000 } })
  }

  get #name(): string {
    return this.#opts.name ?? 'VMM'
  }

  /** Sends one call; resolves with the parsed body of a 2xx answer (`undefined` for 204). */
  async call<T = unknown>(call: ApiCall, opts: CallOptions = {}): Promise<T> {
    const step = `${this.#opts.name ?? 'rest'}.${call.op}`
    if (this.#closed) throw new VmmError('control_closed', `${call.method} ${call.path}: the API client was closed`, { step })
    this.#opts.check?.(call)
    const timeoutMs = opts.timeoutMs ?? this.#opts.timeoutMs ?? DEFAULT_TIMEOUT_MS
    const timeout = AbortSignal.timeout(timeoutMs)
    const signal = opts.signal ? AbortSignal.any([timeout, opts.signal]) : timeout
    const hasBody = call.body !== undefined
    let status: number
    let text: string
    try {
      const res = await this.#client.request({
        method: call.method,
        path: `${this.#opts.basePath ?? ''}${call.path}`,
        headers: { accept: 'application/json', ...(hasBody ? { 'content-type': 'application/json' } : {}) },
        ...(hasBody ? { body: JSON.stringify(call.body) } : {}),
        signal,
      })
      status = res.statusCode
      text = await res.body.text()
    } catch (err) {
      if (opts.signal?.aborted) throw new AbortedError(`${step}: aborted`, { step, cause: opts.signal.reason })
      if (timeout.aborted) {
        throw new TimeoutError(`${this.#name} did not answer ${call.method} ${call.path} within ${timeoutMs} ms`, { step, cause: err })
      }
      const code = errCode(err)
      if (this.#closed || (code !== undefined && GONE_CODES.has(code))) {
        throw new VmmError('control_closed', `${this.#name} API at ${this.socketPath} is not answering (${code ?? errorMessage(err)})`, {
          step,
          cause: err,
          details: { errno: code },
        })
      }
      throw new VmmError('control_protocol', `${call.method} ${call.path} failed: ${errorMessage(err)}`, { step, cause: err })
    }
    const body = parseBody(text)
    if (status < 200 || status >= 300) {
      throw new VmmApiError(call, status, body, vmmMessageOf(body), { step, details: { status, body } })
    }
    return body as T
  }

  /**
   * Readiness: the socket file exists and `probe` answers 2xx, before `deadline`. Stops at once
   * when `signal` fires (a start wires it to the process's exit). The TimeoutError says what the
   * last attempt saw.
   */
  async waitReady<T = unknown>(probe: ApiCall, opts: { deadline: number; signal?: AbortSignal; step?: string }): Promise<T> {
    const step = opts.step ?? `${this.#opts.name ?? 'rest'}.ready`
    let last = 'the socket does not exist yet'
    try {
      return await pollUntil<{ body: T }>(
        async () => {
          const s = await stat(this.socketPath).catch(() => undefined)
          if (!s?.isSocket()) {
            last = s ? `${this.socketPath} is not a socket` : 'the socket does not exist yet'
            return undefined
          }
          const left = opts.deadline - Date.now()
          try {
            return { body: await this.call<T>(probe, { timeoutMs: Math.max(50, Math.min(1000, left)), ...(opts.signal ? { signal: opts.signal } : {}) }) }
          } catch (err) {
            if (err instanceof AbortedError) throw err
            if (err instanceof TimeoutError || err instanceof VmmApiError || (err instanceof VmmError && err.code === 'control_closed')) {
              last = err.message
              return undefined
            }
            throw err
          }
        },
        { deadline: opts.deadline, ...(opts.signal ? { signal: opts.signal } : {}), what: `the ${this.#name} API at ${this.socketPath}`, step },
      ).then((r) => r.body)
    } catch (err) {
      if (err instanceof TimeoutError) throw new TimeoutError(`${err.message} (last: ${last})`, { step, cause: err })
      throw err
    }
  }

  /** Lets calls in flight finish, then closes the connection. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#client.close().catch(() => {})
  }

  /** Drops the connection now; calls in flight fail with control_closed. */
  destroy(): void {
    if (this.#closed) return
    this.#closed = true
    this.#client.destroy().catch(() => {})
  }
}
