/**
 * A live QEMU VM. `QemuMachine` holds the process watch and the QMP connection and does the
 * work; the handles callers get (`QemuRunningVm`, `QemuPausedVm`) are thin views over it whose
 * type says what state the VM was in when the handle was returned.
 */
import { mkdir, rm, stat } from 'node:fs/promises'
import { createConnection, type Socket } from 'node:net'
import { join } from 'node:path'
import { TimeoutError, ValidationError, writeJsonAtomic, type Logger, NotSupportedError, errorMessage } from '@hypeman-ts/common'
import { QmpCommandError, VmmError } from '../errors.js'
import { killAndWait, type ProcessExit, type ProcessWatch } from '../process.js'
import { pollUntil, withDeadline } from '../readiness.js'
import type {
  ExitInfo,
  ExitReason,
  PausedVm,
  PersistedVm,
  RunningVm,
  SnapshotInfo,
  ShutdownOptions,
  VmEvent,
  VmState,
  VmTimings,
  WaitOptions,
} from '../types.js'
import type { QmpClient } from './qmp-client.js'
import type { QmpEvent } from './qmp-codec.js'
import {
  machineFingerprint,
  migrateToFileUri,
  SNAPSHOT_FORMAT,
  SNAPSHOT_META_FILE,
  SNAPSHOT_STATE_FILE,
  type QemuSnapshotMeta,
} from './snapshot.js'
import { removeRuntimeFiles } from './runtime.js'
import { DEFAULT_HOTPLUG_SLOTS } from './argv.js'
import { VmView } from '../view.js'

const MiB = 1024 * 1024

/** QEMU's run states (query-status `status`) in our words. */
export function mapQemuStatus(status: string): VmState {
  switch (status) {
    case 'running':
      return 'running'
    case 'shutdown':
      return 'shutdown'
    case 'guest-panicked':
    case 'internal-error':
    case 'io-error':
      return 'crashed'
    default:
      // paused, prelaunch, inmigrate, postmigrate, finish-migrate, suspended, save-vm, restore-vm, debug, watchdog ...
      return 'paused'
  }
}

/** QEMU's SHUTDOWN `reason` in our words. */
export function mapShutdownReason(reason: string | undefined): ExitReason {
  switch (reason) {
    case 'guest-shutdown':
      return 'poweroff'
    case 'guest-reset':
      return 'reboot'
    case 'guest-panic':
      return 'panic'
    case 'host-signal':
      return 'signal'
    case undefined:
      return 'killed'
    default:
      return 'quit'
  }
}

/** Deadline for the process to end after `quit` before it is killed. */
const QUIT_GRACE_MS = 3000
/** Snapshots of big guests can take a while; this bounds a stuck one. */
const MIGRATE_DEADLINE_MS = 10 * 60_000
/**
 * QEMU caps migration at 128 MiB/s by default; a stopped guest has nothing to race, so lift it.
 * (No measurable difference for a 256 MiB guest under TCG, where the stream runs at ~140 MB/s anyway.)
 */
const MIGRATE_MAX_BANDWIDTH = 1024 ** 4

export class QemuMachine {
  readonly exited: Promise<ExitInfo>
  #exit: ExitInfo | undefined
  #listeners = new Set<(event: VmEvent) => void>()
  #lastShutdown: { guest: boolean; reason?: string } | undefined
  #panicked = false
  /** The end was our standby, whatever QEMU's SHUTDOWN says (host-qmp-quit). */
  #standby = false
  #forced = false
  #detached = false
  #unsubscribe: () => void

  constructor(
    readonly persisted: PersistedVm,
    readonly qmp: QmpClient,
    readonly watch: ProcessWatch,
    readonly timings: VmTimings,
    readonly logger: Logger,
  ) {
    this.#unsubscribe = qmp.onEvent((e) => this.#onQmpEvent(e))
    // When QMP closes the process is usually ending; look now rather than at the next poll.
    void qmp.closed.then(() => watch.poke())
    this.exited = watch.exited.then((exit) => this.#onExit(exit))
  }

  get pid(): number {
    return this.persisted.pid
  }

  get done(): boolean {
    return this.#exit !== undefined
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

  #onQmpEvent(e: QmpEvent): void {
    const at = new Date(e.timestampMs || Date.now()).toISOString()
    this.#emit({ type: 'vmm', name: e.name, data: e.data, at })
    switch (e.name) {
      case 'STOP':
        this.#emit({ type: 'state', state: 'paused', at })
        break
      case 'RESUME':
        this.#emit({ type: 'state', state: 'running', at })
        break
      case 'GUEST_PANICKED':
        this.#panicked = true
        this.#emit({ type: 'state', state: 'crashed', at })
        break
      case 'SHUTDOWN':
        this.#lastShutdown = {
          guest: e.data.guest === true,
          ...(typeof e.data.reason === 'string' ? { reason: e.data.reason } : {}),
        }
        this.#emit({ type: 'state', state: 'shutdown', at })
        break
    }
  }

  async #onExit(exit: ProcessExit): Promise<ExitInfo> {
    this.#unsubscribe()
    this.qmp.destroy()
    let reason: ExitReason
    if (this.#standby) reason = 'standby'
    else if (this.#panicked) reason = 'panic'
    else if (this.#lastShutdown) reason = mapShutdownReason(this.#lastShutdown.reason)
    else reason = 'killed'
    const info: ExitInfo = {
      reason,
      code: exit.code,
      signal: exit.signal,
      ...(this.#lastShutdown?.reason ? { vmmReason: this.#lastShutdown.reason } : {}),
      ...(this.#forced ? { forced: true } : {}),
      at: new Date().toISOString(),
    }
    this.#exit = info
    await removeRuntimeFiles(this.persisted.spec).catch((err) =>
      this.logger.warn(`could not remove VM runtime files: ${errorMessage(err)}`, { runtimeDir: this.persisted.spec.runtimeDir }),
    )
    this.#emit({ type: 'exit', exit: info })
    return info
  }

  #assertUsable(step: string): void {
    if (this.#detached) throw new VmmError('invalid_state', `${step}: this handle was detached`, { step })
    if (this.#exit) throw new VmmError('vmm_not_running', `${step}: the VM has exited (${this.#exit.reason})`, { step })
  }

  /** A QMP command; when the process is gone meanwhile, the error says so rather than "connection closed". */
  async #qmp<T>(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T> {
    try {
      return await this.qmp.execute<T>(command, args, timeoutMs === undefined ? {} : { timeoutMs })
    } catch (err) {
      if (err instanceof VmmError && err.code === 'control_closed') {
        this.watch.poke()
        if (this.watch.done || this.#exit) {
          throw new VmmError('vmm_not_running', `${command}: the VM has exited`, { step: `qmp.${command}`, cause: err })
        }
      }
      throw err
    }
  }

  async state(): Promise<VmState> {
    if (this.#exit) return 'exited'
    if (this.#detached) throw new VmmError('invalid_state', 'state: this handle was detached', { step: 'state' })
    try {
      const status = await this.#qmp<{ status: string }>('query-status')
      return mapQemuStatus(status.status)
    } catch (err) {
      if (err instanceof VmmError && err.code === 'vmm_not_running') return 'exited'
      // A closing socket races the process exit; give the exit a moment to be observed.
      if (err instanceof VmmError && err.code === 'control_closed') {
        const ended = await withDeadline(this.exited, 2000, 'the VMM to exit', 'state').then(
          () => true,
          () => false,
        )
        if (ended) return 'exited'
      }
      throw err
    }
  }

  async pause(): Promise<void> {
    this.#assertUsable('pause')
    await this.#expectState(['running', 'paused'], 'pause')
    await this.#qmp('stop')
  }

  async resume(): Promise<void> {
    this.#assertUsable('resume')
    await this.#expectState(['running', 'paused'], 'resume')
    await this.#qmp('cont')
  }

  async #expectState(allowed: VmState[], step: string): Promise<VmState> {
    const state = await this.state()
    if (state === 'exited') throw new VmmError('vmm_not_running', `${step}: the VM has exited`, { step })
    if (!allowed.includes(state)) throw new VmmError('invalid_state', `${step}: the VM is ${state}`, { step })
    return state
  }

  async waitForExit(opts: WaitOptions = {}): Promise<ExitInfo> {
    if (this.#exit) return this.#exit
    if (opts.timeoutMs === undefined && !opts.signal) return this.exited
    return withDeadline(this.exited, opts.timeoutMs ?? 2 ** 31 - 1, 'the VM to exit', 'wait', opts.signal)
  }

  async kill(): Promise<ExitInfo> {
    if (this.#exit) return this.#exit
    this.#assertUsable('kill')
    await killAndWait(this.pid, this.persisted.pidStartTime)
    this.watch.poke()
    return withDeadline(this.exited, 10_000, 'the VM to be reaped', 'kill')
  }

  async shutdown(opts: ShutdownOptions = {}): Promise<ExitInfo> {
    if (this.#exit) return this.#exit
    this.#assertUsable('shutdown')
    const timeoutMs = opts.timeoutMs ?? 10_000
    try {
      // A paused guest cannot see the power button.
      if ((await this.state()) === 'paused') await this.#qmp('cont')
      await this.#qmp('system_powerdown')
    } catch (err) {
      if (this.#exit) return this.#exit
      this.logger.warn(`could not ask the guest to power off: ${errorMessage(err)}; forcing`, { pid: this.pid })
    }
    // Under TCG a press in the first seconds of a boot can be lost before the guest's ACPI
    // handler is ready (QEMU emits POWERDOWN, the guest never sees it): press again each second.
    const repress = setInterval(() => {
      if (!this.#exit) this.#qmp('system_powerdown').catch(() => {})
    }, 1_000)
    try {
      return await withDeadline(this.exited, timeoutMs, 'the guest to power off', 'shutdown')
    } catch (err) {
      if (!(err instanceof TimeoutError)) throw err
    } finally {
      clearInterval(repress)
    }
    return this.#force()
  }

  /** quit over QMP (QEMU flushes and ends), and SIGKILL if even that does not end it. */
  async #force(): Promise<ExitInfo> {
    this.#forced = true
    await this.#qmp('quit', undefined, QUIT_GRACE_MS).catch(() => {})
    try {
      return await withDeadline(this.exited, QUIT_GRACE_MS, 'QEMU to quit', 'shutdown.quit')
    } catch {
      await killAndWait(this.pid, this.persisted.pidStartTime)
      this.watch.poke()
      return withDeadline(this.exited, 10_000, 'the VM to be reaped', 'shutdown.kill')
    }
  }

  async standby(dir: string): Promise<SnapshotInfo & { exit: ExitInfo }> {
    this.#assertUsable('standby')
    const before = await this.#expectState(['running', 'paused'], 'standby')
    if (this.persisted.spec.hotplugMemory && (await this.#memoryDevices()).length > 0) {
      // A restore would have to re-create the DIMMs before loading the stream; not done yet.
      throw new NotSupportedError('standby of a VM with hotplugged memory is not supported yet', { field: 'hotplugMemory' })
    }
    await mkdir(dir, { recursive: true })
    const statePath = join(dir, SNAPSHOT_STATE_FILE)
    const metaPath = join(dir, SNAPSHOT_META_FILE)
    // An old snapshot in the same dir must not survive as if it were this one.
    await rm(metaPath, { force: true })
    await rm(statePath, { force: true })
    const started = Date.now()
    await this.#qmp('stop')
    try {
      await this.#qmp('migrate-set-parameters', { 'max-bandwidth': MIGRATE_MAX_BANDWIDTH }).catch((err) =>
        this.logger.debug(`migrate-set-parameters failed: ${errorMessage(err)}`),
      )
      await this.#qmp('migrate', { uri: migrateToFileUri(statePath) })
      const final = await pollUntil(
        async () => {
          const info = await this.#qmp<{ status?: string; 'error-desc'?: string }>('query-migrate')
          return info.status === 'completed' || info.status === 'failed' || info.status === 'cancelled' ? info : undefined
        },
        { deadline: Date.now() + MIGRATE_DEADLINE_MS, intervalMs: 10, maxIntervalMs: 100, what: 'the snapshot to complete', step: 'standby.migrate' },
      )
      if (final.status !== 'completed') {
        throw new VmmError('snapshot_failed', `snapshot ${final.status}: ${final['error-desc'] ?? 'no reason given'}`, { step: 'standby.migrate' })
      }
    } catch (err) {
      await rm(statePath, { force: true })
      // A failed standby leaves the VM as it found it: the guest's memory was never touched.
      if (before === 'running') {
        await this.#qmp('cont').catch((e) => this.logger.warn(`could not resume after a failed standby: ${errorMessage(e)}`, { pid: this.pid }))
      }
      if (err instanceof VmmError || err instanceof QmpCommandError || err instanceof TimeoutError) throw err
      throw new VmmError('snapshot_failed', `snapshot failed: ${errorMessage(err)}`, { step: 'standby', cause: err })
    }
    const bytes = (await stat(statePath)).size
    const createdAt = new Date().toISOString()
    const meta: QemuSnapshotMeta = {
      format: SNAPSHOT_FORMAT,
      driver: 'qemu',
      qemuVersion: versionString(this.qmp),
      accel: this.persisted.accel,
      fingerprint: machineFingerprint(this.persisted.spec),
      stateFile: SNAPSHOT_STATE_FILE,
      bytes,
      createdAt,
    }
    await writeJsonAtomic(metaPath, meta)
    const durationMs = Date.now() - started
    this.#standby = true
    await this.#qmp('quit', undefined, QUIT_GRACE_MS).catch(() => {})
    let exit: ExitInfo
    try {
      exit = await withDeadline(this.exited, QUIT_GRACE_MS, 'QEMU to quit after the snapshot', 'standby.quit')
    } catch {
      await killAndWait(this.pid, this.persisted.pidStartTime)
      this.watch.poke()
      exit = await withDeadline(this.exited, 10_000, 'the VM to be reaped', 'standby.kill')
    }
    return { dir, bytes, durationMs, createdAt, exit }
  }

  /** Boot memory plus the DIMMs hotplugged so far. */
  async #memoryDevices(): Promise<{ id?: string; size: number }[]> {
    const devices = await this.#qmp<{ type: string; data: { id?: string; size: number } }[]>('query-memory-devices')
    return devices.filter((d) => d.type === 'dimm').map((d) => d.data)
  }

  async resizeMemory(totalBytes: number): Promise<{ memoryBytes: number }> {
    this.#assertUsable('resizeMemory')
    const { spec } = this.persisted
    const hp = spec.hotplugMemory
    if (!hp) throw new NotSupportedError('this VM was started without hotplugMemory', { field: 'hotplugMemory' })
    if (!Number.isSafeInteger(totalBytes) || totalBytes > hp.maxBytes) {
      throw new ValidationError('totalBytes', `expected a whole number of bytes up to hotplugMemory.maxBytes (${hp.maxBytes})`)
    }
    const dimms = await this.#memoryDevices()
    const current = spec.memoryBytes + dimms.reduce((sum, d) => sum + d.size, 0)
    if (totalBytes === current) return { memoryBytes: current }
    if (totalBytes < current) throw new NotSupportedError(`QEMU memory can only grow (now ${current} bytes)`, { field: 'totalBytes' })
    const delta = totalBytes - current
    // Linux onlines hotplugged memory in 128 MiB blocks; anything else would be partly unusable.
    if (delta % (128 * MiB) !== 0) throw new ValidationError('totalBytes', `the increase (${delta} bytes) must be a multiple of 128 MiB`)
    if (dimms.length >= (hp.slots ?? DEFAULT_HOTPLUG_SLOTS)) {
      throw new VmmError('invalid_state', `all ${hp.slots ?? DEFAULT_HOTPLUG_SLOTS} memory hotplug slots are used`, { step: 'resizeMemory' })
    }
    const n = dimms.length
    await this.#qmp('object-add', { 'qom-type': 'memory-backend-ram', id: `hm-mem${n}`, size: delta })
    try {
      await this.#qmp('device_add', { driver: 'pc-dimm', id: `hm-dimm${n}`, memdev: `hm-mem${n}` })
    } catch (err) {
      // No half-added memory: the backend without its DIMM goes too.
      await this.#qmp('object-del', { id: `hm-mem${n}` }).catch(() => {})
      throw err
    }
    return { memoryBytes: totalBytes }
  }

  async connectChannel(name: string, opts: WaitOptions = {}): Promise<Socket> {
    this.#assertUsable('connectChannel')
    const ch = (this.persisted.spec.channels ?? []).find((c) => c.name === name)
    if (!ch) throw new ValidationError('name', `no channel named "${name}"`)
    if (ch.backend.kind !== 'socket') throw new NotSupportedError(`channel "${name}" is file-backed; read ${ch.backend.path}`, { field: 'name' })
    const path = ch.backend.path
    return pollUntil(
      () =>
        new Promise<Socket | undefined>((resolve, reject) => {
          const s = createConnection(path)
          s.once('connect', () => {
            s.removeAllListeners('error')
            resolve(s)
          })
          s.once('error', (err: NodeJS.ErrnoException) => {
            s.destroy()
            if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') resolve(undefined)
            else reject(err)
          })
        }),
      {
        deadline: Date.now() + (opts.timeoutMs ?? 5000),
        ...(opts.signal ? { signal: opts.signal } : {}),
        what: `channel ${name} at ${path}`,
        step: 'channel.connect',
      },
    )
  }

  /** Raw QMP, for what the generic interface does not cover. The caller owns the consequences. */
  async execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    this.#assertUsable(command)
    return this.#qmp<T>(command, args)
  }

  async detach(): Promise<void> {
    if (this.#detached || this.#exit) return
    this.#detached = true
    this.watch.stop()
    this.#unsubscribe()
    await this.qmp.close()
  }

  /** `await using`: the VM does not outlive the scope. */
  async dispose(): Promise<void> {
    if (this.#detached || this.#exit) return
    await this.kill().catch((err) => this.logger.warn(`dispose: ${errorMessage(err)}`, { pid: this.pid }))
  }
}

function versionString(qmp: QmpClient): string {
  const v = qmp.greeting?.version?.qemu
  return v ? `${v.major}.${v.minor}.${v.micro}` : 'unknown'
}

/** What every handle view offers; all of it is delegated to the machine. */
abstract class QemuVmView extends VmView<QemuMachine> {
  readonly driver = 'qemu' as const
  /** QEMU only: a raw QMP command (e.g. `query-block`, `qom-get`), over the handle's own connection. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    return this.m.execute<T>(command, args)
  }
}

export class QemuRunningVm extends QemuVmView implements RunningVm {
  readonly phase = 'running' as const
  async pause(): Promise<QemuPausedVm> {
    await this.m.pause()
    return new QemuPausedVm(this.m)
  }
}

export class QemuPausedVm extends QemuVmView implements PausedVm {
  readonly phase = 'paused' as const
  async resume(): Promise<QemuRunningVm> {
    await this.m.resume()
    return new QemuRunningVm(this.m)
  }
}
