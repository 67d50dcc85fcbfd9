/**
 * The VMM process: spawned detached in its own session so it outlives the Node process that
 * started it, with stdout/stderr going to a log file (never a pipe, which would die with us).
 * A process is named by pid plus its start time, so a recycled pid is never taken for the VMM.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { open, readdir, readFile } from 'node:fs/promises'
import { isNotInstalled, pollUntil, processAlive, TimeoutError, ToolMissingError } from '@hypeman-ts/common'
import { VmmError } from './errors.js'

export interface ProcessExit {
  /** Null when killed by a signal, or when we are not the parent and cannot know. */
  code: number | null
  signal: string | null
}

export interface SpawnedProcess {
  pid: number
  startTime: number
  child: ChildProcess
}

/** Spawns `cmd` detached, output appended to `logPath`; resolves once the process exists. */
export async function spawnDetached(cmd: string, args: readonly string[], logPath: string, step: string): Promise<SpawnedProcess> {
  const log = await open(logPath, 'a', 0o644)
  let child: ChildProcess
  let startTime: number | undefined
  try {
    child = spawn(cmd, args, { detached: true, stdio: ['ignore', log.fd, log.fd] })
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve)
      child.once('error', reject)
    })
    // Before any further event-loop turn, while even a process that died at once is still unreaped.
    startTime = readStartTime(child.pid as number)
  } catch (err) {
    if (isNotInstalled(err)) throw new ToolMissingError(cmd, { step, cause: err })
    throw new VmmError('vmm_start_failed', `could not start ${cmd}: ${(err as Error).message}`, { step, cause: err })
  } finally {
    await log.close()
  }
  // We still learn the exit status while we live, but the VMM must not keep us alive.
  child.unref()
  // 0 only if the process was already gone: it then matches no live process, and the caller's
  // watch on the child reports the exit with the VMM's own output.
  return { pid: child.pid as number, startTime: startTime ?? 0, child }
}

/** Field 22 of /proc/<pid>/stat: the process start time in clock ticks since boot. */
export function readStartTime(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the parenthesised command name (which may contain spaces) start at field 3.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const value = Number(fields[19])
    return Number.isSafeInteger(value) ? value : undefined
  } catch {
    return undefined
  }
}

export interface ProcessUsage {
  /** User + system CPU time so far. */
  cpuSeconds: number
  rssBytes: number
  vmsBytes: number
}

/**
 * CPU and memory of a live process from /proc (what `ps` shows), or undefined when `pid` is no
 * longer the process that started at `startTime`. /proc reports CPU in USER_HZ, 100 on Linux.
 */
export async function processUsage(pid: number, startTime: number): Promise<ProcessUsage | undefined> {
  try {
    const [stat, status] = await Promise.all([readFile(`/proc/${pid}/stat`, 'utf8'), readFile(`/proc/${pid}/status`, 'utf8')])
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    if (Number(fields[19]) !== startTime) return undefined
    const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB$`, 'm').exec(status)?.[1] ?? 0) * 1024
    return { cpuSeconds: (Number(fields[11]) + Number(fields[12])) / 100, rssBytes: kib('VmRSS'), vmsBytes: kib('VmSize') }
  } catch {
    return undefined
  }
}

/** The same process is alive: same pid, same start time, not a zombie. */
export function isSameProcessAlive(pid: number, startTime: number): boolean {
  return processAlive(pid) && readStartTime(pid) === startTime
}

/**
 * Watches a process until it ends. As its parent we get the exit status from Node; otherwise
 * (attached after a restart) we poll /proc, with a timer that does not keep Node alive.
 */
export class ProcessWatch {
  readonly exited: Promise<ProcessExit>
  #timer: NodeJS.Timeout | undefined
  #resolve!: (exit: ProcessExit) => void
  #done = false

  constructor(
    readonly pid: number,
    readonly startTime: number,
    child?: ChildProcess,
    pollMs = 200,
  ) {
    this.exited = new Promise((resolve) => (this.#resolve = resolve))
    if (child) {
      if (child.exitCode !== null || child.signalCode !== null) this.#finish({ code: child.exitCode, signal: child.signalCode })
      else child.once('exit', (code, signal) => this.#finish({ code, signal }))
    } else {
      this.#timer = setInterval(() => this.poke(), pollMs)
      this.#timer.unref()
      this.poke()
    }
  }

  /** Checks now (e.g. when the control socket closed), instead of at the next tick. */
  poke(): void {
    if (this.#done || !this.#timer) return
    if (!isSameProcessAlive(this.pid, this.startTime)) this.#finish({ code: null, signal: null })
  }

  get done(): boolean {
    return this.#done
  }

  /** Stops watching without settling `exited` (detach). */
  stop(): void {
    if (this.#timer) clearInterval(this.#timer)
    this.#timer = undefined
  }

  #finish(exit: ProcessExit): void {
    if (this.#done) return
    this.#done = true
    this.stop()
    this.#resolve(exit)
  }
}

/** Whether process `pid` is alive and has an argument containing `needle` (one /proc read). */
export async function processHasArg(pid: number, needle: string): Promise<boolean> {
  if (!Number.isInteger(pid) || pid <= 0) return false
  try {
    return (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').some((arg) => arg.includes(needle))
  } catch {
    return false
  }
}

/** Pids of processes one of whose arguments contains `needle` (our mark: a path in our runtime dir). */
export async function findProcessesByArg(needle: string): Promise<number[]> {
  const pids: number[] = []
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const pid = Number(entry)
    if (pid === process.pid) continue
    let cmdline: string
    try {
      cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8')
    } catch {
      continue
    }
    if (cmdline.split('\0').some((arg) => arg.includes(needle))) pids.push(pid)
  }
  return pids
}

/** SIGKILLs the process (if it is still the same one) and waits, bounded, until it is gone. */
export async function killAndWait(pid: number, startTime: number | undefined, timeoutMs = 10_000): Promise<void> {
  const same = () => (startTime === undefined ? processAlive(pid) : isSameProcessAlive(pid, startTime))
  if (!same()) return
  try {
    process.kill(pid, 'SIGKILL')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return
    throw err
  }
  try {
    await pollUntil(() => (same() ? undefined : true), {
      deadline: Date.now() + timeoutMs,
      intervalMs: 5,
      maxIntervalMs: 100,
      what: `process ${pid} to end after SIGKILL`,
      step: 'kill',
    })
  } catch (err) {
    if (!(err instanceof TimeoutError)) throw err
    throw new VmmError('vmm_not_running', `process ${pid} did not end within ${timeoutMs} ms of SIGKILL`, { step: 'kill', cause: err })
  }
}
