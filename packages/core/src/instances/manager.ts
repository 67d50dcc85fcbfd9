/**
 * The instances API: create (an ordered list of recorded, reversible steps), get/list with the
 * state derived from the VMM and the guest, start/stop/delete, standby/restore, exec/stat through
 * the guest agent, logs, and the reconcile pass that makes a reopen after a crash leave nothing
 * behind.
 */
import { mkdir, rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { createId } from '@paralleldrive/cuid2'
import {
  ConflictError,
  HypemanError,
  KeyedQueue,
  NotFoundError,
  NotSupportedError,
  TimeoutError,
  ValidationError,
  errorMessage,
  parseDuration,
  pathExists,
  silentLogger,
  type Logger,
} from '@hypeman-ts/common'
import { SNAPSHOT_META_FILE, type Accel, type LiveVm, type RunningVm, type VmmDriver, type VmSpec, type VmState } from '@hypeman-ts/vmm-drivers'
import type { EgressProxy } from '@hypeman-ts/egress-proxy'
import { egressProxyEnv, type HostNetwork, type NetworkAttachment } from '@hypeman-ts/netsetup'
import { formatRate } from '@hypeman-ts/common'
import type { GuestAssets } from '../assets/index.js'
import {
  type GuestConfig,
  checkExecSize,
  createOverlayDisk,
  followLog,
  GuestAgentClient,
  guestChannels,
  guestDisks,
  readStatusEvents,
  requestGuestStop,
  resolveProgram,
  statusMark,
  summarizeStatus,
  tailLines,
  waitForStatusEvent,
  writeGuestConfigDisk,
  type ExecOptions,
  type ExecProcess,
  type ExecResult,
  type GuestStatusSummary,
  type PathInfo,
} from '../guest/index.js'
import type { ImageManager } from '../images/manager.js'
import type { ImageRecord } from '../images/store.js'
import { matchesTags } from '../validate.js'
import { INSTANCE_STATES, type Instance, type InstanceState } from './model.js'
import { validateCreateParams, type CreateInstanceParams, type Hypervisor, type InstanceSpec, type SpecDefaults } from './params.js'
import { InstanceFiles, type CreateStep, type InstanceNetworkRecord, type InstanceRecord } from './record.js'
import { LiveVms } from './live.js'
import { deriveState, exitFromGuest } from './state.js'
import { assertCanRun, type Operation } from './transitions.js'

export interface InstanceManagerOptions {
  files: InstanceFiles
  images: ImageManager
  drivers: Partial<Record<Hypervisor, VmmDriver>>
  /** The guest kernel, initrd and command line (memoised by the caller). */
  assets: () => Promise<GuestAssets>
  defaults: SpecDefaults
  accel: Accel
  /** How long a boot may take to reach the program (TCG is slow). Default 120 s. */
  bootTimeoutMs?: number
  /** The host network (opened on first use); absent when the manager has none. */
  network?: NetworkProvider
  /** The embedded egress proxy (started on first use); needs `network`. */
  egress?: EgressProvider
  logger?: Logger
}

export interface NetworkProvider {
  get(): Promise<HostNetwork>
  /** Whether the network was ever set up (so reconcile need not create it just to look). */
  exists(): Promise<boolean>
}

export interface EgressProvider {
  get(): Promise<EgressProxy>
  /** Where the guest's redirected TCP 80/443 and its HTTP_PROXY land. */
  ports: { transparent: number; explicit: number }
}

export interface CreateOptions {
  signal?: AbortSignal
  /** Return only once the program started (Running) or ended. Default true. */
  waitForRunning?: boolean
}

export interface StopOptions {
  /** Grace the program gets between SIGTERM and SIGKILL. Default 10 s. */
  timeoutMs?: number
}

export type LogSource = 'app' | 'vmm' | 'hypeman' | 'console'

export interface LogOptions {
  source?: LogSource
  /** Lines from the end to start with. Default 100. */
  tail?: number
  /** Keep streaming new lines until `signal` aborts. */
  follow?: boolean
  signal?: AbortSignal
}

export interface WaitResult {
  state: InstanceState
  stateError: string | null
  timedOut: boolean
}

export interface ExecParams extends Omit<ExecOptions, 'stdin'> {
  /** Bytes for the program's stdin (closed afterwards); omit for /dev/null. */
  stdin?: string | Buffer
  /** How long to wait for the guest agent to answer (a booting guest). Default 30 s. */
  connectTimeoutMs?: number
}

const nowIso = (): string => new Date().toISOString()

/** The image's Entrypoint/Cmd/Env/WorkingDir/User in the shape the program resolver reads. */
function runtimeConfig(img: ImageRecord): Parameters<typeof resolveProgram>[0] {
  const c = img.config
  return {
    Entrypoint: c.entrypoint,
    Cmd: c.cmd,
    Env: Object.entries(c.env).map(([k, v]) => `${k}=${v}`),
    ...(c.workingDir ? { WorkingDir: c.workingDir } : {}),
    ...(c.user ? { User: c.user } : {}),
  }
}

export class InstanceManager {
  private readonly live = new LiveVms()
  /** Lifecycle operations run one at a time per instance. */
  private readonly ops = new KeyedQueue()
  /** Creates in flight in this process: a delete cancels one and waits for its undo, so it never frees an address the create still uses. */
  private readonly creating = new Map<string, { cancel: AbortController; done: Promise<void> }>()
  private readonly logger: Logger
  private readonly bootTimeoutMs: number

  constructor(private readonly opts: InstanceManagerOptions) {
    this.logger = opts.logger ?? silentLogger
    this.bootTimeoutMs = opts.bootTimeoutMs ?? 120_000
  }

  private get files(): InstanceFiles {
    return this.opts.files
  }

  private driver(name: Hypervisor | string): VmmDriver {
    const d = this.opts.drivers[name as Hypervisor]
    if (!d) throw new NotSupportedError(`no ${name} driver on this host`, { field: 'hypervisor' })
    return d
  }

  /** Image digests instances depend on (their disks boot from them). */
  async digestsInUse(): Promise<Set<string>> {
    const out = new Set<string>()
    for (const id of await this.files.ids()) {
      const r = await this.files.read(id)
      if (r?.imageDigest) out.add(r.imageDigest)
    }
    return out
  }

  // ---------------------------------------------------------------------------------- lookup

  private async records(): Promise<InstanceRecord[]> {
    const out: InstanceRecord[] = []
    for (const id of await this.files.ids()) {
      const r = await this.files.read(id)
      if (r) out.push(r)
    }
    return out
  }

  private async find(idOrName: string): Promise<InstanceRecord> {
    if (typeof idOrName !== 'string' || idOrName === '') throw new ValidationError('id', 'an instance id or name is required')
    const direct = /^[a-z0-9]+$/.test(idOrName) ? await this.files.read(idOrName).catch(() => undefined) : undefined
    if (direct && direct.phase !== 'deleting') return direct
    const byName = (await this.records()).find((r) => r.name === idOrName && r.phase !== 'deleting')
    if (!byName) throw new NotFoundError(`instance ${idOrName} not found`, { field: 'id' })
    return byName
  }

  // ---------------------------------------------------------------------------------- create

  async create(params: CreateInstanceParams, opts: CreateOptions = {}): Promise<Instance> {
    const spec = validateCreateParams(params, this.opts.defaults)
    this.driver(spec.hypervisor)
    const id = createId()
    const paths = this.files.paths(id)
    const record: InstanceRecord = {
      version: 1,
      id,
      name: spec.name,
      spec,
      imageDigest: null,
      createdAt: nowIso(),
      startedAt: null,
      stoppedAt: null,
      phase: 'creating',
      steps: [],
      vmm: null,
      statusMark: 0,
      exit: null,
      snapshot: false,
      network: null,
    }
    const cancel = new AbortController()
    const signal = opts.signal ? AbortSignal.any([opts.signal, cancel.signal]) : cancel.signal
    let settled!: () => void
    const done = new Promise<void>((resolve) => (settled = resolve))
    await this.files
      .withNamesLock(async () => {
        if ((await this.records()).some((r) => r.name === spec.name && r.phase !== 'deleting')) {
          throw new ConflictError(`an instance named "${spec.name}" already exists`, { field: 'name' })
        }
        await mkdir(paths.dir, { recursive: true, mode: 0o700 })
        record.steps.push('instance_dir')
        await this.files.write(record)
        // Before the lock is let go, so no delete can see the record and miss the create.
        this.creating.set(id, { cancel, done })
      })
      .catch((err: unknown) => {
        this.creating.delete(id)
        settled()
        throw err
      })

    let step: CreateStep = 'image'
    // The in-directory steps are only remembered; the record is written (durably) when the VMM
    // is spawned, which is the first step whose undo is more than removing the directory.
    const stepped = <T>(s: CreateStep, work: () => Promise<T>): Promise<T> =>
      Promise.resolve()
        .then(() => {
          signal.throwIfAborted()
          return work()
        })
        .then(
          (v) => {
            record.steps.push(s)
            return v
          },
          (err) => {
            step = s
            throw err
          },
        )
    try {
      // The overlay disk needs nothing from the image: make it while the image is resolved.
      const [{ record: img, diskPath }] = await Promise.all([
        stepped('image', async () => {
          // As `docker run` does: an image already in the cache is used as it is, no registry round trip.
          const cached = await this.opts.images.get(spec.image).catch(() => undefined)
          const usable = cached?.status === 'ready' && (!spec.platform || cached.platform === spec.platform)
          const image = usable
            ? cached
            : await this.opts.images.pull({ name: spec.image, ...(spec.platform ? { platform: spec.platform } : {}) }, { signal })
          return this.opts.images.resolveReady(image.name)
        }),
        stepped('overlay_disk', () => createOverlayDisk(paths.overlay, spec.overlayBytes, { signal })),
      ])
      record.imageDigest = img.digest

      step = 'network'
      let attachment: NetworkAttachment | undefined
      if (spec.network.enabled) {
        // Recorded before it runs: a crash mid-attach must still be detached by reconcile.
        record.steps.push('network')
        await this.files.write(record)
        signal.throwIfAborted()
        attachment = await this.attachNetwork(record, signal)
      }

      step = 'egress'
      const guestEnv = this.guestEnv(record)
      let egress: GuestConfig['egress']
      if (attachment && spec.network.egress.enabled) {
        const registered = await stepped('egress', () => this.registerEgress(record))
        Object.assign(guestEnv, registered.placeholders)
        egress = { caBundlePem: (await this.opts.egress!.get()).caPem, proxyEnv: egressProxyEnv(attachment) }
      }

      step = 'config_disk'
      await stepped('config_disk', () =>
        writeGuestConfigDisk(paths.config, {
          ...resolveProgram(runtimeConfig(img), { entrypoint: spec.entrypoint, cmd: spec.cmd, env: guestEnv }, spec.name),
          hostname: spec.name,
          rootfsType: img.disk.format,
          skipGuestAgent: spec.skipGuestAgent,
          ...(attachment ? { network: guestNetwork(attachment) } : {}),
          ...(egress ? { egress } : {}),
        }),
      )

      step = 'vmm'
      await this.files.log(id, `create: image ${spec.image} (${img.digest}), ${spec.vcpus} vCPU, ${spec.size} memory`)
      await stepped('vmm', () => this.boot(record, diskPath, signal))

      step = 'guest_ready'
      if (opts.waitForRunning !== false) await this.waitForGuest(record, signal)
      signal.throwIfAborted()
      record.phase = 'ready'
      record.steps.push('guest_ready')
      await this.files.write(record)
    } catch (caught) {
      await this.undoCreate(record)
      // Cancelled by a delete: that is what happened, whichever way the step noticed.
      const err: unknown = cancel.signal.aborted ? cancel.signal.reason : caught
      if (err instanceof ValidationError) throw err
      const code = err instanceof HypemanError ? err.code : 'create_failed'
      throw new HypemanError(code, `create ${spec.name}: step ${step} failed: ${errorMessage(err)}`, {
        step,
        cause: err,
        ...(err instanceof HypemanError && err.field ? { field: err.field } : {}),
      })
    } finally {
      this.creating.delete(id)
      settled()
    }
    return this.get(id)
  }

  /** Undoes whatever a create finished, newest first; also what reconcile runs for a crashed create. */
  private async undoCreate(record: InstanceRecord): Promise<void> {
    const paths = this.files.paths(record.id)
    this.live.forget(record.id)
    if (record.vmm) await this.driver(record.vmm.driver).destroy(record.vmm).catch(() => {})
    await this.destroyRuntime(record.id)
    await this.releaseNetwork(record)
    await rm(paths.dir, { recursive: true, force: true })
  }

  // ---------------------------------------------------------------------------------- network

  /** Attaches the instance to the host network (idempotent: a second attach repairs). */
  private async attachNetwork(record: InstanceRecord, signal?: AbortSignal): Promise<NetworkAttachment> {
    const net = await this.opts.network!.get()
    const n = record.spec.network
    const egress = this.opts.egress
    const att = await net.attach(record.id, {
      vcpus: record.spec.vcpus,
      ...(n.downloadBitsPerSec !== null ? { bandwidthDownloadBitsPerSec: n.downloadBitsPerSec } : {}),
      ...(n.uploadBitsPerSec !== null ? { bandwidthUploadBitsPerSec: n.uploadBitsPerSec } : {}),
      egress:
        n.egress.enabled && egress
          ? { enabled: true, mode: n.egress.mode, proxy: { httpPort: egress.ports.transparent, httpsPort: egress.ports.transparent, explicitPort: egress.ports.explicit } }
          : { enabled: false },
      ...(signal ? { signal } : {}),
    })
    record.network = {
      tap: att.tap,
      mac: att.mac,
      ip: att.ip,
      prefixLength: att.prefixLength,
      gateway: att.gateway,
      dns: att.dns,
      netns: att.netns,
      downloadBitsPerSec: att.bandwidthDownloadBitsPerSec,
      uploadBitsPerSec: att.bandwidthUploadBitsPerSec,
    }
    await this.files.write(record)
    await this.files.log(record.id, `network: ${att.ip}/${att.prefixLength} via ${att.gateway} on ${att.tap}`)
    return att
  }

  /**
   * Network and egress policy again for a start or restore: the address is the instance's own
   * (so are the placeholders derived from it), but the proxy keeps policies in memory only, and
   * this process may not be the one that created the instance.
   */
  private async reattachNetwork(record: InstanceRecord, signal?: AbortSignal): Promise<void> {
    if (!record.network) return
    await this.attachNetwork(record, signal)
    if (record.spec.network.egress.enabled) await this.registerEgress(record)
  }

  /** The instance's policy in the proxy, keyed by its address: the real values never reach the guest. */
  private async registerEgress(record: InstanceRecord): Promise<{ placeholders: Record<string, string> }> {
    if (!this.opts.egress) throw new NotSupportedError('this manager has no egress proxy', { field: 'network.egress.enabled' })
    const proxy = await this.opts.egress.get()
    const sources = new Set(Object.values(record.spec.credentials).map((c) => c.source.env))
    const env = Object.fromEntries(Object.entries(record.spec.env).filter(([k]) => sources.has(k)))
    return proxy.policies.set(record.network!.ip, { env, credentials: record.spec.credentials })
  }

  /** The guest's environment: the requested env without the host-only real values of credentials. */
  private guestEnv(record: InstanceRecord): Record<string, string> {
    const hostOnly = new Set(Object.values(record.spec.credentials).map((c) => c.source.env))
    return Object.fromEntries(Object.entries(record.spec.env).filter(([k]) => !hostOnly.has(k)))
  }

  private async releaseNetwork(record: InstanceRecord): Promise<void> {
    if (!this.opts.network) return
    if (record.network && record.spec.network.egress.enabled && this.opts.egress) {
      const proxy = await this.opts.egress.get().catch(() => undefined)
      proxy?.policies.delete(record.network.ip)
    }
    if (record.steps.includes('network') || record.network) {
      const net = await this.opts.network.get()
      await net.detach(record.id)
    }
  }

  private async destroyRuntime(id: string): Promise<void> {
    const runtimeDir = this.files.paths(id).runtimeDir
    for (const d of Object.values(this.opts.drivers)) await d?.destroy({ runtimeDir }).catch(() => {})
    await rm(runtimeDir, { recursive: true, force: true })
  }

  /** Starts the VMM for the record's current disks (a cold boot, or a restore from its snapshot). */
  private async boot(record: InstanceRecord, rootfs: string, signal?: AbortSignal, restore = false): Promise<RunningVm> {
    const spec = record.spec
    const paths = this.files.paths(record.id)
    const assets = await this.opts.assets()
    const driver = this.driver(spec.hypervisor)
    if (!restore) {
      record.statusMark = await statusMark(paths.statusLog)
      record.exit = null
      record.startedAt = nowIso()
      record.stoppedAt = null
    }
    const throttle = spec.diskIoBytesPerSec ? { throttle: { bytesPerSec: spec.diskIoBytesPerSec } } : {}
    const vmSpec: VmSpec = {
      name: spec.name,
      kernel: assets.kernelPath,
      initrd: assets.initrdPath,
      cmdline: [assets.cmdline, spec.hotplugBytes ? 'memhp_default_state=online' : ''].filter(Boolean).join(' '),
      vcpus: spec.vcpus,
      memoryBytes: spec.memoryBytes,
      ...(spec.hotplugBytes ? { hotplugMemory: { maxBytes: spec.memoryBytes + spec.hotplugBytes } } : {}),
      disks: guestDisks({ rootfs, overlay: paths.overlay, config: paths.config }).map((d) => (d.readonly && d.serial !== 'hm-rootfs' ? d : { ...d, ...throttle })),
      channels: guestChannels(
        { agentSocket: paths.agentSocket, controlSocket: paths.controlSocket, appLog: paths.appLog, statusLog: paths.statusLog },
        { skipGuestAgent: spec.skipGuestAgent },
      ),
      ...(record.network ? { nics: [{ tap: record.network.tap, mac: record.network.mac }] } : {}),
      ...(record.network?.netns ? { netns: record.network.netns } : {}),
      consoleLog: paths.consoleLog,
      vmmLog: paths.vmmLog,
      runtimeDir: paths.runtimeDir,
      accel: this.opts.accel,
      ...(restore ? { restoreFrom: paths.snapshot } : {}),
    }
    const vm = await driver.start(vmSpec, {
      ...(signal ? { signal } : {}),
      onSpawn: async (persisted) => {
        record.vmm = persisted
        await this.files.write(record)
      },
    })
    record.vmm = vm.persisted
    await this.files.write(record)
    this.watch(record.id, vm)
    await this.files.log(record.id, `${restore ? 'restored' : 'booted'}: VMM pid ${vm.pid} (${vm.accel})`)
    return vm
  }

  /** Waits until the program started, or the boot ended (program exit or boot error). */
  private async waitForGuest(record: InstanceRecord, signal?: AbortSignal): Promise<void> {
    const paths = this.files.paths(record.id)
    const vm = this.live.get(record.id)
    const ended = new AbortController()
    const onAbort = (): void => ended.abort(signal?.reason)
    signal?.addEventListener('abort', onAbort, { once: true })
    void vm?.exited.then(() => setTimeout(() => ended.abort(new Error('vmm exited')), 500))
    try {
      await waitForStatusEvent(paths.statusLog, ['started', 'exited', 'error'], {
        since: record.statusMark,
        timeoutMs: this.bootTimeoutMs,
        signal: ended.signal,
      })
    } catch (err) {
      if (signal?.aborted) throw err
      // The VMM ended before the guest said anything: the boot itself failed (see the console log).
      if (ended.signal.aborted) {
        const tail = (await tailLines(paths.consoleLog, 20)).join('\n')
        throw new HypemanError('boot_failed', `the VM ended before the guest program started${tail ? `; console:\n${tail}` : ''}`, { step: 'guest_ready' })
      }
      throw new TimeoutError(`the guest did not start its program within ${this.bootTimeoutMs} ms`, { step: 'guest_ready', cause: err })
    } finally {
      signal?.removeEventListener('abort', onAbort)
    }
  }

  private watch(id: string, vm: LiveVm): void {
    this.live.watch(id, vm, (exit) =>
      this.onVmExit(id, vm.pid, exit.reason).catch((err) => this.logger.warn('recording a VM exit failed', { id, error: errorMessage(err) })),
    )
  }

  /** Records a boot's end: the guest's exit report if it made one, else why the VMM ended. */
  private async onVmExit(id: string, pid: number, reason: string): Promise<void> {
    if (!(await pathExists(this.files.paths(id).dir))) return // deleted: nothing to record
    try {
      await this.files.withLock(id, async () => {
        const record = await this.files.read(id)
        if (!record || record.vmm?.pid !== pid) return // deleted, or a newer boot
        await this.finishBoot(record, reason)
      })
    } catch (err) {
      // The instance directory went away under us: a delete won the race.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
  }

  /**
   * Marks the current boot as ended in the record (call under the instance lock). A complete
   * snapshot in the staging dir becomes the instance's snapshot here, in the same record write
   * that says the VMM is gone, so no reader (nor a crash) sees one without the other.
   */
  private async finishBoot(record: InstanceRecord, reason: string): Promise<void> {
    const guest = await this.guestStatus(record)
    record.vmm = null
    if (await this.promoteStagedSnapshot(record.id)) record.snapshot = true
    if (!record.snapshot) {
      record.stoppedAt = nowIso()
      record.exit = exitFromGuest(guest) ?? { code: null, message: `the VM ended (${reason}) before the program reported an exit` }
    }
    await this.files.write(record)
    await this.files.log(record.id, record.snapshot ? `standby: VMM ended after the snapshot (${reason})` : `stopped: ${record.exit?.message ?? reason} (exit code ${record.exit?.code ?? 'none'})`)
  }

  /**
   * Moves a standby's staging dir into place when its snapshot is complete (the driver writes
   * snapshot.json last, after the guest's state), and removes an incomplete one.
   */
  private async promoteStagedSnapshot(id: string): Promise<boolean> {
    const paths = this.files.paths(id)
    if (!(await pathExists(paths.snapshotStaging))) return false
    if (!(await pathExists(join(paths.snapshotStaging, SNAPSHOT_META_FILE)))) {
      await rm(paths.snapshotStaging, { recursive: true, force: true })
      return false
    }
    await rm(paths.snapshot, { recursive: true, force: true })
    await rename(paths.snapshotStaging, paths.snapshot)
    return true
  }

  private async guestStatus(record: InstanceRecord): Promise<GuestStatusSummary> {
    return summarizeStatus(await readStatusEvents(this.files.paths(record.id).statusLog, record.statusMark).catch(() => []))
  }

  // ---------------------------------------------------------------------------------- read

  private async vmmState(record: InstanceRecord): Promise<VmState | Error> {
    if (!record.vmm) return 'exited'
    const vm = this.live.get(record.id)
    if (vm) {
      try {
        return await vm.state()
      } catch (err) {
        return vm.exited && (await Promise.race([vm.exited.then(() => true), new Promise((r) => setTimeout(() => r(false), 50))])) ? 'exited' : (err as Error)
      }
    }
    const driver = this.driver(record.vmm.driver)
    if (!driver.isAlive(record.vmm)) return 'exited'
    return new Error('the VMM runs but this manager is not attached to it')
  }

  private async toInstance(record: InstanceRecord): Promise<Instance> {
    let vmm = await this.vmmState(record)
    if (vmm === 'exited' && record.vmm) {
      // The VM just ended: let its exit handler record how before describing the instance.
      await this.live.recorded(record.id)
      record = (await this.files.read(record.id)) ?? record
      vmm = await this.vmmState(record)
    }
    const guest = await this.guestStatus(record)
    const { state, stateError } = deriveState({ phase: record.phase, hasVmm: record.vmm !== null, vmm, guest, snapshot: record.snapshot })
    const s = record.spec
    const ended = state === 'Stopped' || state === 'Standby'
    const exit = ended ? (record.exit ?? exitFromGuest(guest)) : null
    return {
      id: record.id,
      createdAt: record.createdAt,
      image: s.image,
      name: record.name,
      state,
      ...(s.diskIoBps ? { diskIoBps: s.diskIoBps } : {}),
      env: this.guestEnvShown(record),
      exitCode: exit?.code ?? null,
      exitMessage: exit?.message ?? null,
      hasSnapshot: record.snapshot,
      ...(s.hotplugSize ? { hotplugSize: s.hotplugSize } : {}),
      hypervisor: s.hypervisor,
      network: record.network
        ? {
            enabled: true,
            name: 'default',
            ip: record.network.ip,
            mac: record.network.mac,
            bandwidthDownload: s.network.bandwidthDownload ?? formatRate(record.network.downloadBitsPerSec),
            bandwidthUpload: s.network.bandwidthUpload ?? formatRate(record.network.uploadBitsPerSec),
          }
        : { enabled: false, ip: null, mac: null },
      overlaySize: s.overlaySize,
      size: s.size,
      startedAt: record.startedAt,
      stateError: stateError ?? null,
      stoppedAt: record.stoppedAt,
      tags: s.tags,
      vcpus: s.vcpus,
      volumes: [],
    }
  }

  /** What the guest sees, placeholders included; never a real credential value. */
  private guestEnvShown(record: InstanceRecord): Record<string, string> {
    const env = this.guestEnv(record)
    for (const name of Object.keys(record.spec.credentials)) env[name] = '<placeholder>'
    return env
  }

  async get(idOrName: string): Promise<Instance> {
    return this.toInstance(await this.find(idOrName))
  }

  async list(filter: { tags?: Record<string, string> } = {}): Promise<Instance[]> {
    const out: Instance[] = []
    for (const r of await this.records()) {
      if (r.phase === 'deleting' || !matchesTags(r.spec.tags, filter.tags)) continue
      out.push(await this.toInstance(r))
    }
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt))
  }

  /** Blocks until the instance reaches `state`, a terminal state, or the timeout (max 5 min). */
  async waitForState(idOrName: string, state: InstanceState, opts: { timeout?: string | number; signal?: AbortSignal } = {}): Promise<WaitResult> {
    if (!INSTANCE_STATES.includes(state)) throw new ValidationError('state', `must be one of ${INSTANCE_STATES.join(', ')}`)
    const timeoutMs = Math.min(parseDuration(opts.timeout ?? '60s', 'timeout'), 5 * 60_000)
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const inst = await this.get(idOrName)
      const terminal = (inst.state === 'Stopped' || inst.state === 'Unknown') && state !== inst.state
      if (inst.state === state || terminal) return { state: inst.state, stateError: inst.stateError ?? null, timedOut: false }
      if (Date.now() >= deadline || opts.signal?.aborted) return { state: inst.state, stateError: inst.stateError ?? null, timedOut: true }
      await new Promise((r) => setTimeout(r, 100))
    }
  }

  // ---------------------------------------------------------------------------------- lifecycle
  //
  // Each operation runs alone per instance (`ops`), and checks the instance's state against
  // transitions.ts before it touches anything, so a retry or a call in the wrong state is a
  // `conflict` that leaves the instance as it was.

  /**
   * The instance's record, once `op` is known to be allowed in its current state. Call inside
   * `ops.run`: the state cannot change under the caller except by the VM ending on its own.
   */
  private async current(id: string, op: Operation): Promise<InstanceRecord> {
    const record = await this.find(id)
    // Until create returns, the instance is the create's: it is Created whatever its VMM does.
    assertCanRun(op, record.phase === 'creating' ? { name: record.name, state: 'Created' } : await this.toInstance(record))
    return (await this.files.read(id)) ?? record
  }

  /** Boots a stopped instance again (its overlay keeps what it wrote); a standby one is restored. */
  async start(idOrName: string, opts: { signal?: AbortSignal } = {}): Promise<Instance> {
    const { id } = await this.find(idOrName)
    const booted = await this.ops.run(id, async () => {
      const record = await this.current(id, 'start')
      if (record.snapshot) {
        await this.restoreNow(id, opts.signal)
        return false
      }
      await this.files.withLock(id, async () => {
        const r = (await this.files.read(id))!
        // The last VMM is gone but its end was never recorded (this manager was not attached).
        if (r.vmm) await this.finishBoot(r, 'killed')
        const { diskPath } = await this.rootfsOf(r)
        await this.reattachNetwork(r, opts.signal)
        await this.boot(r, diskPath, opts.signal)
      })
      return true
    })
    if (booted) await this.waitForGuest((await this.files.read(id))!, opts.signal)
    return this.get(id)
  }

  private async rootfsOf(record: InstanceRecord): Promise<{ diskPath: string }> {
    const img = record.imageDigest ? await this.opts.images.store.getRecord(record.imageDigest) : undefined
    if (!img) throw new NotFoundError(`the image disk of instance ${record.name} (${record.imageDigest}) is no longer in the cache`, { field: 'image' })
    return { diskPath: this.opts.images.store.diskPath(img) }
  }

  /**
   * Graceful stop: init sends SIGTERM to the program, SIGKILL after the grace, then powers off;
   * if the guest does not answer, ACPI power-off, then the VMM is killed.
   */
  async stop(idOrName: string, opts: StopOptions = {}): Promise<Instance> {
    const { id } = await this.find(idOrName)
    const graceMs = opts.timeoutMs ?? 10_000
    await this.ops.run(id, async () => {
      await this.current(id, 'stop')
      let vm = this.live.get(id)
      if (!vm) return // it ended on its own since the state was read
      if (vm.phase === 'paused') {
        // A paused guest cannot act on SIGTERM: let it run to stop properly, as docker does.
        vm = await vm.resume()
        this.live.update(id, vm)
      }
      await this.files.log(id, `stop requested (grace ${graceMs} ms)`)
      try {
        await requestGuestStop(this.files.paths(id).controlSocket, graceMs, { timeoutMs: 5_000 })
        await vm.waitForExit({ timeoutMs: graceMs + 15_000 })
      } catch (err) {
        this.logger.warn('graceful stop did not finish; powering off', { id, error: errorMessage(err) })
        await vm.shutdown({ timeoutMs: 5_000 }).catch(() => vm!.kill())
      }
      await vm.exited
      await this.live.recorded(id)
    })
    return this.get(id)
  }

  /** Freezes the VM's vCPUs (the guest's clock and processes stop until resume). */
  async pause(idOrName: string): Promise<Instance> {
    const { id } = await this.find(idOrName)
    await this.ops.run(id, async () => {
      await this.current(id, 'pause')
      const vm = this.live.get(id)
      if (vm?.phase !== 'running') throw new ConflictError(`instance ${idOrName} is not running`, { field: 'state' })
      this.live.update(id, await vm.pause())
      await this.files.log(id, 'paused')
    })
    return this.get(id)
  }

  async resume(idOrName: string): Promise<Instance> {
    const { id } = await this.find(idOrName)
    await this.ops.run(id, async () => {
      await this.current(id, 'resume')
      const vm = this.live.get(id)
      if (vm?.phase !== 'paused') throw new ConflictError(`instance ${idOrName} is not paused`, { field: 'state' })
      this.live.update(id, await vm.resume())
      await this.files.log(id, 'resumed')
    })
    return this.get(id)
  }

  /** Ends the VM at once (SIGKILL to the VMM), also one whose guest can no longer run. */
  async kill(idOrName: string): Promise<Instance> {
    const { id } = await this.find(idOrName)
    await this.ops.run(id, async () => {
      const record = await this.current(id, 'kill')
      const vm = this.live.get(id)
      if (vm) {
        await vm.kill()
        await vm.exited
        await this.live.recorded(id)
      } else if (record.vmm) {
        // A VMM this manager is not attached to (state Unknown).
        await this.driver(record.vmm.driver).destroy(record.vmm)
        await this.files.withLock(id, async () => {
          const r = (await this.files.read(id))!
          if (r.vmm) await this.finishBoot(r, 'killed')
        })
      }
    })
    return this.get(id)
  }

  /** Removes the instance and everything it made: VMM, sockets, disks, logs. */
  async delete(idOrName: string): Promise<void> {
    const found = await this.find(idOrName)
    const inFlight = this.creating.get(found.id)
    if (inFlight) {
      // The create undoes its own steps (policy, address, VMM, files) before the address can go to anyone else.
      inFlight.cancel.abort(new ConflictError(`instance ${found.name} was deleted while it was being created`, { field: 'id' }))
      await inFlight.done
      // Undone and removed by the create itself, unless it finished first.
      if (!(await this.files.read(found.id))) return
    }
    await this.ops.run(found.id, () =>
      this.files.withNamesLock(() =>
        this.files.withLock(found.id, async () => {
          const record = await this.files.read(found.id)
          if (!record) return
          record.phase = 'deleting'
          await this.files.write(record)
          const vm = this.live.forget(record.id)
          if (vm) await vm.kill().catch(() => {})
          if (record.vmm) await this.driver(record.vmm.driver).destroy(record.vmm).catch(() => {})
          await this.destroyRuntime(record.id)
          await this.releaseNetwork(record)
          await rm(this.files.paths(record.id).dir, { recursive: true, force: true })
        }),
      ),
    )
  }

  /**
   * Snapshots the VM to disk and ends the VMM; `restore` (or `start`) resumes it where it was.
   * The snapshot is written to a staging directory and only becomes the instance's snapshot once
   * it is complete (see `finishBoot`), so a failed standby never costs an existing one.
   */
  async standby(idOrName: string): Promise<Instance> {
    const { id } = await this.find(idOrName)
    await this.ops.run(id, async () => {
      const record = await this.current(id, 'standby')
      if (!this.driver(record.spec.hypervisor).capabilities.snapshot) {
        throw new NotSupportedError(`${record.spec.hypervisor} cannot snapshot`, { field: 'hypervisor' })
      }
      const vm = this.live.get(id)
      if (!vm) throw new ConflictError(`instance ${record.name} ended before its standby`, { field: 'state' })
      const staging = this.files.paths(id).snapshotStaging
      await rm(staging, { recursive: true, force: true })
      const snap = await vm.standby(staging).catch(async (err: unknown) => {
        await rm(staging, { recursive: true, force: true })
        throw err
      })
      await this.live.recorded(id)
      const r = (await this.files.read(id))!
      if (!r.snapshot) throw new HypemanError('snapshot_failed', `standby of ${r.name}: the VMM ended but no snapshot was kept`, { step: 'standby' })
      await this.files.log(id, `standby: ${snap.bytes} bytes in ${Math.round(snap.durationMs)} ms`)
    })
    return this.get(id)
  }

  async restore(idOrName: string, opts: { signal?: AbortSignal } = {}): Promise<Instance> {
    const { id } = await this.find(idOrName)
    await this.ops.run(id, async () => {
      await this.current(id, 'restore')
      await this.restoreNow(id, opts.signal)
    })
    return this.get(id)
  }

  /** Boots the VMM from the instance's snapshot (the caller checked it is Standby). */
  private async restoreNow(id: string, signal?: AbortSignal): Promise<void> {
    await this.files.withLock(id, async () => {
      const record = (await this.files.read(id))!
      const { diskPath } = await this.rootfsOf(record)
      await this.reattachNetwork(record, signal)
      await this.boot(record, diskPath, signal, true)
      await this.consumeSnapshot(id)
    })
  }

  /** A snapshot is good for one restore: the disks move on from here (call under the instance lock). */
  private async consumeSnapshot(id: string): Promise<void> {
    const record = (await this.files.read(id))!
    record.snapshot = false
    await this.files.write(record)
    await rm(this.files.paths(id).snapshot, { recursive: true, force: true })
  }

  // ---------------------------------------------------------------------------------- guest access

  private async agent(idOrName: string, op: 'exec' | 'stat', connectTimeoutMs?: number): Promise<GuestAgentClient> {
    const { id } = await this.find(idOrName)
    const record = await this.current(id, op)
    return GuestAgentClient.connect({
      socketPath: this.files.paths(record.id).agentSocket,
      skipGuestAgent: record.spec.skipGuestAgent,
      timeoutMs: connectTimeoutMs ?? 30_000,
      logger: this.logger,
    })
  }

  /** Runs a program in the guest and collects its output and exit code. */
  async exec(idOrName: string, params: ExecParams): Promise<ExecResult> {
    const { stdin, connectTimeoutMs, ...req } = params
    checkExecSize([{ field: 'argv', values: Array.isArray(req.argv) ? req.argv : [] }], req.env ?? {})
    const client = await this.agent(idOrName, 'exec', connectTimeoutMs)
    try {
      const proc = client.exec({ ...req, stdin: stdin !== undefined })
      if (proc.stdin) proc.stdin.end(stdin)
      const out: Buffer[] = []
      const err: Buffer[] = []
      proc.stdout.on('data', (d: Buffer) => out.push(d))
      proc.stderr.on('data', (d: Buffer) => err.push(d))
      const exit = await proc.exit
      return { ...exit, stdout: Buffer.concat(out), stderr: Buffer.concat(err) }
    } finally {
      client.close()
    }
  }

  /** Runs a program in the guest with live streams; the connection closes when it exits. */
  async execStream(idOrName: string, params: ExecOptions & { connectTimeoutMs?: number }): Promise<ExecProcess> {
    const { connectTimeoutMs, ...req } = params
    checkExecSize([{ field: 'argv', values: Array.isArray(req.argv) ? req.argv : [] }], req.env ?? {})
    const client = await this.agent(idOrName, 'exec', connectTimeoutMs)
    const proc = client.exec(req)
    void proc.exit.finally(() => client.close()).catch(() => {})
    return proc
  }

  async stat(idOrName: string, path: string, opts: { followLinks?: boolean } = {}): Promise<PathInfo> {
    if (typeof path !== 'string' || !path.startsWith('/')) throw new ValidationError('path', 'must be an absolute path')
    const client = await this.agent(idOrName, 'stat')
    try {
      return await client.stat(path, opts)
    } finally {
      client.close()
    }
  }

  /** Log lines: the program's output (app), the VMM's (vmm), our operations (hypeman), kernel console. */
  async *logs(idOrName: string, opts: LogOptions = {}): AsyncGenerator<string> {
    const record = await this.find(idOrName)
    const paths = this.files.paths(record.id)
    const source = opts.source ?? 'app'
    const file = { app: paths.appLog, vmm: paths.vmmLog, hypeman: paths.hypemanLog, console: paths.consoleLog }[source]
    if (!file) throw new ValidationError('source', 'must be app, vmm, hypeman or console')
    const tail = opts.tail ?? 100
    if (opts.follow) {
      if (!opts.signal) throw new ValidationError('signal', 'follow needs an AbortSignal to end it')
      yield* followLog(file, { signal: opts.signal, tail })
      return
    }
    yield* await tailLines(file, tail)
  }

  // ---------------------------------------------------------------------------------- recovery

  /**
   * After a crash of the host process: finishes or undoes what was in flight, reattaches to VMMs
   * that still run, records the end of those that do not, and removes anything that belongs to
   * no instance (directories, runtime dirs, VMM processes).
   */
  async reconcile(): Promise<{ reattached: number; stopped: number; removed: number }> {
    const stats = { reattached: 0, stopped: 0, removed: 0 }
    const known = new Set<string>()
    for (const id of await this.files.ids()) {
      const record = await this.files.read(id).catch(() => undefined)
      if (!record) {
        await this.destroyRuntime(id)
        await rm(this.files.paths(id).dir, { recursive: true, force: true })
        stats.removed++
        continue
      }
      if (record.phase !== 'ready') {
        await this.undoCreate(record)
        stats.removed++
        continue
      }
      known.add(id)
      if (!record.vmm || this.live.get(id)) continue
      const driver = this.driver(record.vmm.driver)
      if (driver.isAlive(record.vmm)) {
        try {
          const vm = await driver.attach(record.vmm)
          this.watch(id, vm)
          // A VMM runs only after a standby ended it, so one running with a snapshot recorded is
          // the restore from it, cut short before it consumed the snapshot: the disks moved on.
          if (record.snapshot) await this.files.withLock(id, () => this.consumeSnapshot(id))
          stats.reattached++
          continue
        } catch (err) {
          this.logger.warn('could not reattach to a VMM; ending it', { id, error: errorMessage(err) })
        }
      }
      await driver.destroy(record.vmm).catch(() => {})
      await this.files.withLock(id, () => this.finishBoot(record, 'killed'))
      stats.stopped++
    }
    for (const id of await this.files.runtimeIds()) {
      if (known.has(id)) continue
      await this.destroyRuntime(id)
      stats.removed++
    }
    if (this.opts.network && (await this.opts.network.exists())) {
      await (await this.opts.network.get()).reconcile(known)
      // The proxy's policies live in memory: give the ones of running VMs back.
      for (const id of known) {
        const record = await this.files.read(id)
        if (record?.vmm && record.network && record.spec.network.egress.enabled) await this.registerEgress(record)
      }
    }
    return stats
  }

  /**
   * Forgets the VMs without stopping them: they keep running and a later open reattaches. The
   * runtime dirs (sockets) of instances with no VMM go, and the run base with them once empty.
   */
  async detachAll(): Promise<void> {
    for (const vm of this.live.forgetAll()) await vm.detach().catch(() => {})
    for (const id of await this.files.runtimeIds()) {
      const record = await this.files.read(id).catch(() => undefined)
      if (!record?.vmm) await this.destroyRuntime(id)
    }
    await this.files.removeRunBaseIfEmpty()
  }
}

export type { InstanceSpec }

/** What the guest's init needs to configure its NIC. */
function guestNetwork(att: NetworkAttachment): NonNullable<GuestConfig['network']> {
  return { mac: att.mac, address: att.ip, prefixLength: att.prefixLength, gateway: att.gateway, dns: att.dns }
}

export type { InstanceNetworkRecord }
