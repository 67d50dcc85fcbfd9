/**
 * A live Cloud Hypervisor or Firecracker VM: the REST side of a process machine (machine.ts),
 * which runs the dialect's planned calls; the handles callers get (`RestRunningVm`,
 * `RestPausedVm`) are thin views whose type says the state the VM was in when returned.
 *
 * These VMMs push no events over their REST API: `state` events are emitted for the changes
 * this handle makes, and `exit` when the process ends. What an exit means comes from who asked
 * for it (shutdown, standby, kill) or, when nobody here did, from the dialect and the exit status.
 */
import { mkdir, rm } from 'node:fs/promises'
import type { Socket } from 'node:net'
import { join } from 'node:path'
import { errorMessage, NotSupportedError, ValidationError, writeJsonAtomic, type Logger } from '@hypeman-ts/common'
import { VmmError } from '../errors.js'
import { ProcessMachine, type EndRequest, type GuestStop } from '../machine.js'
import type { ProcessExit, ProcessWatch } from '../process.js'
import type { DiskSpec, DriverName, ExitReason, PersistedVm, SnapshotInfo, VmState, VmTimings, WaitOptions } from '../types.js'
import { PausedView, RunningView } from '../view.js'
import { connectVsock } from '../vsock/connect.js'
import type { ApiCall, CallOptions, RestClient } from './client.js'
import type { RestDialect, RestRuntime } from './dialect.js'
import { REST_SNAPSHOT_FORMAT, REST_SNAPSHOT_META_FILE, restMachineFingerprint, snapshotFiles, type RestSnapshotMeta } from './snapshot.js'

/** A snapshot of a big guest takes a while; this bounds a stuck one. */
const SNAPSHOT_DEADLINE_MS = 10 * 60_000

/** Removes the sockets and pidfile of a VMM that is gone; logs are kept. */
export async function removeRestRuntimeFiles(rt: RestRuntime): Promise<void> {
  await Promise.all([rt.apiSocket, rt.vsockSocket, rt.pidFile].map((p) => rm(p, { force: true })))
}

export class RestMachine extends ProcessMachine {
  protected readonly pushesEvents = false

  constructor(
    readonly dialect: RestDialect,
    persisted: PersistedVm,
    readonly runtime: RestRuntime,
    readonly client: RestClient,
    watch: ProcessWatch,
    timings: VmTimings,
    logger: Logger,
  ) {
    super(dialect.label, persisted, watch, timings, logger)
  }

  get driver(): DriverName {
    return this.dialect.name
  }

  /** These VMMs never say why they end: what this handle asked for decides, else the dialect reads the exit status. */
  protected exitReason(exit: ProcessExit, request: EndRequest | undefined): { reason: ExitReason; vmmReason?: string } {
    switch (request) {
      case 'standby':
        return { reason: 'standby' }
      case 'shutdown':
        return { reason: 'poweroff', vmmReason: this.dialect.capabilities.gracefulShutdown }
      case 'force-quit':
        return { reason: 'quit' }
      case 'kill':
      case 'force-kill':
        return { reason: 'killed' }
      default:
        return this.dialect.unrequestedExit(exit)
    }
  }

  protected dropControl(): void {
    this.client.destroy()
  }

  protected closeControl(): Promise<void> {
    return this.client.close()
  }

  protected removeRuntimeFiles(): Promise<void> {
    return removeRestRuntimeFiles(this.runtime)
  }

  #call<T = unknown>(call: ApiCall, opts: CallOptions = {}): Promise<T> {
    return this.control(call.op, `${this.dialect.name}.${call.op}`, () => this.client.call<T>(call, opts))
  }

  async #run(calls: ApiCall[], opts: CallOptions = {}): Promise<void> {
    for (const c of calls) await this.#call(c, opts)
  }

  protected async queryState(): Promise<VmState> {
    return this.dialect.parseState(await this.#call(this.dialect.stateCall))
  }

  protected sendPause(): Promise<void> {
    return this.#run(this.dialect.planPause())
  }

  protected sendResume(): Promise<void> {
    return this.#run(this.dialect.planResume())
  }

  protected guestStop(): GuestStop | undefined {
    const calls = this.dialect.planGracefulShutdown()
    return calls.length > 0 ? { what: 'stop', ask: () => this.#run(calls) } : undefined
  }

  protected get canQuit(): boolean {
    return this.dialect.planQuit().length > 0
  }

  protected sendQuit(timeoutMs: number): Promise<void> {
    return this.#run(this.dialect.planQuit(), { timeoutMs })
  }

  /** The VMM writes its files into `dir`; our metadata beside them says which they are. */
  protected async writeSnapshot(dir: string, before: VmState): Promise<SnapshotInfo> {
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
    if (before === 'running') await this.sendPause()
    let files: Record<string, number>
    try {
      await this.#run(this.dialect.planSnapshot(dir), { timeoutMs: SNAPSHOT_DEADLINE_MS })
      files = await snapshotFiles(dir)
      if (Object.keys(files).length === 0) throw new VmmError('snapshot_failed', `${this.dialect.label} wrote nothing into ${dir}`, { step: 'standby' })
    } catch (err) {
      await removeVmmFiles(dir).catch(() => {})
      await this.resumeAfterFailedSnapshot(before)
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
    return { dir, bytes, durationMs: Date.now() - started, createdAt }
  }

  async resizeMemory(totalBytes: number): Promise<{ memoryBytes: number }> {
    this.assertUsable('resizeMemory')
    const { spec } = this.persisted
    const hp = spec.hotplugMemory
    if (!hp) throw new NotSupportedError('this VM was started without hotplugMemory', { field: 'hotplugMemory' })
    if (!Number.isSafeInteger(totalBytes) || totalBytes > hp.maxBytes || totalBytes < spec.memoryBytes) {
      throw new ValidationError('totalBytes', `expected a whole number of bytes from memoryBytes (${spec.memoryBytes}) to hotplugMemory.maxBytes (${hp.maxBytes})`)
    }
    const current = this.dialect.parseMemory(await this.#call(this.dialect.memoryCall), spec)
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

  async hotplugDisk(_disk: DiskSpec): Promise<void> {
    throw new NotSupportedError(`disk hot-plug is not implemented for ${this.dialect.label}`, { field: 'disk' })
  }

  async unplugDisk(_serial: string): Promise<void> {
    throw new NotSupportedError(`disk hot-plug is not implemented for ${this.dialect.label}`, { field: 'serial' })
  }

  async connectChannel(name: string, opts: WaitOptions = {}): Promise<Socket> {
    this.assertUsable('connectChannel')
    const port = this.persisted.spec.vsock?.ports?.[name]
    if (port === undefined) {
      throw new ValidationError('name', `no vsock port named "${name}" (${this.dialect.label} has no named channels; name ports in spec.vsock.ports)`)
    }
    return connectVsock(this.runtime.vsockSocket, port, {
      timeoutMs: opts.timeoutMs ?? 5000,
      ...(opts.signal ? { signal: opts.signal } : {}),
    })
  }

  runningView(): RestRunningVm {
    return new RestRunningVm(this)
  }

  pausedView(): RestPausedVm {
    return new RestPausedVm(this)
  }

  /** A raw API call, for what the interface does not cover. The caller owns the consequences. */
  async request<T = unknown>(call: ApiCall, opts: CallOptions = {}): Promise<T> {
    this.assertUsable(call.op)
    return this.#call<T>(call, opts)
  }
}

/** Removes what a VMM wrote into a snapshot dir (everything but subdirectories). */
async function removeVmmFiles(dir: string): Promise<void> {
  const files = await snapshotFiles(dir).catch(() => ({}))
  await Promise.all(Object.keys(files).map((f) => rm(join(dir, f), { force: true })))
}

export class RestRunningVm extends RunningView<RestMachine, RestPausedVm> {
  /** A raw API call over the handle's client (e.g. `GET /vm.counters`), for what the interface does not cover. */
  request<T = unknown>(call: ApiCall, opts?: CallOptions): Promise<T> {
    return this.m.request<T>(call, opts)
  }
}

export class RestPausedVm extends PausedView<RestMachine, RestRunningVm> {
  /** A raw API call, as on the running handle. */
  request<T = unknown>(call: ApiCall, opts?: CallOptions): Promise<T> {
    return this.m.request<T>(call, opts)
  }
}
