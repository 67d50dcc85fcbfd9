/**
 * The QEMU driver. A start is a list of steps, and whoever started the process cleans up when a
 * later step fails: validate → check files → (snapshot check) → accel → spawn → onSpawn →
 * QMP ready → (load snapshot, cont) → running. On failure the process is killed and its runtime
 * files removed before the error (with QEMU's own last words) is thrown.
 */
import { appendFile, mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import {
  ConflictError,
  pollUntil,
  stderrLogger,
  throwIfAborted,
  ValidationError,
  type Logger,
} from '@hypeman-ts/common'
import { VmmError } from '../errors.js'
import { vmmCommand } from '../netns.js'
import { findProcessesByArg, isSameProcessAlive, killAndWait, processHasArg, ProcessWatch, readStartTime, spawnDetached } from '../process.js'
import { checkSpecFiles, validateVmSpec } from '../spec.js'
import { failStart } from '../start-failure.js'
import { fileSize } from '../vmm-log.js'
import type {
  Accel,
  AttachOptions,
  DestroyTarget,
  DriverCapabilities,
  PersistedVm,
  ResolvedAccel,
  StartOptions,
  VmmDriver,
  VmSpec,
} from '../types.js'
import { AccelResolver } from './accel.js'
import { buildQemuArgv, DEFAULT_QBOOT, QEMU_MACHINE_CMDLINE, RUNTIME_FILES } from './argv.js'
import { QmpClient } from './qmp-client.js'
import { pidFilePath, processMark, qmpSocketPath, removeRuntimeFiles } from './runtime.js'
import { loadSnapshotForRestore, migrateFromFileUri } from './snapshot.js'
import { mapQemuStatus, QemuMachine, QemuPausedVm, QemuRunningVm } from './vm.js'

export interface QemuDriverOptions {
  /** Default `qemu-system-x86_64` (from PATH). */
  qemuBinary?: string
  /** Firmware; default qboot (`/usr/share/qemu/qboot.rom`). */
  bios?: string
  /** Default: warnings to stderr. */
  logger?: Logger
  /** Default deadline for a VMM to answer on QMP (and to load a snapshot). Default 15 s. */
  readyTimeoutMs?: number
  accelProbe?: {
    /** How long a trivial guest gets to prove KVM works. Default 5 s. */
    deadlineMs?: number
    /** Remember the KVM verdict across processes (keyed by host boot id). */
    cacheFile?: string
  }
}

export const QEMU_CAPABILITIES: DriverCapabilities = Object.freeze({
  pause: true,
  snapshot: true,
  hotplugMemory: true,
  diskThrottle: true,
  diskSerial: true,
  namedChannels: true,
  channelBackends: Object.freeze(['socket', 'file'] as const),
  agentTransport: 'virtio-serial',
  accels: Object.freeze(['kvm', 'tcg'] as const),
  gracefulShutdown: 'acpi-power-button',
  memoryShrink: false,
})

export class QemuDriver implements VmmDriver {
  readonly name = 'qemu' as const
  readonly capabilities = QEMU_CAPABILITIES
  readonly machineCmdline = QEMU_MACHINE_CMDLINE
  readonly qemuBinary: string
  readonly #logger: Logger
  readonly #accel: AccelResolver
  readonly #opts: QemuDriverOptions

  constructor(opts: QemuDriverOptions = {}) {
    this.#opts = opts
    this.qemuBinary = opts.qemuBinary ?? 'qemu-system-x86_64'
    this.#logger = opts.logger ?? stderrLogger
    this.#accel = new AccelResolver({
      qemuBinary: this.qemuBinary,
      logger: this.#logger,
      ...(opts.accelProbe?.deadlineMs !== undefined ? { deadlineMs: opts.accelProbe.deadlineMs } : {}),
      ...(opts.accelProbe?.cacheFile !== undefined ? { cacheFile: opts.accelProbe.cacheFile } : {}),
    })
  }

  async resolveAccel(accel: Accel): Promise<ResolvedAccel> {
    const r = await this.#accel.resolve(accel)
    if (r.accel === undefined) {
      throw new VmmError('accel_unavailable', `accel "${accel}" is not usable on this host: ${r.reason}`, { field: 'accel' })
    }
    return r.accel
  }

  isAlive(persisted: PersistedVm): boolean {
    return isSameProcessAlive(persisted.pid, persisted.pidStartTime)
  }

  async start(spec: VmSpec, opts: StartOptions = {}): Promise<QemuRunningVm> {
    throwIfAborted(opts.signal, 'start')
    validateVmSpec(spec, [RUNTIME_FILES.qmp])
    await checkSpecFiles(spec)
    const restore = spec.restoreFrom ? await loadSnapshotForRestore(spec) : undefined
    const accel = await this.resolveAccel(spec.accel ?? 'auto')
    if (restore && restore.meta.accel !== accel) {
      throw new ValidationError('restoreFrom', `snapshot was taken under ${restore.meta.accel}, this start resolved to ${accel}`)
    }

    await mkdir(spec.runtimeDir, { recursive: true })
    const qmpSocket = qmpSocketPath(spec.runtimeDir)
    const pidFile = pidFilePath(spec.runtimeDir)
    // A VMM of this runtime dir wrote its pidfile at start: one /proc read, not a scan of every process.
    const previous = Number.parseInt(await readFile(pidFile, 'utf8').catch(() => ''), 10)
    if (await processHasArg(previous, processMark(spec.runtimeDir))) {
      throw new ConflictError(`a VMM is already running with runtime dir ${spec.runtimeDir}`, { field: 'runtimeDir' })
    }
    // Leftovers of a VMM that was killed: QEMU would refuse or confuse them.
    await removeRuntimeFiles(spec)

    const argv = buildQemuArgv(spec, { accel, qmpSocket, pidFile, bios: this.#opts.bios ?? DEFAULT_QBOOT, incoming: !!restore })
    const vmmLog = spec.vmmLog ?? join(spec.runtimeDir, RUNTIME_FILES.vmmLog)
    const [command, commandArgs] = vmmCommand(this.qemuBinary, argv, spec.netns)
    await appendFile(vmmLog, `--- hypeman-ts ${new Date().toISOString()} ${restore ? 'restore' : 'start'}: ${command} ${commandArgs.join(' ')}\n`)
    const logOffset = await fileSize(vmmLog)

    const t0 = Date.now()
    const readyTimeoutMs = opts.readyTimeoutMs ?? this.#opts.readyTimeoutMs ?? 15_000
    const spawned = await spawnDetached(command, commandArgs, vmmLog, 'qemu.spawn')
    const persisted: PersistedVm = {
      driver: 'qemu',
      version: 1,
      pid: spawned.pid,
      pidStartTime: spawned.startTime,
      controlSocket: qmpSocket,
      accel,
      spec,
    }
    const watch = new ProcessWatch(spawned.pid, spawned.startTime, spawned.child)
    const exitedAc = new AbortController()
    void watch.exited.then(() => exitedAc.abort(new Error('QEMU exited')))
    const signal = opts.signal ? AbortSignal.any([exitedAc.signal, opts.signal]) : exitedAc.signal
    let qmp: QmpClient | undefined
    let step = 'onSpawn'
    try {
      await opts.onSpawn?.(persisted)
      step = 'qmp.connect'
      qmp = await QmpClient.connect(qmpSocket, { deadline: t0 + readyTimeoutMs, signal })
      const readyMs = Date.now() - t0
      let restoreMs: number | undefined
      if (restore) {
        step = 'restore.incoming'
        await qmp.execute('migrate-incoming', { uri: migrateFromFileUri(restore.statePath) })
        const final = await pollUntil(
          async () => {
            const info = await (qmp as QmpClient).execute<{ status?: string; 'error-desc'?: string }>('query-migrate')
            return info.status === 'completed' || info.status === 'failed' || info.status === 'cancelled' ? info : undefined
          },
          { deadline: t0 + readyTimeoutMs, signal, intervalMs: 5, maxIntervalMs: 50, what: 'the snapshot to load', step },
        )
        if (final.status !== 'completed') {
          throw new VmmError('restore_failed', `loading the snapshot ${final.status}: ${final['error-desc'] ?? 'no reason given'}`, { step })
        }
        step = 'restore.cont'
        const status = await qmp.execute<{ status: string }>('query-status')
        if (status.status !== 'running') await qmp.execute('cont')
        restoreMs = Date.now() - t0
      }
      step = 'query-status'
      const status = await qmp.execute<{ status: string }>('query-status')
      if (mapQemuStatus(status.status) !== 'running') {
        throw new VmmError('vmm_start_failed', `QEMU is ${status.status} right after start`, { step })
      }
      const machine = new QemuMachine(persisted, qmp, watch, { readyMs, ...(restoreMs !== undefined ? { restoreMs } : {}) }, this.#logger)
      return machine.runningView()
    } catch (err) {
      qmp?.destroy()
      return failStart({
        label: 'QEMU',
        err,
        step,
        spawned,
        watch,
        exited: exitedAc.signal,
        removeRuntimeFiles: () => removeRuntimeFiles(spec),
        vmmLog,
        logOffset,
        readyTimeoutMs,
        isReadyTimeout: () => true,
        ...(opts.signal ? { signal: opts.signal } : {}),
        logger: this.#logger,
      })
    }
  }

  async attach(persisted: PersistedVm, opts: AttachOptions = {}): Promise<QemuRunningVm | QemuPausedVm> {
    if (persisted?.driver !== 'qemu') throw new ValidationError('driver', `expected a qemu VM, got ${String(persisted?.driver)}`)
    if (!this.isAlive(persisted)) {
      throw new VmmError('vmm_not_running', `QEMU process ${persisted.pid} is gone`, { step: 'attach' })
    }
    const watch = new ProcessWatch(persisted.pid, persisted.pidStartTime)
    const exitedAc = new AbortController()
    void watch.exited.then(() => exitedAc.abort(new Error('QEMU exited')))
    const signal = opts.signal ? AbortSignal.any([exitedAc.signal, opts.signal]) : exitedAc.signal
    const t0 = Date.now()
    let qmp: QmpClient | undefined
    try {
      qmp = await QmpClient.connect(persisted.controlSocket, {
        deadline: t0 + (opts.readyTimeoutMs ?? this.#opts.readyTimeoutMs ?? 15_000),
        signal,
      })
      const status = await qmp.execute<{ status: string }>('query-status')
      const machine = new QemuMachine(persisted, qmp, watch, { readyMs: Date.now() - t0 }, this.#logger)
      return mapQemuStatus(status.status) === 'running' ? machine.runningView() : machine.pausedView()
    } catch (err) {
      qmp?.destroy()
      watch.stop()
      if (exitedAc.signal.aborted) {
        throw new VmmError('vmm_not_running', `QEMU process ${persisted.pid} exited while attaching`, { step: 'attach', cause: err })
      }
      throw err
    }
  }

  async destroy(target: DestroyTarget): Promise<void> {
    const persisted = 'driver' in target ? target : undefined
    const runtimeDir = 'driver' in target ? target.spec.runtimeDir : target.runtimeDir
    if (persisted) await killAndWait(persisted.pid, persisted.pidStartTime)
    // A process spawned but never recorded (crash between spawn and persist) still carries our mark.
    for (const pid of await findProcessesByArg(processMark(runtimeDir))) {
      await killAndWait(pid, readStartTime(pid))
    }
    await removeRuntimeFiles(persisted ? persisted.spec : { runtimeDir })
  }
}
