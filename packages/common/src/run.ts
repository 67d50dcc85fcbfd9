/**
 * The one way to run a short-lived command (ip, tc, nft, mkfs.*, skopeo ...). It never goes
 * through a shell, and a failure carries the argv, exit status and stderr, so the thrown error
 * says why without anyone re-running the command by hand; a program that is not installed is a
 * `tool_missing` error naming the package to install (tools.ts).
 */
import { spawn } from 'node:child_process'
import { Duplex, PassThrough } from 'node:stream'
import { HypemanError } from './errors.js'
import { isNotInstalled, ToolMissingError } from './tools.js'

const STDERR_IN_MESSAGE = 4000

export interface RunOptions {
  input?: string | Buffer
  cwd?: string
  env?: NodeJS.ProcessEnv
  signal?: AbortSignal
  /** Kill the command (SIGKILL) after this many milliseconds. */
  timeoutMs?: number
  /** Exit codes that count as success (default [0]). */
  okCodes?: number[]
  /** Name the lifecycle step this command belongs to, for the error. */
  step?: string
}

export interface RunResult {
  stdout: string
  stderr: string
  code: number
}

export class CommandError extends HypemanError {
  readonly argv: string[]
  readonly exitCode: number | null
  readonly signal: NodeJS.Signals | null
  readonly stderr: string
  readonly timedOut: boolean

  constructor(
    argv: string[],
    result: { exitCode: number | null; signal: NodeJS.Signals | null; stderr: string; timedOut?: boolean; cause?: unknown },
    step?: string,
  ) {
    const how = result.timedOut
      ? 'timed out'
      : result.signal
        ? `was killed by ${result.signal}`
        : result.exitCode === null
          ? 'could not be started'
          : `exited with code ${result.exitCode}`
    const stderr = result.stderr.trim()
    const shown = stderr.length > STDERR_IN_MESSAGE ? `…${stderr.slice(-STDERR_IN_MESSAGE)}` : stderr
    super('command_failed', `${argv.join(' ')} ${how}${shown ? `: ${shown}` : ''}`, {
      ...(step ? { step } : {}),
      cause: result.cause,
    })
    this.argv = argv
    this.exitCode = result.exitCode
    this.signal = result.signal
    this.stderr = result.stderr
    this.timedOut = result.timedOut ?? false
  }
}

export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const argv = [cmd, ...args]
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      signal: opts.signal,
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    const out: Buffer[] = []
    const err: Buffer[] = []
    let timedOut = false
    let spawnError: unknown
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true
            child.kill('SIGKILL')
          }, opts.timeoutMs)
    child.stdout.on('data', (d: Buffer) => out.push(d))
    child.stderr.on('data', (d: Buffer) => err.push(d))
    child.on('error', (e) => {
      spawnError = e
    })
    // A command that exits without reading its stdin must not crash us with EPIPE.
    child.stdin.on('error', () => {})
    child.stdin.end(opts.input ?? '')
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer)
      const stdout = Buffer.concat(out).toString('utf8')
      const stderr = Buffer.concat(err).toString('utf8') || (spawnError ? String(spawnError) : '')
      const ok = (opts.okCodes ?? [0]).includes(code ?? -1) && !timedOut && !spawnError
      if (ok) resolve({ stdout, stderr, code: code ?? 0 })
      else if (isNotInstalled(spawnError, opts.cwd)) reject(new ToolMissingError(cmd, { ...(opts.step ? { step: opts.step } : {}), cause: spawnError }))
      else reject(new CommandError(argv, { exitCode: code, signal, stderr, timedOut, cause: spawnError }, opts.step))
    })
  })
}

/** Runs a command whose stdout is JSON (`ip -j`, `nft -j`, `tc -j`, `qemu-img --output=json`). */
export async function runJson<T = unknown>(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<T> {
  const { stdout } = await run(cmd, args, opts)
  const text = stdout.trim()
  return (text === '' ? null : JSON.parse(text)) as T
}

/**
 * A command as a transform stream (write to its stdin, read its stdout), e.g. `zstd -dc`.
 * The readable side ends only after the command exited 0; otherwise the stream errors with a
 * CommandError, so a consumer never mistakes a failed command's truncated output for the end.
 */
export function commandStream(cmd: string, args: readonly string[], opts: Pick<RunOptions, 'signal' | 'step'> = {}): Duplex {
  const argv = [cmd, ...args]
  const child = spawn(cmd, args, { signal: opts.signal, stdio: ['pipe', 'pipe', 'pipe'] })
  const err: Buffer[] = []
  child.stderr.on('data', (d: Buffer) => err.push(d))
  const output = new PassThrough()
  child.stdout.pipe(output, { end: false })
  const duplex = Duplex.from({ writable: child.stdin, readable: output })
  let spawnError: unknown
  child.on('error', (e) => {
    spawnError = e
  })
  child.stdin.on('error', () => {})
  child.on('close', (code, signal) => {
    if (code === 0 && !spawnError) output.end()
    else if (isNotInstalled(spawnError)) duplex.destroy(new ToolMissingError(cmd, { ...(opts.step ? { step: opts.step } : {}), cause: spawnError }))
    else {
      const stderr = Buffer.concat(err).toString('utf8') || String(spawnError ?? '')
      duplex.destroy(new CommandError(argv, { exitCode: code, signal, stderr, cause: spawnError }, opts.step))
    }
  })
  duplex.on('close', () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  return duplex
}
