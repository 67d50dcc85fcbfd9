/**
 * The allocation file: which instance holds which address, MAC and links, with what rates and
 * egress policy. It is the one source of truth: the nftables tables are rendered from it, links
 * and tc are made to match it, and a reconcile removes from the kernel whatever it does not name.
 * Every change happens under one lock file (across processes and within one), and the file is
 * written atomically, so concurrent creates never get the same address and a restart of the host
 * process finds every allocation it made.
 */
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { readJsonIfExists, withFileLock, writeJsonAtomic } from '@hypeman-ts/common'
import { NetworkError } from './errors.js'
import type { EgressMode, GuestDevice } from './options.js'

export interface StoredEgress {
  mode: EgressMode
  proxy: { address: string; httpPort: number; httpsPort: number; explicitPort?: number }
}

export interface Allocation {
  instanceId: string
  /** 12 hex digits: the links are `hmt<short>`, `hmi<short>` (and `hmp<short>` for a veth). */
  short: string
  ip: string
  mac: string
  device: GuestDevice
  vcpus: number
  downloadBitsPerSec: number
  uploadBitsPerSec: number
  egress: StoredEgress | null
  createdAt: string
  updatedAt: string
}

/** What the ruleset is rendered from besides the allocations: the options of the last `open`. */
export interface NetworkSettings {
  table: string
  dns: string[]
  uplink: string | null
  isolate: boolean
}

export interface NetworkState {
  version: 1
  bridge: string
  subnet: string
  /** Null until the first open wrote them. */
  settings: NetworkSettings | null
  /** The last address handed out; the next allocation starts after it. */
  cursor: string | null
  allocations: Record<string, Allocation>
}

export const STATE_FILE = 'network.json'
export const LOCK_FILE = 'network.lock'

export class AllocationStore {
  readonly file: string
  readonly lockFile: string

  constructor(
    readonly dir: string,
    private readonly lockTimeoutMs = 120_000,
  ) {
    this.file = join(dir, STATE_FILE)
    this.lockFile = join(dir, LOCK_FILE)
  }

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 })
  }

  /** The state as last written, or an empty one for this bridge and subnet. */
  async read(bridge: string, subnet: string): Promise<NetworkState> {
    let raw: unknown
    try {
      raw = await readJsonIfExists<unknown>(this.file)
    } catch (err) {
      throw new NetworkError('network_state_invalid', `${this.file} is not valid JSON`, { step: 'state', cause: err })
    }
    if (raw === undefined) return { version: 1, bridge, subnet, settings: null, cursor: null, allocations: {} }
    const s = raw as Partial<NetworkState>
    if (s.version !== 1 || typeof s.allocations !== 'object' || s.allocations === null || typeof s.subnet !== 'string') {
      throw new NetworkError('network_state_invalid', `${this.file} is not a version 1 netsetup state file`, { step: 'state' })
    }
    return { settings: null, ...s } as NetworkState
  }

  write(state: NetworkState): Promise<void> {
    return writeJsonAtomic(this.file, state, 0o600)
  }

  /** Serialises every change to the network (allocations and the kernel objects made from them). */
  withLock<T>(fn: () => Promise<T>): Promise<T> {
    return withFileLock(this.lockFile, fn, { timeoutMs: this.lockTimeoutMs })
  }
}
