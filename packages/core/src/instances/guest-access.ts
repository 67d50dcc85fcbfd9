/**
 * Access to a running guest: exec and stat through the guest agent (refused at once unless the
 * instance is Running or Initializing), and the logs of every source.
 */
import { ValidationError } from '@hypeman-ts/common'
import {
  checkExecSize,
  followLog,
  GuestAgentClient,
  tailLines,
  type ExecOptions,
  type ExecProcess,
  type ExecResult,
  type PathInfo,
} from '../guest/index.js'
import type { InstanceContext } from './context.js'
import { recordFor } from './view.js'

export interface ExecParams extends Omit<ExecOptions, 'stdin'> {
  /** Bytes for the program's stdin (closed afterwards); omit for /dev/null. */
  stdin?: string | Buffer
  /** How long to wait for the guest agent to answer (a booting guest). Default 30 s. */
  connectTimeoutMs?: number
}

export type LogSource = 'app' | 'vmm' | 'hypeman' | 'console'

export interface LogOptions {
  source?: LogSource
  /** Lines from the end to start with. Default 100. */
  tail?: number
  /** Keep streaming new lines until `signal` aborts. */
  follow?: boolean
  signal?: AbortSignal
}

/** A connection to the instance's agent, once `op` is allowed in its state. */
export async function agent(cx: InstanceContext, idOrName: string, op: 'exec' | 'stat' | 'copy', connectTimeoutMs?: number): Promise<GuestAgentClient> {
  const { id } = await cx.find(idOrName)
  const record = await recordFor(cx, id, op)
  return GuestAgentClient.connect({
    socketPath: cx.files.paths(record.id).agentSocket,
    skipGuestAgent: record.spec.skipGuestAgent,
    timeoutMs: connectTimeoutMs ?? 30_000,
    logger: cx.logger,
  })
}

/** Runs a program in the guest and collects its output and exit code. */
export async function exec(cx: InstanceContext, idOrName: string, params: ExecParams): Promise<ExecResult> {
  const { stdin, connectTimeoutMs, ...req } = params
  checkExecSize([{ field: 'argv', values: Array.isArray(req.argv) ? req.argv : [] }], req.env ?? {})
  const client = await agent(cx, idOrName, 'exec', connectTimeoutMs)
  try {
    const proc = client.exec({ ...req, stdin: stdin !== undefined })
    if (proc.stdin) proc.stdin.end(stdin)
    const out: Buffer[] = []
    const err: Buffer[] = []
    proc.stdout.on('data', (d: Buffer) => out.push(d))
    proc.stderr.on('data', (d: Buffer) => err.push(d))
    const exit = await proc.exit
    return { ...exit, stdout: Buffer.concat(out), stderr: Buffer.concat(err) }
  } finally {
    client.close()
  }
}

/** Runs a program in the guest with live streams; the connection closes when it exits. */
export async function execStream(cx: InstanceContext, idOrName: string, params: ExecOptions & { connectTimeoutMs?: number }): Promise<ExecProcess> {
  const { connectTimeoutMs, ...req } = params
  checkExecSize([{ field: 'argv', values: Array.isArray(req.argv) ? req.argv : [] }], req.env ?? {})
  const client = await agent(cx, idOrName, 'exec', connectTimeoutMs)
  const proc = client.exec(req)
  void proc.exit.finally(() => client.close()).catch(() => {})
  return proc
}

export async function stat(cx: InstanceContext, idOrName: string, path: string, opts: { followLinks?: boolean } = {}): Promise<PathInfo> {
  if (typeof path !== 'string' || !path.startsWith('/')) throw new ValidationError('path', 'must be an absolute path')
  const client = await agent(cx, idOrName, 'stat')
  try {
    return await client.stat(path, opts)
  } finally {
    client.close()
  }
}

/** Log lines: the program's output (app), the VMM's (vmm), our operations (hypeman), kernel console. */
export async function* logs(cx: InstanceContext, idOrName: string, opts: LogOptions = {}): AsyncGenerator<string> {
  const record = await cx.find(idOrName)
  const paths = cx.files.paths(record.id)
  const source = opts.source ?? 'app'
  const file = { app: paths.appLog, vmm: paths.vmmLog, hypeman: paths.hypemanLog, console: paths.consoleLog }[source]
  if (!file) throw new ValidationError('source', 'must be app, vmm, hypeman or console')
  const tail = opts.tail ?? 100
  if (opts.follow) {
    if (!opts.signal) throw new ValidationError('signal', 'follow needs an AbortSignal to end it')
    yield* followLog(file, { signal: opts.signal, tail })
    return
  }
  yield* await tailLines(file, tail)
}
