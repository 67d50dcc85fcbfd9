/**
 * The driver of a REST-controlled VMM (Cloud Hypervisor, Firecracker). A start checks before it
 * spawns anything (spec, files, snapshot, accel), then runs the step list of src/start.ts, as the
 * QEMU driver does: <vmm>.spawn → pidfile → onSpawn → api.ready → the planned boot (or restore)
 * calls, a step each → <vmm>.<state call> → running. On failure the process is killed and its
 * runtime files removed before the error (with the VMM's last output) is thrown.
 *
 * The process is spawned detached (src/process.ts), marked by its API socket path in its argv,
 * and its pid written to `<runtimeDir>/vmm.pid` (these VMMs write no pidfile of their own).
 */
import { access, constants, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { errorMessage, stderrLogger, throwIfAborted, ValidationError, type Logger, type Step } from '@hypeman-ts/common'
import { attachVmm } from '../attach.js'
import { VmmError } from '../errors.js'
import { vmmCommand } from '../netns.js'
import { findProcessesByArg, isSameProcessAlive, killAndWait, readStartTime } from '../process.js'
import { checkSpecFiles, validateVmSpec } from '../spec.js'
import { ON_SPAWN, spawnStep, startVmm, type StartRun } from '../start.js'
import type { Accel, AttachOptions, DestroyTarget, DriverCapabilities, PersistedVm, ResolvedAccel, StartOptions, VmmDriver, VmSpec } from '../types.js'
import { RestClient, type ApiCall } from './client.js'
import { REST_RUNTIME_FILES, restRuntime, type RestDialect, type RestRuntime } from './dialect.js'
import { removeRestRuntimeFiles, RestMachine, RestPausedVm, RestRunningVm } from './machine.js'
import { loadRestSnapshot } from './snapshot.js'

export interface RestDriverOptions {
  /** The VMM binary; default `firecracker` / `cloud-hypervisor` from PATH. */
  binary?: string
  /** Default: warnings to stderr. */
  logger?: Logger
  /** Deadline for the API to answer after the spawn (and, for attach, to answer at all). Default 15 s. */
  readyTimeoutMs?: number
  /** Deadline of each API call. Default 10 s. */
  callTimeoutMs?: number
  /** The KVM device `resolveAccel` checks. Default `/dev/kvm`. */
  kvmDevice?: string
  /**
   * Checks every API call before it is sent and throws when it is wrong. The contract tests
   * plug the vendored API spec in here.
   */
  checkCall?: (call: ApiCall) => void
}

export abstract class RestVmmDriver implements VmmDriver {
  abstract readonly name: RestDialect['name']
  readonly capabilities: DriverCapabilities
  readonly machineCmdline: string
  readonly binary: string
  get programs(): readonly string[] {
    return [this.binary]
  }
  protected readonly logger: Logger
  readonly #opts: RestDriverOptions

  protected constructor(
    readonly dialect: RestDialect,
    opts: RestDriverOptions = {},
  ) {
    this.#opts = opts
    this.capabilities = dialect.capabilities
    this.machineCmdline = dialect.machineCmdline
    this.binary = opts.binary ?? dialect.binary
    this.logger = opts.logger ?? stderrLogger
  }

  runtime(runtimeDir: string): RestRuntime {
    return restRuntime(runtimeDir, this.dialect.apiSocketName)
  }

  #client(rt: RestRuntime): RestClient {
    return new RestClient(rt.apiSocket, {
      basePath: this.dialect.basePath,
      name: this.dialect.name,
      ...(this.#opts.callTimeoutMs !== undefined ? { timeoutMs: this.#opts.callTimeoutMs } : {}),
      ...(this.#opts.checkCall ? { check: this.#opts.checkCall } : {}),
    })
  }

  /** These VMMs run only under KVM: no fallback exists, so `auto` means `kvm` or nothing. */
  async resolveAccel(accel: Accel): Promise<ResolvedAccel> {
    if (accel === 'tcg') {
      throw new VmmError('accel_unavailable', `${this.dialect.label} runs only under KVM`, { field: 'accel' })
    }
    const dev = this.#opts.kvmDevice ?? '/dev/kvm'
    try {
      await access(dev, constants.R_OK | constants.W_OK)
    } catch (err) {
      throw new VmmError('accel_unavailable', `${this.dialect.label} needs KVM and ${dev} is not usable (${(err as NodeJS.ErrnoException).code ?? errorMessage(err)})`, {
        field: 'accel',
      })
    }
    return 'kvm'
  }

  isAlive(persisted: PersistedVm): boolean {
    return isSameProcessAlive(persisted.pid, persisted.pidStartTime)
  }

  async start(spec: VmSpec, opts: StartOptions = {}): Promise<RestRunningVm> {
    throwIfAborted(opts.signal, 'start')
    const d = this.dialect
    validateVmSpec(spec, [d.apiSocketName, REST_RUNTIME_FILES.vsock], { vsock: true, channelBackends: d.capabilities.channelBackends, passthrough: d.capabilities.passthrough })
    const rt = this.runtime(spec.runtimeDir)
    d.checkSpec(spec, rt)
    await checkSpecFiles(spec)
    const restore = spec.restoreFrom ? await loadRestSnapshot(spec, d.name, d.pinnedPaths(spec, rt)) : undefined
    const accel = await this.resolveAccel(spec.accel ?? 'auto')

    const [command, args] = vmmCommand(this.binary, d.argv(spec, rt), spec.netns)
    const client = this.#client(rt)
    const stateStep = `${d.name}.${d.stateCall.op}`
    const steps: Step<StartRun>[] = [
      spawnStep(d.name),
      // These VMMs write no pidfile of their own.
      { name: 'pidfile', run: (r) => writeFile(rt.pidFile, `${r.vmm.persisted.pid}\n`) },
      ON_SPAWN,
      {
        name: 'api.ready',
        // The client exists before the API answers: its undo closes it whatever the wait left open.
        recordFirst: true,
        run: async (r, signal) => {
          await client.waitReady(d.readiness, { deadline: r.deadline, signal, step: `${d.name}.ready` })
          r.ready()
        },
        undo: async () => client.destroy(),
      },
      ...callSteps(d.name, restore ? d.planRestore(spec, rt, spec.restoreFrom as string) : d.planBoot(spec, rt), client),
      {
        name: stateStep,
        run: async (r, signal) => {
          // The restore calls are done by now.
          if (restore) r.restored()
          const state = d.parseState(await client.call(d.stateCall, { signal }))
          if (state !== 'running') throw new VmmError('vmm_start_failed', `${d.label} reports the VM ${state} right after start`, { step: stateStep })
        },
      },
    ]
    const run = await startVmm(
      {
        driver: d.name,
        label: d.label,
        spec,
        accel,
        controlSocket: rt.apiSocket,
        command,
        args,
        vmmLog: spec.vmmLog ?? join(spec.runtimeDir, REST_RUNTIME_FILES.vmmLog),
        pidFile: rt.pidFile,
        mark: rt.apiSocket,
        removeRuntimeFiles: () => removeRestRuntimeFiles(rt),
        restore: !!restore,
        readyTimeoutMs: opts.readyTimeoutMs ?? this.#opts.readyTimeoutMs ?? 15_000,
        // Other deadlines (a boot call that hangs) are not about the API never appearing.
        isReadyTimeout: (step) => step === 'api.ready',
        opts,
        logger: this.logger,
      },
      steps,
    )
    return new RestMachine(d, run.vmm.persisted, rt, client, run.vmm.watch, run.timings, this.logger).runningView()
  }

  async attach(persisted: PersistedVm, opts: AttachOptions = {}): Promise<RestRunningVm | RestPausedVm> {
    const d = this.dialect
    if (persisted?.driver !== d.name) throw new ValidationError('driver', `expected a ${d.name} VM, got ${String(persisted?.driver)}`)
    const readyTimeoutMs = opts.readyTimeoutMs ?? this.#opts.readyTimeoutMs ?? 15_000
    return attachVmm(d.label, persisted, { ...opts, readyTimeoutMs }, async ({ watch, signal, t0, deadline }) => {
      const rt = this.runtime(persisted.spec.runtimeDir)
      const client = this.#client(rt)
      try {
        await client.waitReady(d.readiness, { deadline, signal, step: `${d.name}.attach` })
        const state = d.parseState(await client.call(d.stateCall, { signal }))
        const machine = new RestMachine(d, persisted, rt, client, watch, { readyMs: Date.now() - t0 }, this.logger)
        return state === 'running' ? machine.runningView() : machine.pausedView()
      } catch (err) {
        client.destroy()
        throw err
      }
    })
  }

  async destroy(target: DestroyTarget): Promise<void> {
    const persisted = 'driver' in target ? target : undefined
    const runtimeDir = 'driver' in target ? target.spec.runtimeDir : target.runtimeDir
    const rt = this.runtime(runtimeDir)
    if (persisted) await killAndWait(persisted.pid, persisted.pidStartTime)
    // A process spawned but never recorded (crash between spawn and persist) still carries our mark.
    for (const pid of await findProcessesByArg(rt.apiSocket)) {
      await killAndWait(pid, readStartTime(pid))
    }
    await removeRestRuntimeFiles(rt)
  }
}

/**
 * The planned calls as steps, named `<vmm>.<op>` as a failed start names them. Calls of the same
 * op in a row (a drive each) are one step, because the runner wants each name once.
 */
function callSteps(vmm: string, calls: readonly ApiCall[], client: RestClient): Step<StartRun>[] {
  const steps: (Step<StartRun> & { calls: ApiCall[] })[] = []
  for (const call of calls) {
    const name = `${vmm}.${call.op}`
    const last = steps.at(-1)
    if (last?.name === name) {
      last.calls.push(call)
      continue
    }
    const group = [call]
    steps.push({
      name,
      calls: group,
      run: async (_r, signal) => {
        for (const c of group) await client.call(c, { signal })
      },
    })
  }
  return steps
}
