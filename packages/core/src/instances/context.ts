/**
 * What every instance operation shares: the options the manager was opened with, the instance
 * files, the live VMs, the per-instance operation queue, and lookup. The operations themselves
 * live in a file each (create.ts, lifecycle.ts, guest-access.ts, reconcile.ts), as hypeman's
 * lib/instances does; `InstanceManager` (manager.ts) is their one public face.
 */
import { KeyedQueue, mapBounded, NotFoundError, NotSupportedError, silentLogger, ValidationError, type Logger } from '@hypeman-ts/common'
import type { Accel, VmmDriver } from '@hypeman-ts/vmm-drivers'
import type { EgressProxy } from '@hypeman-ts/egress-proxy'
import type { HostNetwork } from '@hypeman-ts/netsetup'
import type { GuestAssets } from '../assets/index.js'
import { InstanceLookupError } from '../errors.js'
import type { ImageManager } from '../images/manager.js'
import type { TemplateStore } from '../templates/store.js'
import type { WarmPool } from '../templates/warm-pool.js'
import type { VolumeManager } from '../volumes/manager.js'
import type { DeviceManager } from '../devices/manager.js'
import { LiveVms } from './live.js'
import type { Hypervisor, SpecDefaults } from './params.js'
import type { InstanceFiles, InstanceRecord } from './record.js'

export interface InstanceManagerOptions {
  files: InstanceFiles
  images: ImageManager
  /** Volumes instances attach at create; without it a create asking for volumes is refused. */
  volumes?: VolumeManager
  /** Passthrough devices and vGPUs; without it a create asking for `devices` or `gpu` is refused. */
  devices?: DeviceManager
  drivers: Partial<Record<Hypervisor, VmmDriver>>
  /** The guest kernel, initrd and command line (memoised by the caller). */
  assets: () => Promise<GuestAssets>
  /**
   * The headers disk of the guest kernel, made on first use (ensureKernelHeaders); without it, a
   * create that wants headers is refused naming skipKernelHeaders.
   */
  kernelHeaders?: (signal?: AbortSignal) => Promise<{ path: string }>
  defaults: SpecDefaults
  accel: Accel
  /** How long a boot may take to reach the program (TCG is slow). Default 120 s. */
  bootTimeoutMs?: number
  /** Boot templates; absent when the manager boots every instance cold. */
  templates?: TemplateStore
  /** VMMs spawned ahead for template boots; absent when templates are off or `templates.warm` is 0. */
  warm?: WarmPool
  /**
   * Give cold boots a SCSI controller, so volumes can be attached and detached while instances
   * run (drivers with `capabilities.diskHotplug`). Default true; false refuses those with
   * `invalid_state` on instances booted without it.
   */
  volumeHotplug?: boolean
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
  /** The proxy if this process has started it (or is starting it); never starts it. */
  running(): Promise<EgressProxy> | undefined
  /** Where the guest's redirected TCP 80/443 and its HTTP_PROXY land. */
  ports: { transparent: number; explicit: number }
}

export const nowIso = (): string => new Date().toISOString()

/** How many instances are read (records, VM states) at once: enough to overlap the waits, few enough files and sockets. */
export const READ_CONCURRENCY = 16

/** Ids are lowercase CUID2s: anything else is no id, nor a prefix of one. */
const ID_SHAPE = /^[a-z0-9]+$/

export class InstanceContext {
  readonly files: InstanceFiles
  readonly live = new LiveVms()
  /** Lifecycle operations run one at a time per instance. */
  readonly ops = new KeyedQueue()
  /** Creates in flight in this process: a delete cancels one and waits for its undo, so it never frees an address the create still uses. */
  readonly creating = new Map<string, { cancel: AbortController; done: Promise<void> }>()
  readonly logger: Logger
  readonly bootTimeoutMs: number

  constructor(readonly opts: InstanceManagerOptions) {
    this.files = opts.files
    this.logger = opts.logger ?? silentLogger
    this.bootTimeoutMs = opts.bootTimeoutMs ?? 120_000
  }

  driver(name: Hypervisor | string): VmmDriver {
    const d = this.opts.drivers[name as Hypervisor]
    if (!d) throw new NotSupportedError(`no ${name} driver on this host`, { field: 'hypervisor' })
    return d
  }

  async records(): Promise<InstanceRecord[]> {
    const read = await mapBounded(await this.files.ids(), READ_CONCURRENCY, (id) => this.files.read(id))
    return read.filter((r): r is InstanceRecord => r !== undefined)
  }

  /**
   * An instance as hypeman resolves a reference: its id, else its name, else a prefix of exactly
   * one id (a prefix of several is `ambiguous`, never a guess). One being deleted is already gone.
   */
  async find(ref: string): Promise<InstanceRecord> {
    if (typeof ref !== 'string' || ref === '') throw new ValidationError('id', 'an instance id or name is required')
    const idShaped = ID_SHAPE.test(ref)
    const direct = idShaped ? await this.files.read(ref).catch(() => undefined) : undefined
    if (direct && direct.phase !== 'deleting') return direct
    const present = (await this.records()).filter((r) => r.phase !== 'deleting')
    const byName = present.find((r) => r.name === ref)
    if (byName) return byName
    const byPrefix = idShaped ? present.filter((r) => r.id.startsWith(ref)) : []
    if (byPrefix.length > 1) {
      throw new InstanceLookupError('ambiguous', `"${ref}" is a prefix of ${byPrefix.length} instance ids; use more of the id`, { field: 'id' })
    }
    if (byPrefix.length === 1) return byPrefix[0]!
    throw new NotFoundError(`instance ${ref} not found`, { field: 'id' })
  }
}
