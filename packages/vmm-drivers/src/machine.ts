/**
 * A live VM is a VMM process we supervise plus a control channel to it. What does not depend on
 * the channel lives here once: the exit and what it means, events to listeners, the checks before
 * an operation, a closed channel read as the process ending, and every way the process ends
 * (guest stop, forced stop, kill, the end after a snapshot, detach). A subclass is one control
 * channel (QMP, REST): it sends the few commands this base asks for and adds what only its VMM
 * does (snapshots, memory hotplug, guest channels, raw calls). Callers never see a machine: they
 * get the handles of view.ts, views over it.
 *
 * What an exit means depends on who asked for it, so the machine records the last end this
 * handle asked for (`EndRequest`) and the channel reads that together with what its VMM said.
 */
import type { Socket } from 'node:net'
import { errorMessage, Listeners, NotSupportedError, TimeoutError, withDeadline, type Logger } from '@hypeman-ts/common'
import { isControlClosed, VmmError } from './errors.js'
import { killAndWait, type ProcessExit, type ProcessWatch } from './process.js'
import type { DiskSpec, DriverName, ExitInfo, ExitReason, PausedVm, PersistedVm, RunningVm, ShutdownOptions, SnapshotInfo, VmEvent, VmState, VmTimings, WaitOptions } from './types.js'
import type { PhasedMachine } from './view.js'

/** How long a VMM gets to end after its own quit before it is killed. */
const QUIT_GRACE_MS = 3000
/** How long the end of a SIGKILLed VMM may take to be observed. */
const REAP_MS = 10_000
/** A control socket that closes is usually the process ending: how long `state()` waits to see that. */
const CLOSE_TO_EXIT_MS = 2000

/** The last thing this handle asked for that ends the VMM. */
export type EndRequest = 'shutdown' | 'standby' | 'kill' | 'force-quit' | 'force-kill'

/** How a channel asks the guest to stop. */
export interface GuestStop {
  /** For messages: "power off", "stop". */
  what: string
  ask(): Promise<void>
  /** Ask again this often until the VMM ends, for a guest that can miss the first request. */
  repeatMs?: number
}

export abstract class ProcessMachine implements PhasedMachine<RunningVm, PausedVm> {
  abstract readonly driver: DriverName
  readonly exited: Promise<ExitInfo>
  #exit: ExitInfo | undefined
  readonly #listeners = new Listeners<VmEvent>((err) => this.logger.warn(`VM event listener threw: ${errorMessage(err)}`, { pid: this.pid }))
  #request: EndRequest | undefined
  #detached = false

  constructor(
    /** The VMM's name in messages ("QEMU", "Firecracker"). */
    readonly label: string,
    readonly persisted: PersistedVm,
    readonly watch: ProcessWatch,
    readonly timings: VmTimings,
    readonly logger: Logger,
  ) {
    this.exited = watch.exited.then((exit) => this.#onExit(exit))
  }

  /** The VM's run state, as the VMM reports it. */
  protected abstract queryState(): Promise<VmState>
  protected abstract sendPause(): Promise<void>
  protected abstract sendResume(): Promise<void>
  /**
   * A VMM that pushes its state changes (QMP events) reports them itself; for one that does not,
   * the machine reports the changes it makes.
   */
  protected abstract readonly pushesEvents: boolean
  /** Undefined when the VMM has no way to ask the guest. */
  protected abstract guestStop(): GuestStop | undefined
  /** Whether the VMM has a quit command of its own; without one only SIGKILL ends it. */
  protected abstract readonly canQuit: boolean
  protected abstract sendQuit(timeoutMs: number): Promise<void>
  /** Writes the snapshot of a VM that was `before` into `dir`; on failure the VM is left as it was found. */
  protected abstract writeSnapshot(dir: string, before: VmState): Promise<SnapshotInfo>
  /** Why the process ended, from the last end this handle asked for and what the VMM said. */
  protected abstract exitReason(exit: ProcessExit, request: EndRequest | undefined): { reason: ExitReason; vmmReason?: string }
  /** Drops the control connection now: the process is gone. */
  protected abstract dropControl(): void
  /** Closes the control connection and leaves the VMM running. */
  protected abstract closeControl(): Promise<void>
  /** Sockets and the pidfile, which mean nothing once the process is gone; logs are kept. */
  protected abstract removeRuntimeFiles(): Promise<void>
  abstract resizeMemory(totalBytes: number): Promise<{ memoryBytes: number }>
  abstract hotplugDisk(disk: DiskSpec): Promise<void>
  abstract unplugDisk(serial: string, opts?: WaitOptions): Promise<void>
  abstract connectChannel(name: string, opts?: WaitOptions): Promise<Socket>
  /** The driver's handles over this machine. */
  abstract runningView(): RunningVm
  abstract pausedView(): PausedVm

  get pid(): number {
    return this.persisted.pid
  }

  onEvent(listener: (event: VmEvent) => void): () => void {
    return this.#listeners.add(listener)
  }

  protected emit(event: VmEvent): void {
    this.#listeners.emit(event)
  }

  async #onExit(exit: ProcessExit): Promise<ExitInfo> {
    this.dropControl()
    const request = this.#request
    const { reason, vmmReason } = this.exitReason(exit, request)
    const info: ExitInfo = {
      reason,
      code: exit.code,
      signal: exit.signal,
      ...(vmmReason ? { vmmReason } : {}),
      ...(request === 'force-quit' || request === 'force-kill' ? { forced: true } : {}),
      at: new Date().toISOString(),
    }
    this.#exit = info
    await this.removeRuntimeFiles().catch((err) =>
      this.logger.warn(`could not remove VM runtime files: ${errorMessage(err)}`, { runtimeDir: this.persisted.spec.runtimeDir }),
    )
    this.emit({ type: 'exit', exit: info })
    return info
  }

  protected assertUsable(step: string): void {
    if (this.#detached) throw new VmmError('invalid_state', `${step}: this handle was detached`, { step })
    if (this.#exit) throw new VmmError('vmm_not_running', `${step}: the VM has exited (${this.#exit.reason})`, { step })
  }

  /** One control call; when the process is gone meanwhile, the error says so rather than "connection closed". */
  protected async control<T>(op: string, step: string, send: () => Promise<T>): Promise<T> {
    try {
      return await send()
    } catch (err) {
      if (isControlClosed(err)) {
        this.watch.poke()
        if (this.watch.done || this.#exit) throw new VmmError('vmm_not_running', `${op}: the VM has exited`, { step, cause: err })
      }
      throw err
    }
  }

  async state(): Promise<VmState> {
    if (this.#exit) return 'exited'
    if (this.#detached) throw new VmmError('invalid_state', 'state: this handle was detached', { step: 'state' })
    try {
      return await this.queryState()
    } catch (err) {
      if (err instanceof VmmError && err.code === 'vmm_not_running') return 'exited'
      if (isControlClosed(err)) {
        const ended = await withDeadline(this.exited, CLOSE_TO_EXIT_MS, 'the VMM to exit', 'state').then(
          () => true,
          () => false,
        )
        if (ended) return 'exited'
      }
      throw err
    }
  }

  protected async expectState(allowed: VmState[], step: string): Promise<VmState> {
    const state = await this.state()
    if (state === 'exited') throw new VmmError('vmm_not_running', `${step}: the VM has exited`, { step })
    if (!allowed.includes(state)) throw new VmmError('invalid_state', `${step}: the VM is ${state}`, { step })
    return state
  }

  async pause(): Promise<void> {
    await this.#setRunState('paused', 'pause')
  }

  async resume(): Promise<void> {
    await this.#setRunState('running', 'resume')
  }

  async #setRunState(target: 'running' | 'paused', step: string): Promise<void> {
    this.assertUsable(step)
    const now = await this.expectState(['running', 'paused'], step)
    // QEMU reports every change itself and takes stop/cont in any state, so it is sent as asked.
    // The REST VMMs do neither: they refuse a change to the state the VM is in, and the event
    // that the machine emits instead must mean "this handle changed it".
    if (!this.pushesEvents && now === target) return
    await (target === 'paused' ? this.sendPause() : this.sendResume())
    if (!this.pushesEvents) this.emit({ type: 'state', state: target, at: new Date().toISOString() })
  }

  async waitForExit(opts: WaitOptions = {}): Promise<ExitInfo> {
    if (this.#exit) return this.#exit
    if (opts.timeoutMs === undefined && !opts.signal) return this.exited
    return withDeadline(this.exited, opts.timeoutMs ?? 2 ** 31 - 1, 'the VM to exit', 'wait', opts.signal)
  }

  async kill(): Promise<ExitInfo> {
    if (this.#exit) return this.#exit
    this.assertUsable('kill')
    this.#request = 'kill'
    return this.#killNow('kill')
  }

  async #killNow(step: string): Promise<ExitInfo> {
    await killAndWait(this.pid, this.persisted.pidStartTime)
    this.watch.poke()
    return withDeadline(this.exited, REAP_MS, 'the VM to be reaped', step)
  }

  async shutdown(opts: ShutdownOptions = {}): Promise<ExitInfo> {
    if (this.#exit) return this.#exit
    this.assertUsable('shutdown')
    const timeoutMs = opts.timeoutMs ?? 10_000
    const stop = this.guestStop()
    if (stop) {
      this.#request = 'shutdown'
      try {
        // A paused guest cannot see the button or the keys.
        if ((await this.state()) === 'paused') await this.sendResume()
        await stop.ask()
      } catch (err) {
        if (this.#exit) return this.#exit
        this.logger.warn(`could not ask the guest to ${stop.what}: ${errorMessage(err)}; forcing`, { pid: this.pid })
      }
      const again = stop.repeatMs
        ? setInterval(() => {
            if (!this.#exit) stop.ask().catch(() => {})
          }, stop.repeatMs)
        : undefined
      try {
        return await withDeadline(this.exited, timeoutMs, `the guest to ${stop.what}`, 'shutdown')
      } catch (err) {
        if (!(err instanceof TimeoutError)) throw err
      } finally {
        clearInterval(again)
      }
    }
    return this.#end('shutdown', `${this.label} to quit`, { quit: 'force-quit', kill: 'force-kill' })
  }

  /** Pauses, writes a snapshot into `dir`, and ends the VMM. */
  async standby(dir: string): Promise<SnapshotInfo & { exit: ExitInfo }> {
    this.assertUsable('standby')
    const before = await this.expectState(['running', 'paused'], 'standby')
    const snapshot = await this.writeSnapshot(dir, before)
    const exit = await this.#end('standby', `${this.label} to quit after the snapshot`, { quit: 'standby', kill: 'standby' })
    return { ...snapshot, exit }
  }

  /**
   * Writes a snapshot into `dir` and lets the VM go on as it was (running or paused): the state a
   * template is made of, or a fork's source. A running guest is stopped while its state is written.
   */
  async snapshot(dir: string): Promise<SnapshotInfo> {
    this.assertUsable('snapshot')
    // Its RAM is the file: a VM that went on would change the snapshot under it.
    if (this.persisted.spec.memoryFile?.shared) throw new NotSupportedError('a VM whose RAM is a shared file is snapshotted only by standby', { field: 'memoryFile' })
    const before = await this.expectState(['running', 'paused'], 'snapshot')
    const snapshot = await this.writeSnapshot(dir, before)
    if (before === 'running') await this.sendResume()
    return snapshot
  }

  /** For `writeSnapshot` when it fails: a failed standby leaves the VM as it found it. */
  protected async resumeAfterFailedSnapshot(before: VmState): Promise<void> {
    if (before !== 'running' || this.#exit) return
    await this.sendResume().catch((err) => this.logger.warn(`could not resume after a failed standby: ${errorMessage(err)}`, { pid: this.pid }))
  }

  /** The VMM's own quit when it has one, then SIGKILL if even that does not end it. */
  async #end(step: string, what: string, as: { quit: EndRequest; kill: EndRequest }): Promise<ExitInfo> {
    if (this.canQuit) {
      this.#request = as.quit
      // Refused, or unanswered by a VMM already on its way out: either way it gets the grace, so
      // that a VMM that quits is never SIGKILLed in the middle of it.
      await this.sendQuit(QUIT_GRACE_MS).catch(() => {})
      try {
        return await withDeadline(this.exited, QUIT_GRACE_MS, what, `${step}.quit`)
      } catch {
        // falls through to the kill
      }
    }
    this.#request = as.kill
    return this.#killNow(`${step}.kill`)
  }

  async detach(): Promise<void> {
    if (this.#detached || this.#exit) return
    this.#detached = true
    this.watch.stop()
    await this.closeControl()
  }

  /** `await using`: the VM does not outlive the scope. */
  async dispose(): Promise<void> {
    if (this.#detached || this.#exit) return
    await this.kill().catch((err) => this.logger.warn(`dispose: ${errorMessage(err)}`, { pid: this.pid }))
  }
}
