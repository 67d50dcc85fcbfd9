/**
 * A live QEMU VM: the QMP side of a process machine (machine.ts). QEMU pushes events, so its
 * state changes and the reason it ends come from QMP; snapshots are migration streams, memory
 * grows by DIMMs, and guest channels are virtio-serial sockets. The handles callers get
 * (`QemuRunningVm`, `QemuPausedVm`) are thin views over the machine whose type says what state
 * the VM was in when the handle was returned.
 */
import { mkdir, rm, stat } from 'node:fs/promises'
import { createConnection, type Socket } from 'node:net'
import { join, resolve } from 'node:path'
import { copySparse, errorMessage, NotSupportedError, pollUntil, syncFile, TimeoutError, ValidationError, withDeadline, writeJsonAtomic, type Logger } from '@hypeman-ts/common'
import { QmpCommandError, VmmError } from '../errors.js'
import { ProcessMachine, type EndRequest, type GuestStop } from '../machine.js'
import type { ProcessExit, ProcessWatch } from '../process.js'
import type { DiskSpec, ExitReason, PersistedVm, SnapshotInfo, VmState, VmTimings, WaitOptions } from '../types.js'
import { validateDisk } from '../spec.js'
import type { QmpClient } from './qmp-client.js'
import type { QmpEvent } from './qmp-codec.js'
import {
  machineFingerprint,
  migrateToFileUri,
  SNAPSHOT_FORMAT,
  SNAPSHOT_META_FILE,
  SNAPSHOT_RAM_FILE,
  SNAPSHOT_STATE_FILE,
  type QemuSnapshotMeta,
} from './snapshot.js'
import { removeRuntimeFiles as removeQemuRuntimeFiles } from './runtime.js'
import { DEFAULT_HOTPLUG_SLOTS, qemuDisk } from './argv.js'
import { PausedView, RunningView } from '../view.js'

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

/** Snapshots of big guests can take a while; this bounds a stuck one. */
const MIGRATE_DEADLINE_MS = 10 * 60_000
/**
 * QEMU caps migration at 128 MiB/s by default; a stopped guest has nothing to race, so lift it.
 * (No measurable difference for a 256 MiB guest under TCG, where the stream runs at ~140 MB/s anyway.)
 */
export const MIGRATE_MAX_BANDWIDTH = 1024 ** 4

export class QemuMachine extends ProcessMachine {
  readonly driver = 'qemu' as const
  protected readonly pushesEvents = true
  protected readonly canQuit = true
  #lastShutdown: { guest: boolean; reason?: string } | undefined
  #panicked = false
  #unsubscribe: () => void

  constructor(persisted: PersistedVm, readonly qmp: QmpClient, watch: ProcessWatch, timings: VmTimings, logger: Logger) {
    super('QEMU', persisted, watch, timings, logger)
    this.#unsubscribe = qmp.onEvent((e) => this.#onQmpEvent(e))
    // When QMP closes the process is usually ending; look now rather than at the next poll.
    void qmp.closed.then(() => watch.poke())
  }

  #onQmpEvent(e: QmpEvent): void {
    const at = new Date(e.timestampMs || Date.now()).toISOString()
    this.emit({ type: 'vmm', name: e.name, data: e.data, at })
    switch (e.name) {
      case 'STOP':
        this.emit({ type: 'state', state: 'paused', at })
        break
      case 'RESUME':
        this.emit({ type: 'state', state: 'running', at })
        break
      case 'GUEST_PANICKED':
        this.#panicked = true
        this.emit({ type: 'state', state: 'crashed', at })
        break
      case 'SHUTDOWN':
        this.#lastShutdown = {
          guest: e.data.guest === true,
          ...(typeof e.data.reason === 'string' ? { reason: e.data.reason } : {}),
        }
        this.emit({ type: 'state', state: 'shutdown', at })
        break
    }
  }

  /** Our standby decides over QEMU's SHUTDOWN (which says host-qmp-quit); otherwise QEMU's events say why. */
  protected exitReason(_exit: ProcessExit, request: EndRequest | undefined): { reason: ExitReason; vmmReason?: string } {
    const vmmReason = this.#lastShutdown?.reason
    let reason: ExitReason
    if (request === 'standby') reason = 'standby'
    else if (this.#panicked) reason = 'panic'
    else if (this.#lastShutdown) reason = mapShutdownReason(vmmReason)
    else reason = 'killed'
    return { reason, ...(vmmReason ? { vmmReason } : {}) }
  }

  protected dropControl(): void {
    this.#unsubscribe()
    this.qmp.destroy()
  }

  protected async closeControl(): Promise<void> {
    this.#unsubscribe()
    await this.qmp.close()
  }

  protected removeRuntimeFiles(): Promise<void> {
    return removeQemuRuntimeFiles(this.persisted.spec)
  }

  #qmp<T>(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T> {
    return this.control(command, `qmp.${command}`, () => this.qmp.execute<T>(command, args, timeoutMs === undefined ? {} : { timeoutMs }))
  }

  protected async queryState(): Promise<VmState> {
    return mapQemuStatus((await this.#qmp<{ status: string }>('query-status')).status)
  }

  protected async sendPause(): Promise<void> {
    await this.#qmp('stop')
  }

  protected async sendResume(): Promise<void> {
    await this.#qmp('cont')
  }

  protected guestStop(): GuestStop {
    // Under TCG a press in the first seconds of a boot can be lost before the guest's ACPI
    // handler is ready (QEMU emits POWERDOWN, the guest never sees it): press again each second.
    return { what: 'power off', ask: () => this.#qmp<void>('system_powerdown'), repeatMs: 1_000 }
  }

  /** QEMU flushes and ends. */
  protected async sendQuit(timeoutMs: number): Promise<void> {
    await this.#qmp('quit', undefined, timeoutMs)
  }

  /** A migration stream into `dir`, written while the guest is stopped. */
  protected async writeSnapshot(dir: string, before: VmState): Promise<SnapshotInfo> {
    if (this.persisted.spec.hotplugMemory && (await this.#memoryDevices()).length > 0) {
      // A restore would have to re-create the DIMMs before loading the stream; not done yet.
      throw new NotSupportedError('standby of a VM with hotplugged memory is not supported yet', { field: 'hotplugMemory' })
    }
    await mkdir(dir, { recursive: true })
    const statePath = join(dir, SNAPSHOT_STATE_FILE)
    const metaPath = join(dir, SNAPSHOT_META_FILE)
    const memory = this.persisted.spec.memoryFile?.shared ? this.persisted.spec.memoryFile.path : undefined
    const ramInFile = memory ? SNAPSHOT_RAM_FILE : undefined
    const ramPath = join(dir, SNAPSHOT_RAM_FILE)
    // An old snapshot in the same dir must not survive as if it were this one.
    await rm(metaPath, { force: true })
    await rm(statePath, { force: true })
    if (memory && resolve(memory) !== resolve(ramPath)) await rm(ramPath, { force: true })
    const started = Date.now()
    await this.#qmp('stop')
    try {
      await this.#qmp('migrate-set-parameters', { 'max-bandwidth': MIGRATE_MAX_BANDWIDTH }).catch((err) =>
        this.logger.debug(`migrate-set-parameters failed: ${errorMessage(err)}`),
      )
      // The RAM of a VM on a shared file is that file: the stream leaves it out. A VM restored from
      // such a stream has the capability on, and its own RAM (unshared) must go in the stream.
      if (this.persisted.spec.memoryFile) {
        await this.#qmp('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: !!ramInFile }] })
      }
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
      // The RAM is the VM's shared file (on tmpfs, as a rule): copied into the snapshot while the
      // guest is stopped, sparse and in the kernel. Both files reach the disk before the snapshot
      // is called one, or a host crash could pair the stream with RAM the page cache never wrote.
      if (memory && resolve(memory) !== resolve(ramPath)) await copySparse(memory, ramPath)
      await Promise.all([syncFile(statePath), ...(memory ? [syncFile(ramPath)] : [])])
    } catch (err) {
      await rm(statePath, { force: true })
      if (memory && resolve(memory) !== resolve(ramPath)) await rm(ramPath, { force: true })
      await this.resumeAfterFailedSnapshot(before)
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
      ...(ramInFile ? { ramInFile } : {}),
    }
    await writeJsonAtomic(metaPath, meta)
    // What the snapshot takes on disk: the stream, and the RAM pages the guest had touched.
    const ramBytes = memory ? (await stat(ramPath)).blocks * 512 : 0
    return { dir, bytes: bytes + ramBytes, durationMs: Date.now() - started, createdAt }
  }

  /** Boot memory plus the DIMMs hotplugged so far. */
  async #memoryDevices(): Promise<{ id?: string; size: number }[]> {
    const devices = await this.#qmp<{ type: string; data: { id?: string; size: number } }[]>('query-memory-devices')
    return devices.filter((d) => d.type === 'dimm').map((d) => d.data)
  }

  async resizeMemory(totalBytes: number): Promise<{ memoryBytes: number }> {
    this.assertUsable('resizeMemory')
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

  /**
   * A SCSI disk through QMP (`blockdev-add` + `device_add` on the controller), which needs no PCI
   * hot-plug: q35's root bus has none, and the guest scans only bus 0 (`pci=lastbus=0`). The
   * objects are the ones the command line would make (argv.ts, `qemuDisk`), so a restore rebuilds them.
   */
  async hotplugDisk(disk: DiskSpec): Promise<void> {
    this.assertUsable('hotplugDisk')
    const spec = this.persisted.spec
    if (!spec.scsiController) throw new VmmError('invalid_state', 'this VM was started without a SCSI controller: disks cannot be hot-plugged', { step: 'hotplugDisk' })
    if (disk?.bus !== 'scsi') throw new ValidationError('disk.bus', 'a hot-plugged disk must have bus "scsi"')
    validateDisk(disk, 'disk', spec.disks ?? [])
    const q = qemuDisk(disk, 0)
    const undo: (() => Promise<unknown>)[] = []
    try {
      if (q.throttleGroup) {
        await this.#qmp('object-add', { 'qom-type': 'throttle-group', ...q.throttleGroup })
        undo.push(() => this.#qmp('object-del', { id: q.throttleGroup!.id }))
      }
      await this.#qmp('blockdev-add', q.blockdev)
      undo.push(() => this.#qmp('blockdev-del', { 'node-name': q.node }))
      await this.#qmp('device_add', q.device)
    } catch (err) {
      // Nothing half-added stays: a later add of the same serial would clash with its leftovers.
      for (const step of undo.reverse()) await step().catch((e) => this.logger.warn(`undoing a disk hot-plug: ${errorMessage(e)}`))
      throw err
    }
    this.persisted.spec = { ...spec, disks: [...(spec.disks ?? []), disk] }
  }

  /**
   * `device_del`, then the block nodes once QEMU says the device is gone (DEVICE_DELETED): before
   * that the drive is still in use and `blockdev-del` fails. virtio-scsi unplugs without waiting
   * for the guest, so this is quick. What is already gone is skipped, so an unplug cut short (a
   * crash of the caller) can be finished by calling it again.
   */
  async unplugDisk(serial: string, opts: WaitOptions = {}): Promise<void> {
    this.assertUsable('unplugDisk')
    const spec = this.persisted.spec
    const disk = (spec.disks ?? []).find((d) => d.serial === serial)
    if (!disk) throw new ValidationError('serial', `this VM has no disk with serial "${serial}"`)
    if (disk.bus !== 'scsi') throw new VmmError('invalid_state', `disk "${serial}" is a virtio-blk PCI device, which cannot be unplugged on this machine`, { step: 'unplugDisk' })
    const q = qemuDisk(disk, 0)
    const id = String(q.device.id)
    let off = (): void => {}
    const deleted = new Promise<void>((resolve) => {
      off = this.qmp.onEvent((e) => {
        if (e.name === 'DEVICE_DELETED' && e.data.device === id) resolve()
      })
    })
    try {
      const present = await this.#qmp<unknown>('device_del', { id }).then(
        () => true,
        (err: unknown) => {
          if (err instanceof QmpCommandError && err.qmpClass === 'DeviceNotFound') return false
          throw err
        },
      )
      if (present) await withDeadline(deleted, opts.timeoutMs ?? 10_000, `QEMU to remove disk ${serial}`, 'unplugDisk', opts.signal)
    } finally {
      off()
    }
    const nodes = await this.#qmp<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true })
    if (nodes.some((n) => n['node-name'] === q.node)) await this.#qmp('blockdev-del', { 'node-name': q.node })
    const objects = await this.#qmp<{ name: string }[]>('qom-list', { path: '/objects' })
    if (q.throttleGroup && objects.some((o) => o.name === q.throttleGroup!.id)) await this.#qmp('object-del', { id: q.throttleGroup.id })
    this.persisted.spec = { ...spec, disks: (spec.disks ?? []).filter((d) => d !== disk) }
  }

  async connectChannel(name: string, opts: WaitOptions = {}): Promise<Socket> {
    this.assertUsable('connectChannel')
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

  runningView(): QemuRunningVm {
    return new QemuRunningVm(this)
  }

  pausedView(): QemuPausedVm {
    return new QemuPausedVm(this)
  }

  /** Raw QMP, for what the generic interface does not cover. The caller owns the consequences. */
  async execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    this.assertUsable(command)
    return this.#qmp<T>(command, args)
  }
}

function versionString(qmp: QmpClient): string {
  const v = qmp.greeting?.version?.qemu
  return v ? `${v.major}.${v.minor}.${v.micro}` : 'unknown'
}

export class QemuRunningVm extends RunningView<QemuMachine, QemuPausedVm> {
  /** QEMU only: a raw QMP command (e.g. `query-block`, `qom-get`), over the handle's own connection. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    return this.m.execute<T>(command, args)
  }
}

export class QemuPausedVm extends PausedView<QemuMachine, QemuRunningVm> {
  /** QEMU only: a raw QMP command, as on the running handle. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    return this.m.execute<T>(command, args)
  }
}
