/**
 * What every instance operation shares: the options the manager was opened with, the instance
 * files, the live VMs, the per-instance operation queue, and lookup. The operations themselves
 * live in a file each (create.ts, lifecycle.ts, guest-access.ts, reconcile.ts), as hypeman's
 * lib/instances does; `InstanceManager` (manager.ts) is their one public face.
 */
import { KeyedQueue, NotFoundError, NotSupportedError, silentLogger, ValidationError, type Logger } from '@hypeman-ts/common'
import type { Accel, VmmDriver } from '@hypeman-ts/vmm-drivers'
import type { EgressProxy } from '@hypeman-ts/egress-proxy'
import type { HostNetwork } from '@hypeman-ts/netsetup'
import type { GuestAssets } from '../assets/index.js'
import type { ImageManager } from '../images/manager.js'
import type { VolumeManager } from '../volumes/manager.js'
import { LiveVms } from './live.js'
import type { Hypervisor, SpecDefaults } from './params.js'
import type { InstanceFiles, InstanceRecord } from './record.js'

export interface InstanceManagerOptions {
  files: InstanceFiles
  images: ImageManager
  /** Volumes instances attach at create; without it a create asking for volumes is refused. */
  volumes?: VolumeManager
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
  /** The proxy if this process has started it (or is starting it); never starts it. */
  running(): Promise<EgressProxy> | undefined
  /** Where the guest's redirected TCP 80/443 and its HTTP_PROXY land. */
  ports: { transparent: number; explicit: number }
}

export const nowIso = (): string => new Date().toISOString()

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
    const out: InstanceRecord[] = []
    for (const id of await this.files.ids()) {
      const r = await this.files.read(id)
      if (r) out.push(r)
    }
    return out
  }

  /** An instance by id or name; one being deleted is already gone. */
  async find(idOrName: string): Promise<InstanceRecord> {
    if (typeof idOrName !== 'string' || idOrName === '') throw new ValidationError('id', 'an instance id or name is required')
    const direct = /^[a-z0-9]+$/.test(idOrName) ? await this.files.read(idOrName).catch(() => undefined) : undefined
    if (direct && direct.phase !== 'deleting') return direct
    const byName = (await this.records()).find((r) => r.name === idOrName && r.phase !== 'deleting')
    if (!byName) throw new NotFoundError(`instance ${idOrName} not found`, { field: 'id' })
    return byName
  }
}
