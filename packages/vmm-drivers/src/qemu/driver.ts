/**
 * The QEMU driver. A start checks before it spawns anything (spec, files, snapshot, accel), then
 * runs the step list of src/start.ts: qemu.spawn → onSpawn → qmp.connect → (restore.incoming →
 * restore.cont) → query-status. On failure the process is killed and its runtime files removed
 * before the error (with QEMU's own last words) is thrown.
 */
import { open, rm, stat } from 'node:fs/promises'
import { copyIntoHoles, copySparse, stderrLogger, throwIfAborted, ValidationError, withoutSteps, type Logger, type Step, type StepList } from '@hypeman-ts/common'
import { attachVmm } from '../attach.js'
import { VmmError } from '../errors.js'
import { vmmCommand } from '../netns.js'
import { findProcessesByArg, isSameProcessAlive, killAndWait, readStartTime } from '../process.js'
import { checkSpecFiles, validateVmSpec } from '../spec.js'
import { ON_SPAWN, spawnStep, startVmm, type StartPlan, type StartRun } from '../start.js'
import type { Accel, AttachOptions, DestroyTarget, DriverCapabilities, PersistedVm, ResolvedAccel, SpawnWarmOptions, StartOptions, VmmDriver, VmSpec } from '../types.js'
import { AccelResolver } from './accel.js'
import { buildQemuArgv, DEFAULT_QBOOT, QEMU_MACHINE_CMDLINE, RUNTIME_FILES } from './argv.js'
import { QmpClient } from './qmp-client.js'
import { pidFilePath, processMark, qmpSocketPath, removeRuntimeFiles } from './runtime.js'
import { loadSnapshot, loadSnapshotForRestore, snapshotRamFile } from './snapshot.js'
import { mapQemuStatus, QemuMachine, QemuPausedVm, QemuRunningVm } from './vm.js'
import { QemuWarmVm, vmmLogOf, WARM_NICE, warmUnsupported } from './warm.js'

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
  memoryFile: true,
  diskThrottle: true,
  diskSerial: true,
  namedChannels: true,
  channelBackends: Object.freeze(['socket', 'file'] as const),
  agentTransport: 'virtio-serial',
  accels: Object.freeze(['kvm', 'tcg'] as const),
  gracefulShutdown: 'acpi-power-button',
  memoryShrink: false,
  passthrough: true,
  diskHotplug: true,
})

/** The steps only a restore has. */
const RESTORE_STEPS = ['restore.incoming', 'restore.cont']

/**
 * A clone's RAM copied while QEMU starts, not after: the file is sized first (QEMU refuses a RAM
 * file of another size when it opens it, which it may do mid-copy), then the source's data is
 * written into it in place. QEMU writes nothing into guest RAM before the migration, so the copy
 * and QEMU's start need no order between them.
 */
function cloneRamSteps(path: string, bytes: number, from: string, spawn: Step<StartRun>, lowPriority: boolean): StepList<StartRun> {
  const sized: Step<StartRun> = {
    name: 'clone.ram.size',
    run: async () => {
      await rm(path, { force: true })
      const f = await open(path, 'wx', 0o600)
      await f.truncate(bytes).finally(() => f.close())
    },
    undo: () => rm(path, { force: true }),
  }
  const copy: Step<StartRun> = { name: 'clone.ram', run: (_r, signal) => copyIntoHoles(from, path, { signal, lowPriority }) }
  return [sized, [spawn, copy]]
}

export class QemuDriver implements VmmDriver {
  readonly name = 'qemu' as const
  readonly capabilities = QEMU_CAPABILITIES
  readonly machineCmdline = QEMU_MACHINE_CMDLINE
  readonly qemuBinary: string
  get programs(): readonly string[] {
    return [this.qemuBinary]
  }
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

  snapshotRamFile(dir: string): Promise<string | undefined> {
    return snapshotRamFile(dir)
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

  /**
   * What a start and a warm spawn share: the checks before anything is spawned, the plan of the
   * spawn, and the QMP connect step (whose client `qmp.client` holds once it ran).
   */
  async #plan(spec: VmSpec, opts: StartOptions, warm: boolean, niced = warm) {
    throwIfAborted(opts.signal, warm ? 'spawnWarm' : 'start')
    validateVmSpec(spec, [RUNTIME_FILES.qmp], { memoryFile: true, passthrough: !warm, diskHotplug: true })
    const refused = warm ? warmUnsupported(spec) : undefined
    if (refused) throw new ValidationError('spec', `no warm VM for this spec: ${refused}`)
    await checkSpecFiles(spec)
    const restore = spec.restoreFrom ? await loadSnapshotForRestore(spec) : undefined
    const accel = await this.resolveAccel(spec.accel ?? 'auto')
    if (restore && restore.meta.accel !== accel) {
      throw new ValidationError('restoreFrom', `snapshot was taken under ${restore.meta.accel}, this start resolved to ${accel}`)
    }
    const qmpSocket = qmpSocketPath(spec.runtimeDir)
    const pidFile = pidFilePath(spec.runtimeDir)
    const bios = this.#opts.bios ?? DEFAULT_QBOOT
    const argv = buildQemuArgv(spec, { accel, qmpSocket, pidFile, bios, incoming: warm || !!restore, paused: warm })
    // A warm VM waits at the lowest CPU priority, every thread (they inherit it): spawned ahead of
    // need, it must not slow what runs now on a small host. Its adoption gives the normal one back.
    const [command, args] = niced ? vmmCommand('nice', ['-n', String(WARM_NICE), this.qemuBinary, ...argv], spec.netns) : vmmCommand(this.qemuBinary, argv, spec.netns)
    const readyTimeoutMs = opts.readyTimeoutMs ?? this.#opts.readyTimeoutMs ?? 15_000
    const qmp: { client?: QmpClient } = {}
    const connect: Step<StartRun> = {
      name: 'qmp.connect',
      run: async (r, signal) => {
        qmp.client = await QmpClient.connect(qmpSocket, { deadline: r.deadline, signal })
        r.ready()
      },
      undo: async () => qmp.client?.destroy(),
    }
    const plan: StartPlan = {
      driver: 'qemu',
      label: 'QEMU',
      spec,
      accel,
      controlSocket: qmpSocket,
      command,
      args,
      vmmLog: vmmLogOf(spec),
      pidFile,
      mark: processMark(spec.runtimeDir),
      removeRuntimeFiles: () => removeRuntimeFiles(spec),
      restore: !!restore,
      readyTimeoutMs,
      // One deadline covers the connect and the snapshot load: whichever step it passes in, QEMU was not ready.
      isReadyTimeout: () => true,
      opts,
      logger: this.#logger,
    }
    // The snapshot's RAM copied into the VM's own shared file before QEMU maps it (in the kernel,
    // sparse: the pages the guest had touched), so the snapshot stays true for another restore.
    const ramFrom = restore?.ramFrom
    const ram: Step<StartRun>[] = ramFrom
      ? [{ name: 'restore.ram', run: (_r, signal) => copySparse(ramFrom, spec.memoryFile!.path, { signal, lowPriority: niced }), undo: () => rm(spec.memoryFile!.path, { force: true }) }]
      : []
    return { plan, restore, qmp, connect, ram, readyTimeoutMs }
  }

  async start(spec: VmSpec, opts: StartOptions = {}): Promise<QemuRunningVm> {
    const { plan, restore, qmp, connect, ram } = await this.#plan(spec, opts, false)
    const steps: Step<StartRun>[] = [
      ...ram,
      spawnStep('qemu'),
      ON_SPAWN,
      connect,
      {
        name: 'restore.incoming',
        run: (r, signal) => loadSnapshot(qmp.client!, restore!, r.deadline, signal),
      },
      {
        name: 'restore.cont',
        run: async (r) => {
          const status = await qmp.client!.execute<{ status: string }>('query-status')
          if (status.status !== 'running') await qmp.client!.execute('cont')
          r.restored()
        },
      },
      {
        name: 'query-status',
        run: async () => {
          const status = await qmp.client!.execute<{ status: string }>('query-status')
          if (mapQemuStatus(status.status) !== 'running') {
            throw new VmmError('vmm_start_failed', `QEMU is ${status.status} right after start`, { step: 'query-status' })
          }
        },
      },
    ]
    // A restore is the boot with the snapshot's steps; QEMU was spawned waiting for it (-incoming).
    const run = await startVmm(plan, restore ? steps : withoutSteps(steps, RESTORE_STEPS))
    return new QemuMachine(run.vmm.persisted, qmp.client!, run.vmm.watch, run.timings, this.#logger).runningView()
  }

  /**
   * A QEMU for `spec`, spawned and left paused (`-incoming defer -S`), the snapshot of
   * `spec.restoreFrom` loaded when given (warm.ts). No onSpawn: the caller finds a warm VM it lost
   * by the mark of `spec.runtimeDir`.
   */
  async spawnWarm(spec: VmSpec, opts: SpawnWarmOptions = {}): Promise<QemuWarmVm> {
    const { now, ramFrom, ...startOpts } = opts
    if (ramFrom !== undefined) {
      if (!spec.memoryFile?.shared) throw new ValidationError('ramFrom', 'a clone\'s RAM is copied into a shared memoryFile; this spec has none')
      if (spec.restoreFrom) throw new ValidationError('ramFrom', 'a clone loads no snapshot (restoreFrom)')
      const size = await stat(ramFrom).then((st) => st.size, () => -1)
      if (size !== spec.memoryBytes) throw new ValidationError('ramFrom', `${ramFrom} is missing or is not the guest's ${spec.memoryBytes} bytes (${size})`)
    }
    // Needed now, it must not start at the lowest priority behind the guests that run.
    const { plan, restore, qmp, connect, ram, readyTimeoutMs } = await this.#plan(spec, startOpts, true, !now)
    const spawn = spawnStep('qemu')
    const steps: StepList<StartRun> = [
      ...ram,
      ...(ramFrom !== undefined ? cloneRamSteps(spec.memoryFile!.path, spec.memoryBytes, ramFrom, spawn, !now) : [spawn]),
      connect,
      ...(restore ? [{ name: 'restore.incoming', run: (r: StartRun, signal: AbortSignal) => loadSnapshot(qmp.client!, restore, r.deadline, signal) }] : []),
    ]
    const run = await startVmm(plan, steps)
    return new QemuWarmVm(run.vmm.persisted, qmp.client!, run.vmm.watch, spec.restoreFrom, readyTimeoutMs, this.#logger, ramFrom)
  }

  async attach(persisted: PersistedVm, opts: AttachOptions = {}): Promise<QemuRunningVm | QemuPausedVm> {
    if (persisted?.driver !== 'qemu') throw new ValidationError('driver', `expected a qemu VM, got ${String(persisted?.driver)}`)
    const readyTimeoutMs = opts.readyTimeoutMs ?? this.#opts.readyTimeoutMs ?? 15_000
    return attachVmm('QEMU', persisted, { ...opts, readyTimeoutMs }, async ({ watch, signal, t0, deadline }) => {
      const qmp = await QmpClient.connect(persisted.controlSocket, { deadline, signal })
      try {
        const status = await qmp.execute<{ status: string }>('query-status')
        const machine = new QemuMachine(persisted, qmp, watch, { readyMs: Date.now() - t0 }, this.#logger)
        return mapQemuStatus(status.status) === 'running' ? machine.runningView() : machine.pausedView()
      } catch (err) {
        qmp.destroy()
        throw err
      }
    })
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
