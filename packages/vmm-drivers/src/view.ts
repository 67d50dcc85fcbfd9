/**
 * The part of a VM handle every driver shares: a view over the driver's machine object, which
 * holds the state. Handles are cheap views so that `pause()` can return a `PausedVm` and
 * `resume()` a `RunningVm` over the same machine without copying anything.
 */
import type { Socket } from 'node:net'
import type { DriverName, ExitInfo, PersistedVm, RunningVm, ShutdownOptions, SnapshotInfo, VmEvent, VmHandleBase, VmState, VmTimings, WaitOptions } from './types.js'

/** What a driver's machine object offers its views: the handle's members that are not derived from `persisted`. */
export type VmMachine = Omit<VmHandleBase, 'driver' | 'accel' | 'spec' | typeof Symbol.asyncDispose> &
  Pick<RunningVm, 'standby'> & { dispose(): Promise<void> }

export abstract class VmView<M extends VmMachine> implements VmHandleBase {
  abstract readonly driver: DriverName
  constructor(protected readonly m: M) {}
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
  detach(): Promise<void> {
    return this.m.detach()
  }
  standby(dir: string): Promise<SnapshotInfo & { exit: ExitInfo }> {
    return this.m.standby(dir)
  }
  [Symbol.asyncDispose](): Promise<void> {
    return this.m.dispose()
  }
}
