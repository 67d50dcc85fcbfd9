/**
 * A VMM start as common's step list, kept once for every driver. A driver writes its list, each
 * step named as the errors of a failed start name it: `spawnStep` and `ON_SPAWN`, then its own
 * (control connect, the boot or restore calls, the running check). `startVmm` readies the
 * runtime dir and runs the list. When a step fails or the start is aborted (or the VMM exits,
 * which aborts it too), the runner undoes what finished, newest first: the control connection is
 * dropped, then the spawn's undo ends the process and removes its runtime files
 * (start-failure.ts), before the one error a failed start throws is made there.
 */
import { appendFile, mkdir, readFile } from 'node:fs/promises'
import { ConflictError, errorMessage, runSteps, type Logger, type Step, type StepList, type StepsFailedError } from '@hypeman-ts/common'
import { processHasArg, ProcessWatch, spawnDetached, type ProcessExit, type SpawnedProcess } from './process.js'
import { endFailedStart, failStart } from './start-failure.js'
import type { DriverName, PersistedVm, ResolvedAccel, StartOptions, VmSpec, VmTimings } from './types.js'
import { fileSize } from './vmm-log.js'

/** What a driver decided before the spawn. */
export interface StartPlan {
  driver: DriverName
  /** The VMM's name in messages ("QEMU", "Firecracker"). */
  label: string
  spec: VmSpec
  accel: ResolvedAccel
  controlSocket: string
  command: string
  args: string[]
  vmmLog: string
  /** The pidfile a VMM of this runtime dir has, and the argument that marks its process. */
  pidFile: string
  mark: string
  /** Sockets and the pidfile, which mean nothing without the process. */
  removeRuntimeFiles(): Promise<void>
  restore: boolean
  readyTimeoutMs: number
  /** Whether a timeout at `step` means the VMM never got ready, rather than one call that hung. */
  isReadyTimeout(step: string): boolean
  opts: StartOptions
  logger: Logger
}

interface Spawned {
  process: SpawnedProcess
  watch: ProcessWatch
  persisted: PersistedVm
}

/** What the steps of one start share, and what its undo and its error read. */
export class StartRun {
  readonly t0 = Date.now()
  /** The readiness deadline (and, for QEMU, the one for loading a snapshot). */
  readonly deadline: number
  /** Aborted once the process was seen to exit. */
  readonly exited = new AbortController()
  /** What the steps wait with: the caller's signal, or the VMM's exit, whichever comes first. */
  readonly signal: AbortSignal
  /** The error of the step that failed, for the spawn's undo to tell a VMM that is ending from one to kill. */
  failure?: unknown
  /** Set by the spawn's undo (so never when nothing was spawned): how the process ended, and whether by itself. */
  end?: { exit: ProcessExit | undefined; byItself: boolean }
  #spawned: Spawned | undefined
  #timings: VmTimings = { readyMs: 0 }

  constructor(
    readonly plan: StartPlan,
    /** Where the VMM log stood before this start. */
    readonly logOffset: number,
  ) {
    this.deadline = this.t0 + plan.readyTimeoutMs
    this.signal = plan.opts.signal ? AbortSignal.any([this.exited.signal, plan.opts.signal]) : this.exited.signal
  }

  /** The process; only steps after the spawn ask. */
  get vmm(): Spawned {
    if (!this.#spawned) throw new Error(`${this.plan.label}: no process was spawned yet`)
    return this.#spawned
  }

  /** The control channel answered. */
  ready(): void {
    this.#timings.readyMs = Date.now() - this.t0
  }

  /** The snapshot is loaded and the guest runs again. */
  restored(): void {
    this.#timings.restoreMs = Date.now() - this.t0
  }

  get timings(): VmTimings {
    return { ...this.#timings }
  }

  setSpawned(process: SpawnedProcess): void {
    const { plan } = this
    const watch = new ProcessWatch(process.pid, process.startTime, process.child)
    void watch.exited.then(() => this.exited.abort(new Error(`${plan.label} exited`)))
    const persisted: PersistedVm = {
      driver: plan.driver,
      version: 1,
      pid: process.pid,
      pidStartTime: process.startTime,
      controlSocket: plan.controlSocket,
      accel: plan.accel,
      spec: plan.spec,
    }
    this.#spawned = { process, watch, persisted }
  }
}

/** The first step of every start; its undo is what a failed start does to the process. */
export function spawnStep(driver: DriverName): Step<StartRun> {
  const name = `${driver}.spawn`
  return {
    name,
    run: async (r) => r.setSpawned(await spawnDetached(r.plan.command, r.plan.args, r.plan.vmmLog, name)),
    undo: endFailedStart,
  }
}

/** The caller persists the pid here, so that a crash from now on still finds the process. */
export const ON_SPAWN: Step<StartRun> = {
  name: 'onSpawn',
  run: async (r) => {
    await r.plan.opts.onSpawn?.(r.vmm.persisted)
  },
}

/** Readies the runtime dir, spawns and runs `steps`; a failure is undone and thrown as a failed start. */
export async function startVmm(plan: StartPlan, steps: StepList<StartRun>): Promise<StartRun> {
  const { spec } = plan
  await mkdir(spec.runtimeDir, { recursive: true })
  // A VMM of this runtime dir wrote its pidfile at start: one /proc read, not a scan of every process.
  const previous = Number.parseInt(await readFile(plan.pidFile, 'utf8').catch(() => ''), 10)
  if (await processHasArg(previous, plan.mark)) {
    throw new ConflictError(`a VMM is already running with runtime dir ${spec.runtimeDir}`, { field: 'runtimeDir' })
  }
  // Leftovers of a VMM that was killed: a VMM refuses to bind a socket path that exists, or is confused by it.
  await plan.removeRuntimeFiles()
  await appendFile(plan.vmmLog, `--- hypeman-ts ${new Date().toISOString()} ${plan.restore ? 'restore' : 'start'}: ${plan.command} ${plan.args.join(' ')}\n`)
  const run = new StartRun(plan, await fileSize(plan.vmmLog))
  try {
    const noted = steps.map((s) => (Array.isArray(s) ? (s as readonly Step<StartRun>[]).map(noteFailure) : noteFailure(s as Step<StartRun>)))
    await runSteps(noted, run, { done: [], persist: async () => {} }, {
      signal: run.signal,
      onUndoError: ({ step, cause }) => plan.logger.error(`undoing ${step} of a failed ${plan.label} start failed: ${errorMessage(cause)}`),
    })
  } catch (failed) {
    return failStart(run, failed as StepsFailedError)
  }
  return run
}

function noteFailure(step: Step<StartRun>): Step<StartRun> {
  return {
    ...step,
    run: async (r, signal) => {
      try {
        await step.run(r, signal)
      } catch (err) {
        r.failure = err
        throw err
      }
    },
  }
}
