/**
 * The handles every driver returns are views over the driver's machine, which holds the state.
 * Handles are cheap views so that `pause()` can return a `PausedVm` and `resume()` a `RunningVm`
 * over the same machine without copying anything. The machine hands out its driver's handles,
 * so a driver's handle classes add only what its VMM alone offers (QEMU's raw QMP, the REST
 * VMMs' raw API calls).
 */
import type { Socket } from 'node:net'
import type { DiskSpec, ExitInfo, PausedVm, PersistedVm, RunningVm, ShutdownOptions, SnapshotInfo, VmEvent, VmHandleBase, VmState, VmTimings, WaitOptions } from './types.js'

/** What a driver's machine object offers its views: the handle's members that are not derived from `persisted`. */
export type VmMachine = Omit<VmHandleBase, 'accel' | 'spec' | typeof Symbol.asyncDispose> &
  Pick<RunningVm, 'standby' | 'snapshot'> & {
    pause(): Promise<void>
    resume(): Promise<void>
    dispose(): Promise<void>
  }

/** A machine with its driver's handles: `R` while running, `P` while paused. */
export type PhasedMachine<R extends RunningVm, P extends PausedVm> = VmMachine & {
  runningView(): R
  pausedView(): P
}

export abstract class VmView<M extends VmMachine> implements VmHandleBase {
  constructor(protected readonly m: M) {}
  get driver(): M['driver'] {
    return this.m.driver
  }
  get pid(): number {
    return this.m.pid
  }
  get accel() {
    return this.m.persisted.accel
  }
  get spec() {
    return this.m.persisted.spec
  }
  get persisted(): PersistedVm {
    return this.m.persisted
  }
  get timings(): VmTimings {
    return this.m.timings
  }
  get exited(): Promise<ExitInfo> {
    return this.m.exited
  }
  state(): Promise<VmState> {
    return this.m.state()
  }
  shutdown(opts?: ShutdownOptions): Promise<ExitInfo> {
    return this.m.shutdown(opts)
  }
  kill(): Promise<ExitInfo> {
    return this.m.kill()
  }
  waitForExit(opts?: WaitOptions): Promise<ExitInfo> {
    return this.m.waitForExit(opts)
  }
  onEvent(listener: (event: VmEvent) => void): () => void {
    return this.m.onEvent(listener)
  }
  connectChannel(name: string, opts?: WaitOptions): Promise<Socket> {
    return this.m.connectChannel(name, opts)
  }
  resizeMemory(totalBytes: number): Promise<{ memoryBytes: number }> {
    return this.m.resizeMemory(totalBytes)
  }
  hotplugDisk(disk: DiskSpec): Promise<void> {
    return this.m.hotplugDisk(disk)
  }
  unplugDisk(serial: string, opts?: WaitOptions): Promise<void> {
    return this.m.unplugDisk(serial, opts)
  }
  detach(): Promise<void> {
    return this.m.detach()
  }
  standby(dir: string): Promise<SnapshotInfo & { exit: ExitInfo }> {
    return this.m.standby(dir)
  }
  snapshot(dir: string): Promise<SnapshotInfo> {
    return this.m.snapshot(dir)
  }
  [Symbol.asyncDispose](): Promise<void> {
    return this.m.dispose()
  }
}

/** A handle returned while the VM ran; `P` is its driver's paused handle. */
export abstract class RunningView<M extends PhasedMachine<RunningVm, P>, P extends PausedVm> extends VmView<M> implements RunningVm {
  readonly phase = 'running' as const
  async pause(): Promise<P> {
    await this.m.pause()
    return this.m.pausedView()
  }
}

/** A handle returned while the VM was paused; `R` is its driver's running handle. */
export abstract class PausedView<M extends PhasedMachine<R, PausedVm>, R extends RunningVm> extends VmView<M> implements PausedVm {
  readonly phase = 'paused' as const
  async resume(): Promise<R> {
    await this.m.resume()
    return this.m.runningView()
  }
}
