/**
 * One run: a fresh VM, the code run in it through the guest agent (so stdout and stderr arrive
 * apart, as they are written), the exit code, and the VM deleted whatever happened.
 */
import { randomBytes } from 'node:crypto'
import { finished } from 'node:stream/promises'
import type { CreateInstanceParams, ExecProcess, Hypeman } from '@hypeman-ts/core'
import type { Language } from './languages.js'

/** A secret the code may use without seeing it: the VM gets a placeholder in `name`'s env var. */
export interface Credential {
  value: string
  /** Hosts the real value goes to (`api.example.com`, `*.example.com`), over HTTPS only. */
  hosts: string[]
  /** Default `Authorization`. */
  header: string
  /** Default `Bearer ${value}`. */
  format: string
}

export interface RunRequest {
  language: Language
  code: string
  /** How long the code may run once the VM is up (the boot is not counted). */
  timeoutMs: number
  credentials: Record<string, Credential>
}

export type RunEvent =
  | { type: 'started'; instance: string }
  | { type: 'stdout' | 'stderr'; data: string }
  | { type: 'exit'; exitCode: number; timedOut: boolean; outputTruncated: boolean; message: string }

export interface RunnerSettings {
  /** VM memory and writable disk, e.g. '256MB'. */
  memory: string
  disk: string
  /** stdout + stderr beyond this are dropped and the code is killed. */
  maxOutputBytes: number
}

/**
 * Runs the code and reports through `emit`; resolves once the VM is deleted. Aborting `signal`
 * (the client went away, the server shuts down) kills the code, deletes the VM, and rejects with
 * the signal's reason.
 */
export async function runInVm(hm: Hypeman, run: RunRequest, settings: RunnerSettings, emit: (e: RunEvent) => void, signal: AbortSignal): Promise<void> {
  const name = `run-${randomBytes(6).toString('hex')}`
  const kill = new AbortController()
  const onAbort = () => kill.abort()
  signal.addEventListener('abort', onAbort, { once: true })
  let timer: NodeJS.Timeout | undefined
  try {
    const vm = await hm.instances.create(
      {
        image: run.language.image,
        name,
        vcpus: 1,
        size: settings.memory,
        overlaySize: settings.disk,
        // The VM idles while the code runs; were this process to die, the VM would end by itself.
        cmd: ['sleep', String(Math.ceil(run.timeoutMs / 1000) + 60)],
        ...networkFor(run.credentials),
      },
      { signal },
    )
    emit({ type: 'started', instance: vm.id })

    const proc = await hm.instances.execStream(vm.id, { argv: run.language.argv(run.code), signal: kill.signal })
    let timedOut = false
    timer = setTimeout(() => ((timedOut = true), kill.abort()), run.timeoutMs)
    let outputBytes = 0
    let outputTruncated = false
    for (const type of ['stdout', 'stderr'] as const) {
      proc[type].setEncoding('utf8')
      proc[type].on('data', (data: string) => {
        outputBytes += Buffer.byteLength(data)
        if (outputBytes <= settings.maxOutputBytes) return emit({ type, data })
        outputTruncated = true
        kill.abort()
      })
    }
    const exit = await exitOf(proc, kill.signal)
    if (exit) await Promise.all([finished(proc.stdout), finished(proc.stderr)])
    signal.throwIfAborted()
    emit({
      type: 'exit',
      exitCode: exit?.exitCode ?? 137,
      timedOut,
      outputTruncated,
      message: timedOut ? `killed after ${run.timeoutMs} ms` : outputTruncated ? `killed after ${settings.maxOutputBytes} bytes of output` : (exit?.message ?? 'killed'),
    })
  } finally {
    clearTimeout(timer)
    signal.removeEventListener('abort', onAbort)
    kill.abort()
    // Always: on exit, timeout, a failed create (it undoes itself; then there is nothing to find), abort.
    await hm.instances.delete(name).catch((err: { code?: string }) => {
      if (err.code !== 'not_found') throw err
    })
  }
}

/**
 * The program's exit. Once it was killed, a guest that does not confirm it within 5 s must not
 * hold the VM any longer: then undefined.
 */
function exitOf(proc: ExecProcess, killed: AbortSignal): Promise<Awaited<ExecProcess['exit']> | undefined> {
  const giveUp = new Promise<undefined>((resolve) => killed.addEventListener('abort', () => setTimeout(resolve, 5000, undefined).unref()))
  return Promise.race([proc.exit, giveUp])
}

/**
 * No network unless the run brings credentials; then everything the VM sends goes through the
 * egress proxy (mode `all`), which swaps the placeholders for the real values towards their hosts.
 */
function networkFor(credentials: Record<string, Credential>): Partial<CreateInstanceParams> {
  const names = Object.keys(credentials)
  if (names.length === 0) return { network: { enabled: false } }
  return {
    // The real values, under names the VM never sees (core keeps `source.env` variables on the host).
    env: Object.fromEntries(names.map((n) => [`REAL_${n}`, credentials[n]!.value])),
    credentials: Object.fromEntries(
      names.map((n) => {
        const c = credentials[n]!
        return [n, { source: { env: `REAL_${n}` }, inject: [{ hosts: c.hosts, as: { header: c.header, format: c.format } }] }]
      }),
    ),
    network: { enabled: true, egress: { enabled: true, enforcement: { mode: 'all' } } },
  }
}
