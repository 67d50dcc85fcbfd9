/**
 * The manager users open: `Hypeman.open({ dataDir })` gives `.images` and `.instances` over one
 * data directory; `createInstance(params)` is the one-call form over a default manager.
 *
 * One manager per data directory at a time (a lock file holds it): the reconcile that runs at
 * open kills and removes whatever belongs to no known instance, which is only safe when no other
 * live manager is using the directory.
 */
import { rm } from 'node:fs/promises'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { ConflictError, errorMessage, Lazy, pathExists, parseRate, parseSize, stderrLogger, tryLockFile, type Logger, ValidationError } from '@hypeman-ts/common'
import { QemuDriver, type Accel, type VmmDriver } from '@hypeman-ts/vmm-drivers'
import { HostNetwork, resolveNetworkOptions, type HostNetworkOptions } from '@hypeman-ts/netsetup'
import { type AuditEvent, createProxy, type LookupFunction, parseHostServices, parsePorts } from '@hypeman-ts/egress-proxy'
import { defaultCacheDir, ensureGuestAssets, ensureKernelHeaders, type GuestAssetsOptions } from './assets/index.js'
import { type Capabilities, type CapabilitiesInput, describeCapabilities } from './capabilities.js'
import { doctor, type DoctorOptions, type DoctorReport } from './doctor.js'
import { checkKernelImage, checkPrograms, claimDirectory, WRITTEN_BY } from './preflight.js'
import { EgressEvents, type HypemanEgress } from './egress.js'
import { ImageManager, type ImageManagerOptions } from './images/manager.js'
import { InstanceManager } from './instances/manager.js'
import type { Instance } from './instances/model.js'
import type { CreateInstanceParams, Hypervisor } from './instances/params.js'
import { InstanceFiles, WARM_DIR } from './instances/record.js'
import { TemplateStore } from './templates/store.js'
import { WarmPool } from './templates/warm-pool.js'
import { VolumeManager } from './volumes/manager.js'
import { DeviceManager } from './devices/manager.js'
import type { SysfsOptions } from './devices/sysfs.js'

export interface HypemanOptions {
  /** Where images and instances live. Default $HYPEMAN_TS_DATA_DIR or /var/lib/hypeman-ts. */
  dataDir?: string
  /** Guest kernel, initrd and init cache. Default $HYPEMAN_TS_CACHE or /var/cache/hypeman-ts. */
  cacheDir?: string
  /** A guest kernel of your own instead of Debian's cloud kernel. */
  kernel?: GuestAssetsOptions['kernel']
  /** Hardware acceleration: 'auto' (default) probes KVM with a deadline and falls back to TCG. */
  accel?: Accel
  /** Default hypervisor for instances that name none. Default qemu. */
  hypervisor?: Hypervisor
  /**
   * Defaults of the create params (spec defaults: 1GB, 10GB, 2 vCPUs, kernel headers attached).
   * `skipKernelHeaders: true` spares every instance that does not ask the headers disk (see the
   * README's "Kernel headers" for what it costs).
   */
  defaults?: { size?: string; overlaySize?: string; vcpus?: number; skipKernelHeaders?: boolean }
  /**
   * Boot templates: the first boot of each machine shape (image, kernel, init, vCPUs, memory,
   * disks, NIC) is snapshotted where the guest waits for its instance, and later boots of the
   * shape restore that snapshot instead of booting the kernel. `false` boots every instance cold.
   * Default on, with at most 4GB of templates (least recently used go first).
   *
   * `warm`: VMMs kept spawned per shape, paused with the template loaded, for boots without a NIC
   * to adopt instead of starting QEMU (templates/warm-pool.ts); refilled after each use, for the
   * 4 shapes used last. Default 1; 0 spawns none ahead.
   */
  templates?: false | { maxSize?: string; warm?: number }
  /** How long a boot may take to start the program. Default 120 s (TCG is slow). */
  bootTimeoutMs?: number
  /**
   * Attach and detach volumes while instances run (QEMU): each cold boot gets a SCSI controller
   * for them. Default true (its boot cost is in the core README); false refuses those with
   * `invalid_state` on instances booted without it.
   */
  volumeHotplug?: boolean
  images?: Omit<ImageManagerOptions, 'dir' | 'inUse' | 'logger'>
  /**
   * The default network instances attach to (set up on first use: a bridge, NAT, our nftables
   * tables); `false` for none, and then `network.enabled` defaults to false.
   */
  network?: false | NetworkOptions
  /** The embedded egress proxy for `network.egress` and `credentials`. */
  egress?: EgressOptions
  /** PCI passthrough and vGPUs: where sysfs is (default `/sys`), and where PCI names come from. */
  devices?: DeviceOptions
  /** Drivers to use instead of the defaults (tests, other binaries). */
  drivers?: Partial<Record<Hypervisor, VmmDriver>>
  logger?: Logger
}

export interface NetworkOptions extends Omit<HostNetworkOptions, 'stateDir' | 'logger' | 'capacity'> {
  /** Host capacity the default per-instance rates share out (vCPU share), e.g. "1Gbps". */
  capacity?: { download?: string; upload?: string }
}

export interface DeviceOptions {
  /** Default `/sys`; a fabricated tree in tests. */
  sysfsRoot?: string
  /** For a fabricated sysfs: called after each write, where a test plays the kernel (see devices/sysfs.ts). */
  onSysfsWrite?: SysfsOptions['onWrite']
  /** pci.ids files to name devices from; default pciutils' and hwdata's, `[]` for none. */
  pciIds?: string[]
}

export interface EgressOptions {
  /** Ports on the gateway address: `transparent` gets the guests' redirected TCP 80/443, `explicit` is HTTP_PROXY. Default 18443, 18080. */
  ports?: { transparent?: number; explicit?: number }
  /** Extra PEM roots to verify upstreams with. */
  upstreamCa?: string
  /**
   * CIDRs exempt from the proxy's SSRF guard (private and special ranges are refused otherwise).
   * Never this host: the proxy refuses the host's own addresses whatever this says.
   */
  allowDestinations?: string[]
  /** Ports guests may reach through the proxy (default [80, 443]); the whole list. */
  allowPorts?: number[]
  /** Services on this host guests may reach through the proxy, each an exact "address:port". */
  allowHostServices?: string[]
  /**
   * Called with each audit event of the proxy (injections, refusals with their rule, upstream
   * errors, policy changes); see also `hm.egress.events()`. It must not throw (a throw is logged).
   */
  onAudit?: (event: AuditEvent) => void
  /** How the proxy resolves destination names (default: the system resolver). */
  lookup?: LookupFunction
}

export class Hypeman {
  private constructor(
    readonly dataDir: string,
    readonly images: ImageManager,
    readonly instances: InstanceManager,
    /** ext4 volumes that outlive instances, attached at create (`volumes`). */
    readonly volumes: VolumeManager,
    /** Host PCI devices registered for passthrough (`devices` at create), and the vGPU profiles (`gpu`). */
    readonly devices: DeviceManager,
    /** The embedded egress proxy: its audit events. */
    readonly egress: HypemanEgress,
    /** Boot templates (list, drop); undefined when opened with `templates: false`. */
    readonly templates: TemplateStore | undefined,
    /** The VMMs kept spawned for template boots (`ready`: how many per shape); undefined when none are. */
    readonly warm: WarmPool | undefined,
    private readonly lockPath: string,
    private readonly closers: (() => Promise<void>)[],
    private readonly network: { exists(): Promise<boolean>; get(): Promise<HostNetwork> } | undefined,
    private readonly capabilitiesInput: CapabilitiesInput,
  ) {}

  /** What this manager can run: hypervisors and their features, network model, platforms (see capabilities.ts). */
  capabilities(): Capabilities {
    return describeCapabilities(this.capabilitiesInput)
  }

  static async open(opts: HypemanOptions = {}): Promise<Hypeman> {
    // The proxy starts on first use; its options are checked now, so bad input fails the open
    // before anything is touched.
    if (opts.egress?.allowPorts !== undefined) parsePorts(opts.egress.allowPorts, 'egress.allowPorts')
    if (opts.egress?.allowHostServices !== undefined) parseHostServices(opts.egress.allowHostServices, 'egress.allowHostServices')
    if (opts.egress?.onAudit !== undefined && typeof opts.egress.onAudit !== 'function') throw new ValidationError('egress.onAudit', 'must be a function')
    if (opts.defaults?.skipKernelHeaders !== undefined && typeof opts.defaults.skipKernelHeaders !== 'boolean') {
      throw new ValidationError('defaults.skipKernelHeaders', 'must be true or false')
    }
    const dataDir = opts.dataDir ?? process.env.HYPEMAN_TS_DATA_DIR ?? '/var/lib/hypeman-ts'
    const cacheDir = opts.cacheDir ?? defaultCacheDir()
    const logger = opts.logger ?? stderrLogger
    const drivers: Partial<Record<Hypervisor, VmmDriver>> = opts.drivers ?? { qemu: new QemuDriver({ logger }) }
    // Everything this configuration will need from the host, before anything is created.
    checkPrograms(Object.values(drivers), opts.network !== false)
    if (opts.kernel && 'image' in opts.kernel) await checkKernelImage(opts.kernel.image)
    await claimDirectory(cacheDir, 'cacheDir', WRITTEN_BY)
    await claimDirectory(dataDir, 'dataDir', WRITTEN_BY)
    const lockPath = join(dataDir, 'manager.lock')
    await takeDataDir(lockPath)
    const closers: (() => Promise<void>)[] = []
    const egressEvents = new EgressEvents(logger)
    if (opts.egress?.onAudit) egressEvents.subscribe(opts.egress.onAudit)
    try {
      const files = new InstanceFiles(dataDir)
      await files.init()
      let instances: InstanceManager | undefined
      const images = new ImageManager({
        ...opts.images,
        dir: join(dataDir, 'images'),
        logger,
        inUse: async () => (instances ? instances.digestsInUse() : new Set()),
        prepareTemplate: (image, shape, signal) => instances!.prepareTemplate(image, shape, signal ? { signal } : {}),
        // Its templates restore onto its disk, which is gone: they and their warm VMMs go too.
        removed: async (digest) => {
          for (const t of (await templates?.list()) ?? []) {
            if (t.shape.imageDigest !== digest) continue
            await warm?.drop(t.key)
            await templates!.drop(t.key, 'its image was deleted')
          }
        },
      })
      await images.init()
      const volumes = new VolumeManager({
        dir: join(dataDir, 'volumes'),
        instanceName: async (id) => (await files.read(id))?.name,
      })
      await volumes.init()
      const templates =
        opts.templates === false
          ? undefined
          : new TemplateStore({ dir: join(dataDir, 'templates'), maxBytes: parseSize(opts.templates?.maxSize ?? '4GB', 'templates.maxSize'), logger })
      await templates?.init()
      const warmCount = opts.templates === false ? 0 : (opts.templates?.warm ?? 1)
      if (!Number.isInteger(warmCount) || warmCount < 0 || warmCount > 16) throw new ValidationError('templates.warm', 'expected a whole number from 0 to 16')
      const warm = warmCount > 0 ? new WarmPool({ dir: join(dataDir, WARM_DIR), runDir: join(files.runBase, WARM_DIR), ramDir: join(files.ramBase, WARM_DIR), perShape: warmCount, maxShapes: 4, logger }) : undefined
      if (warm) closers.push(() => warm.close())
      const devices = new DeviceManager({
        dir: join(dataDir, 'devices'),
        ...(opts.devices?.sysfsRoot ? { root: opts.devices.sysfsRoot } : {}),
        ...(opts.devices?.onSysfsWrite ? { onWrite: opts.devices.onSysfsWrite } : {}),
        ...(opts.devices?.pciIds ? { pciIds: opts.devices.pciIds } : {}),
        instanceName: async (id) => (await files.read(id))?.name,
        logger,
      })
      await devices.init()
      const networkProvider = opts.network === false ? undefined : networkProviderFor(dataDir, opts.network ?? {}, logger)
      const egressPorts = { transparent: opts.egress?.ports?.transparent ?? 18443, explicit: opts.egress?.ports?.explicit ?? 18080 }
      const proxy = new Lazy(async () => {
        // The proxy listens on the gateway address, which exists once the bridge does.
        const gateway = (await networkProvider!.get()).config.subnet.gateway
        const started = await createProxy({
          stateDir: join(dataDir, 'egress'),
          listen: `${gateway}:${egressPorts.explicit}`,
          transparentListen: `${gateway}:${egressPorts.transparent}`,
          ...(opts.egress?.upstreamCa ? { upstreamCa: opts.egress.upstreamCa } : {}),
          ...(opts.egress?.allowDestinations ? { allowDestinations: opts.egress.allowDestinations } : {}),
          ...(opts.egress?.allowPorts ? { allowPorts: opts.egress.allowPorts } : {}),
          ...(opts.egress?.allowHostServices ? { allowHostServices: opts.egress.allowHostServices } : {}),
          ...(opts.egress?.lookup ? { lookup: opts.egress.lookup } : {}),
          logger,
        })
        egressEvents.attach(started)
        return started
      })
      const egressProvider = networkProvider && { ports: egressPorts, get: () => proxy.get(), running: () => proxy.started }
      closers.push(async () => {
        await (await proxy.started?.catch(() => undefined))?.close({ grace: '2s' })
        egressEvents.close()
      })
      const assets = new Lazy(() => ensureGuestAssets({ cacheDir, logger, ...(opts.kernel ? { kernel: opts.kernel } : {}) }))
      const headersDir = opts.kernel?.headers
      // Not memoised: a cached disk costs a stat and a small read, and one removed from the cache is made again.
      const kernelHeaders = async (signal?: AbortSignal) => {
        const a = await assets.get()
        return ensureKernelHeaders({ cacheDir, kernel: { version: a.kernelVersion, dir: a.kernelDir }, logger, ...(headersDir ? { headers: headersDir } : {}), ...(signal ? { signal } : {}) })
      }
      instances = new InstanceManager({
        files,
        images,
        volumes,
        ...(templates ? { templates } : {}),
        ...(warm ? { warm } : {}),
        devices,
        drivers,
        assets: () => assets.get(),
        kernelHeaders,
        defaults: {
          size: opts.defaults?.size ?? '1GB',
          overlaySize: opts.defaults?.overlaySize ?? '10GB',
          vcpus: opts.defaults?.vcpus ?? 2,
          hypervisor: opts.hypervisor ?? 'qemu',
          available: Object.keys(drivers) as Hypervisor[],
          maxVcpus: Math.max(availableParallelism(), 1) * 4,
          networkAvailable: networkProvider !== undefined,
          skipKernelHeaders: opts.defaults?.skipKernelHeaders ?? false,
        },
        ...(networkProvider ? { network: networkProvider } : {}),
        ...(egressProvider ? { egress: egressProvider } : {}),
        accel: opts.accel ?? 'auto',
        ...(opts.bootTimeoutMs ? { bootTimeoutMs: opts.bootTimeoutMs } : {}),
        ...(opts.volumeHotplug !== undefined ? { volumeHotplug: opts.volumeHotplug } : {}),
        logger,
      })
      await instances.reconcile()
      // After the reconcile: a warm VMM an instance adopted before a crash is that instance's now.
      const reaped = await warm?.reap(new Set(await instances.vmmPids()))
      if (reaped) logger.warn('ended warm VMMs a previous manager left', { count: reaped })
      const orphans = await volumes.releaseOrphans(async (id, volumeId) => !!(await files.read(id))?.spec.volumes?.some((v) => v.volumeId === volumeId))
      if (orphans.length) logger.warn('released volume attachments no instance holds (gone, or a crash mid-attach or detach)', { instances: orphans })
      // A device stays with vfio-pci while its claim lasts: one of an instance that is gone goes back to its driver.
      try {
        const released = await devices.releaseOrphans(async (id) => (await files.read(id)) !== undefined)
        if (released.length) logger.warn('released devices of instances that no longer exist', { instances: released })
      } catch (err) {
        logger.warn('giving devices of gone instances back to their drivers failed; the next open tries again', { error: errorMessage(err) })
      }
      const capabilities: CapabilitiesInput = {
        drivers: Object.keys(drivers) as Hypervisor[],
        defaultHypervisor: opts.hypervisor ?? 'qemu',
        defaultPlatform: images.defaultPlatform,
        // From the options, as netsetup will read them: answering must not create the network.
        ...(opts.network === false ? {} : { network: networkSummary(dataDir, opts.network ?? {}) }),
      }
      return new Hypeman(dataDir, images, instances, volumes, devices, egressEvents, templates, warm, lockPath, closers, networkProvider, capabilities)
    } catch (err) {
      for (const close of closers) await close().catch(() => {})
      await rm(lockPath, { force: true })
      throw err
    }
  }

  /** Host preflight: what this machine has and lacks, with what to install (see doctor.ts). */
  static doctor(opts: DoctorOptions = {}): Promise<DoctorReport> {
    return doctor(opts)
  }

  /**
   * Lets go of the data directory. VMs keep running; the next open reattaches to them.
   * `removeNetwork`: also take down the host network this manager set up (bridge, NAT, our
   * nftables tables, allocations) — refused with `conflict` while any instance still holds an
   * address on it (delete those first); nothing is closed then.
   */
  async close(opts: { removeNetwork?: boolean } = {}): Promise<void> {
    if (opts.removeNetwork) {
      const holders = (await this.instances.list()).filter((i) => i.network?.ip)
      if (holders.length) {
        throw new ConflictError(`the network is still used by ${holders.map((i) => i.name).join(', ')}: delete those instances first`, {
          field: 'removeNetwork',
          details: { instances: holders.map((i) => i.id) },
        })
      }
    }
    await this.instances.detachAll()
    await this.images.close()
    // The proxy listens on the bridge's address: it closes (with the other closers) first.
    for (const close of this.closers) await close()
    await this.instances.removeEmptyBases()
    if (opts.removeNetwork && this.network && (await this.network.exists())) await (await this.network.get()).destroy()
    await rm(this.lockPath, { force: true })
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

/** Holds the data directory for this process; a lock left by a dead process is taken over. */
async function takeDataDir(lockPath: string): Promise<void> {
  const got = await tryLockFile(lockPath)
  if (got.taken) return
  throw new ConflictError(
    got.owner === process.pid ? 'this process already has the data directory open' : `the data directory is in use by another manager (pid ${got.owner || '?'})`,
    { field: 'dataDir' },
  )
}

/** The host network, opened on first use (opening it creates the bridge and our tables). */
function networkProviderFor(dataDir: string, opts: NetworkOptions, logger: Logger) {
  const stateDir = join(dataDir, 'network')
  const { capacity, ...rest } = opts
  const net = new Lazy(() =>
    HostNetwork.open({
      ...rest,
      stateDir,
      logger,
      ...(capacity
        ? {
            capacity: {
              ...(capacity.download ? { downloadBitsPerSec: parseRate(capacity.download, 'network.capacity.download') } : {}),
              ...(capacity.upload ? { uploadBitsPerSec: parseRate(capacity.upload, 'network.capacity.upload') } : {}),
            },
          }
        : {}),
    }),
  )
  return { exists: () => pathExists(join(stateDir, 'network.json')), get: () => net.get() }
}

function networkSummary(dataDir: string, opts: NetworkOptions): NonNullable<CapabilitiesInput['network']> {
  const { capacity: _capacity, ...rest } = opts
  const c = resolveNetworkOptions({ ...rest, stateDir: join(dataDir, 'network') })
  return { gateway: c.subnet.gateway, subnet: c.subnet.cidr, isolate: c.isolate }
}

let defaultManager: Lazy<Hypeman> | undefined

/** The default manager behind createInstance, opened on first use with the first caller's options (a failed open is tried again). */
export function defaultHypeman(opts: HypemanOptions = {}): Promise<Hypeman> {
  defaultManager ??= new Lazy(() => Hypeman.open(opts))
  return defaultManager.get()
}

/** Creates and starts an instance with the default manager (opened on first use). */
export async function createInstance(params: CreateInstanceParams, opts: HypemanOptions = {}): Promise<Instance> {
  return (await defaultHypeman(opts)).instances.create(params)
}
