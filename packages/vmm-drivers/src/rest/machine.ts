/**
 * A live Cloud Hypervisor or Firecracker VM. `RestMachine` holds the process watch and the API
 * client and runs the dialect's planned calls; the handles callers get (`RestRunningVm`,
 * `RestPausedVm`) are thin views whose type says the state the VM was in when returned.
 *
 * These VMMs push no events over their REST API: `state` events are emitted for the changes
 * this handle makes, and `exit` when the process ends. What an exit means comes from who asked
 * for it (shutdown, standby, kill) or, when nobody here did, from the dialect and the exit status.
 */
import { mkdir, rm } from 'node:fs/promises'
import type { Socket } from 'node:net'
import { join } from 'node:path'
import { errorMessage, NotSupportedError, TimeoutError, ValidationError, writeJsonAtomic, type Logger } from '@hypeman-ts/common'
import { VmmError } from '../errors.js'
import { killAndWait, type ProcessExit, type ProcessWatch } from '../process.js'
import { withDeadline } from '../readiness.js'
import type {
  DriverName,
  ExitInfo,
  ExitReason,
  PausedVm,
  PersistedVm,
  RunningVm,
  ShutdownOptions,
  SnapshotInfo,
  VmEvent,
  VmState,
  VmTimings,
  WaitOptions,
} from '../types.js'
import { VmView } from '../view.js'
import { connectVsock } from '../vsock/connect.js'
import { isControlClosed, type ApiCall, type CallOptions, type RestClient } from './client.js'
import type { RestDialect, RestRuntime } from './dialect.js'
import { REST_SNAPSHOT_FORMAT, REST_SNAPSHOT_META_FILE, restMachineFingerprint, snapshotFiles, type RestSnapshotMeta } from './snapshot.js'

/** How long the VMM gets to end after an API quit before it is killed. */
const QUIT_GRACE_MS = 3000
/** A snapshot of a big guest takes a while; this bounds a stuck one. */
const SNAPSHOT_DEADLINE_MS = 10 * 60_000

/** Removes the sockets and pidfile of a VMM that is gone; logs are kept. */
export async function removeRestRuntimeFiles(rt: RestRuntime): Promise<void> {
  await Promise.all([rt.apiSocket, rt.vsockSocket, rt.pidFile].map((p) => rm(p, { force: true })))
}

type Request = 'shutdown' | 'standby' | 'kill' | 'force-quit' | 'force-kill'

export class RestMachine {
  readonly exited: Promise<ExitInfo>
  #exit: ExitInfo | undefined
  #listeners = new Set<(event: VmEvent) => void>()
  /** What this handle last asked for that ends the VMM: it decides the exit reason. */
  #request: Request | undefined
  #detached = false

  constructor(
    readonly dialect: RestDialect,
    readonly persisted: PersistedVm,
    readonly runtime: RestRuntime,
    readonly client: RestClient,
    readonly watch: ProcessWatch,
    readonly timings: VmTimings,
    readonly logger: Logger,
  ) {
    this.exited = watch.exited.then((exit) => this.#onExit(exit))
  }

  get pid(): number {
    return this.persisted.pid
  }

  onEvent(listener: (event: VmEvent) => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  #emit(event: VmEvent): void {
    for (const l of this.#listeners) {
      try {
        l(event)
      } catch (err) {
        this.logger.warn(`VM event listener threw: ${errorMessage(err)}`, { pid: this.pid })
      }
    }
  }

  async #onExit(exit: ProcessExit): Promise<ExitInfo> {
    this.client.destroy()
    let reason: ExitReason
    let vmmReason: string | undefined
    switch (this.#request) {
      case 'standby':
        reason = 'standby'
        break
      case 'shutdown':
        reason = 'poweroff'
        vmmReason = this.dialect.capabilities.gracefulShutdown
        break
      case 'force-quit':
        reason = 'quit'
        break
      case 'kill':
      case 'force-kill':
        reason = 'killed'
        break
      default:
        ;({ reason, vmmReason } = this.dialect.unrequestedExit(exit))
    }
    const info: ExitInfo = {
      reason,
      code: exit.code,
      signal: exit.signal,
      ...(vmmReason ? { vmmReason } : {}),
      ...(this.#request === 'force-quit' || this.#request === 'force-kill' ? { forced: true } : {}),
      at: new Date().toISOString(),
    }
    this.#exit = info
    await removeRestRuntimeFiles(this.runtime).catch((err) =>
      this.logger.warn(`could not remove VM runtime files: ${errorMessage(err)}`, { runtimeDir: this.persisted.spec.runtimeDir }),
    )
    this.#emit({ type: 'exit', exit: info })
    return info
  }

  #assertUsable(step: string): void {
    if (this.#detached) throw new VmmError('invalid_state', `${step}: this handle was detached`, { step })
    if (this.#exit) throw new VmmError('vmm_not_running', `${step}: the VM has exited (${this.#exit.reason})`, { step })
  }

  /** One API call; when the process is gone meanwhile, the error says so rather than "not answering". */
  async call<T = unknown>(call: ApiCall, opts: CallOptions = {}): Promise<T> {
    try {
      return await this.client.call<T>(call, opts)
    } catch (err) {
      if (isControlClosed(err)) {
        this.watch.poke()
        if (this.watch.done || this.#exit) {
          throw new VmmError('vmm_not_running', `${call.op}: the VM has exited`, { step: `${this.dialect.name}.${call.op}`, cause: err })
        }
      }
      throw err
    }
  }

  async #run(calls: ApiCall[], opts: CallOptions = {}): Promise<void> {
    for (const c of calls) await this.call(c, opts)
  }

  async state(): Promise<VmState> {
    if (this.#exit) return 'exited'
    if (this.#detached) throw new VmmError('invalid_state', 'state: this handle was detached', { step: 'state' })
    try {
      return this.dialect.parseState(await this.call(this.dialect.stateCall))
    } catch (err) {
      if (err instanceof VmmError && err.code === 'vmm_not_running') return 'exited'
      // A VMM that stops answering is usually ending: give the exit a moment to be observed.
      if (isControlClosed(err)) {
        const ended = await withDeadline(this.exited, 2000, 'the VMM to exit', 'state').then(
          () => true,
          () => false,
        )
        if (ended) return 'exited'
      }
      throw err
    }
  }

  async #expectState(allowed: VmState[], step: string): Promise<VmState> {
    const state = await this.state()
    if (state === 'exited') throw new VmmError('vmm_not_running', `${step}: the VM has exited`, { step })
    if (!allowed.includes(state)) throw new VmmError('invalid_state', `${step}: the VM is ${state}`, { step })
    return state
  }

  async pause(): Promise<void> {
    this.#assertUsable('pause')
    if ((await this.#expectState(['running', 'paused'], 'pause')) === 'paused') return
    await this.#run(this.dialect.planPause())
    this.#emit({ type: 'state', state: 'paused', at: new Date().toISOString() })
  }

  async resume(): Promise<void> {
    this.#assertUsable('resume')
    if ((await this.#expectState(['running', 'paused'], 'resume')) === 'running') return
    await this.#run(this.dialect.planResume())
    this.#emit({ type: 'state', state: 'running', at: new Date().toISOString() })
  }

  async waitForExit(opts: WaitOptions = {}): Promise<ExitInfo> {
    if (this.#exit) return this.#exit
    if (opts.timeoutMs === undefined && !opts.signal) return this.exited
    return withDeadline(this.exited, opts.timeoutMs ?? 2 ** 31 - 1, 'the VM to exit', 'wait', opts.signal)
  }

  async kill(): Promise<ExitInfo> {
    if (this.#exit) return this.#exit
    this.#assertUsable('kill')
    this.#request = 'kill'
    return this.#killNow('kill')
  }

  async #killNow(step: string): Promise<ExitInfo> {
    await killAndWait(this.pid, this.persisted.pidStartTime)
    this.watch.poke()
    return withDeadline(this.exited, 10_000, 'the VM to be reaped', step)
  }

  async shutdown(opts: ShutdownOptions = {}): Promise<ExitInfo> {
    if (this.#exit) return this.#exit
    this.#assertUsable('shutdown')
    const timeoutMs = opts.timeoutMs ?? 10_000
    const graceful = this.dialect.planGracefulShutdown()
    if (graceful.length > 0) {
      this.#request = 'shutdown'
      try {
        // A paused guest cannot see the button or the keys.
        if ((await this.state()) === 'paused') await this.#run(this.dialect.planResume())
        await this.#run(graceful)
      } catch (err) {
        if (this.#exit) return this.#exit
        this.logger.warn(`could not ask the guest to stop: ${errorMessage(err)}; forcing`, { pid: this.pid })
      }
      try {
        return await withDeadline(this.exited, timeoutMs, 'the guest to stop', 'shutdown')
      } catch (err) {
        if (!(err instanceof TimeoutError)) throw err
      }
    }
    return this.#force('shutdown')
  }

  /** The VMM's own quit when it has one, then SIGKILL if even that does not end it. */
  async #force(step: string): Promise<ExitInfo> {
    const quit = this.dialect.planQuit()
    if (quit.length > 0) {
      this.#request = 'force-quit'
      await this.#run(quit, { timeoutMs: QUIT_GRACE_MS }).catch(() => {})
      try {
        return await withDeadline(this.exited, QUIT_GRACE_MS, `${this.dialect.label} to quit`, `${step}.quit`)
      } catch {
        // falls through to the kill
      }
    }
    this.#request = 'force-kill'
    return this.#killNow(`${step}.kill`)
  }

  async standby(dir: string): Promise<SnapshotInfo & { exit: ExitInfo }> {
    this.#assertUsable('standby')
    const before = await this.#expectState(['running', 'paused'], 'standby')
    await mkdir(dir, { recursive: true })
    const metaPath = join(dir, REST_SNAPSHOT_META_FILE)
    const known = new Set([REST_SNAPSHOT_META_FILE, ...this.dialect.snapshotFileNames])
    const strangers = Object.keys(await snapshotFiles(dir)).filter((f) => !known.has(f))
    // Every file in the dir after the snapshot is taken to be the VMM's: nothing else may be there.
    if (strangers.length > 0) throw new ValidationError('dir', `${dir} holds files that are not a snapshot's (${strangers.join(', ')})`)
    // An old snapshot in the same dir must not survive as if it were this one.
    await rm(metaPath, { force: true })
    await removeVmmFiles(dir)
    const started = Date.now()
    if (before === 'running') await this.#run(this.dialect.planPause())
    let files: Record<string, number>
    try {
      await this.#run(this.dialect.planSnapshot(dir), { timeoutMs: SNAPSHOT_DEADLINE_MS })
      files = await snapshotFiles(dir)
      if (Object.keys(files).length === 0) throw new VmmError('snapshot_failed', `${this.dialect.label} wrote nothing into ${dir}`, { step: 'standby' })
    } catch (err) {
      await removeVmmFiles(dir).catch(() => {})
      // A failed standby leaves the VM as it found it.
      if (before === 'running' && !this.#exit) {
        await this.#run(this.dialect.planResume()).catch((e) =>
          this.logger.warn(`could not resume after a failed standby: ${errorMessage(e)}`, { pid: this.pid }),
        )
      }
      if (err instanceof VmmError && err.code === 'snapshot_failed') throw err
      throw new VmmError('snapshot_failed', `snapshot failed: ${errorMessage(err)}`, { step: 'standby.snapshot', cause: err })
    }
    const bytes = Object.values(files).reduce((a, b) => a + b, 0)
    const createdAt = new Date().toISOString()
    const meta: RestSnapshotMeta = {
      format: REST_SNAPSHOT_FORMAT,
      driver: this.dialect.name,
      accel: this.persisted.accel,
      fingerprint: restMachineFingerprint(this.persisted.spec),
      pinnedPaths: this.dialect.pinnedPaths(this.persisted.spec, this.runtime),
      files,
      bytes,
      createdAt,
    }
    await writeJsonAtomic(metaPath, meta)
    const durationMs = Date.now() - started
    this.#request = 'standby'
    const quit = this.dialect.planQuit()
    let exit: ExitInfo
    try {
      if (quit.length === 0) throw new Error('no quit call')
      await this.#run(quit, { timeoutMs: QUIT_GRACE_MS })
      exit = await withDeadline(this.exited, QUIT_GRACE_MS, `${this.dialect.label} to quit after the snapshot`, 'standby.quit')
    } catch {
      exit = await this.#killNow('standby.kill')
    }
    return { dir, bytes, durationMs, createdAt, exit }
  }

  async resizeMemory(totalBytes: number): Promise<{ memoryBytes: number }> {
    this.#assertUsable('resizeMemory')
    const { spec } = this.persisted
    const hp = spec.hotplugMemory
    if (!hp) throw new NotSupportedError('this VM was started without hotplugMemory', { field: 'hotplugMemory' })
    if (!Number.isSafeInteger(totalBytes) || totalBytes > hp.maxBytes || totalBytes < spec.memoryBytes) {
      throw new ValidationError('totalBytes', `expected a whole number of bytes from memoryBytes (${spec.memoryBytes}) to hotplugMemory.maxBytes (${hp.maxBytes})`)
    }
    const current = this.dialect.parseMemory(await this.call(this.dialect.memoryCall), spec)
    if (totalBytes === current) return { memoryBytes: current }
    if (totalBytes < current && !this.dialect.capabilities.memoryShrink) {
      throw new NotSupportedError(`${this.dialect.label} memory can only grow (now ${current} bytes)`, { field: 'totalBytes' })
    }
    const step = this.dialect.memoryStep
    if ((totalBytes - spec.memoryBytes) % step !== 0) {
      throw new ValidationError('totalBytes', `the hotplugged part (${totalBytes - spec.memoryBytes} bytes) must be a multiple of ${step / 1024 / 1024} MiB`)
    }
    await this.#run(this.dialect.planResizeMemory(spec, totalBytes))
    return { memoryBytes: totalBytes }
  }

  async connectChannel(name: string, opts: WaitOptions = {}): Promise<Socket> {
    this.#assertUsable('connectChannel')
    const port = this.persisted.spec.vsock?.ports?.[name]
    if (port === undefined) {
      throw new ValidationError('name', `no vsock port named "${name}" (${this.dialect.label} has no named channels; name ports in spec.vsock.ports)`)
    }
    return connectVsock(this.runtime.vsockSocket, port, {
      timeoutMs: opts.timeoutMs ?? 5000,
      ...(opts.signal ? { signal: opts.signal } : {}),
    })
  }

  /** A raw API call, for what the interface does not cover. The caller owns the consequences. */
  async request<T = unknown>(call: ApiCall, opts: CallOptions = {}): Promise<T> {
    this.#assertUsable(call.op)
    return this.call<T>(call, opts)
  }

  async detach(): Promise<void> {
    if (this.#detached || this.#exit) return
    this.#detached = true
    this.watch.stop()
    await this.client.close()
  }

  /** `await using`: the VM does not outlive the scope. */
  async dispose(): Promise<void> {
    if (this.#detached || this.#exit) return
    await this.kill().catch((err) => this.logger.warn(`dispose: ${errorMessage(err)}`, { pid: this.pid }))
  }
}

/** Removes what a VMM wrote into a snapshot dir (everything but subdirectories). */
async function removeVmmFiles(dir: string): Promise<void> {
  const files = await snapshotFiles(dir).catch(() => ({}))
  await Promise.all(Object.keys(files).map((f) => rm(join(dir, f), { force: true })))
}

abstract class RestVmView extends VmView<RestMachine> {
  get driver(): DriverName {
    return this.m.dialect.name
  }
  /** A raw API call over the handle's client (e.g. `GET /vm.counters`), for what the interface does not cover. */
  request<T = unknown>(call: ApiCall, opts?: CallOptions): Promise<T> {
    return this.m.request<T>(call, opts)
  }
}

export class RestRunningVm extends RestVmView implements RunningVm {
  readonly phase = 'running' as const
  async pause(): Promise<RestPausedVm> {
    await this.m.pause()
    return new RestPausedVm(this.m)
  }
}

export class RestPausedVm extends RestVmView implements PausedVm {
  readonly phase = 'paused' as const
  async resume(): Promise<RestRunningVm> {
    await this.m.resume()
    return new RestRunningVm(this.m)
  }
}
