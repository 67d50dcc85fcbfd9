/**
 * What is persisted per instance (`<dataDir>/instances/<id>/instance.json`, written atomically
 * under the instance's lock) and where each of its files lives. The runtime dir (sockets, pidfile)
 * is kept short because unix socket paths are limited to 107 bytes.
 */
import { createHash, randomBytes } from 'node:crypto'
import { appendFile, mkdir, readdir, rmdir, statfs } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { readJsonIfExists, withFileLock, writeJsonAtomic } from '@hypeman-ts/common'
import type { PersistedVm } from '@hypeman-ts/vmm-drivers'
import type { MdevRecord } from '../devices/mdev.js'
import type { InstanceSpec } from './params.js'

/** The create steps, in order (create.ts runs them); each one that finished is recorded so a crash can be undone. */
export const CREATE_STEPS = ['instance_dir', 'volumes', 'devices', 'gpu', 'image', 'overlay_disk', 'network', 'egress', 'config_disk', 'vmm', 'guest_ready'] as const
export type CreateStep = (typeof CREATE_STEPS)[number]

export interface InstanceRecord {
  version: 1
  id: string
  name: string
  spec: InstanceSpec
  imageDigest: string | null
  createdAt: string
  startedAt: string | null
  stoppedAt: string | null
  /** `creating` until create returns; a record still `creating` at open is a crashed create. */
  phase: 'creating' | 'ready' | 'deleting'
  steps: CreateStep[]
  /** The VMM while one runs (or may run): what the driver needs to attach or destroy it. */
  vmm: PersistedVm | null
  /** Byte offset of the current (or last) boot's events in status.jsonl. */
  statusMark: number
  /** The last boot's end, once known. */
  exit: { code: number | null; message: string | null } | null
  /** A standby snapshot exists in snapshot/. */
  snapshot: boolean
  /** The instance's place on the host network, once attached. */
  network: InstanceNetworkRecord | null
  /** /etc/machine-id of the guest (32 hex); absent in records made before it existed. */
  machineId?: string
  /**
   * The MAC the VMM's NIC was started with when it is not the instance's: a boot from a template
   * keeps the template's on the device (the guest sets its own), and a restore must pass it again.
   */
  vmmMac?: string | null
  /** The key of the boot template its last boot was restored from (none: a cold boot). */
  template?: string
  /** The VMM runs a guest waiting at a template's point for `go` (identity.ts). */
  awaitingGo?: boolean
  /** A fork whose next restore must give the guest its own identity (fork.ts, identity.ts). */
  reidentify?: boolean
  /** Its vGPU, from the moment its UUID is chosen (before the kernel makes it) until delete. */
  gpu?: MdevRecord | null
  /**
   * The kernel headers disk is attached (decided at create: not skipKernelHeaders). Absent in
   * records written before headers existed: those instances booted, and must restore, without it.
   */
  kernelHeaders?: boolean
  /**
   * The last cold boot gave the VM a SCSI controller (for volumes attached while running); a
   * restore rebuilds the machine its snapshot came from, so it follows this, not today's options.
   * Absent in records of boots from before it existed: no controller.
   */
  scsiController?: boolean
}

/** A new instance's record: nothing made yet (no disk, VMM, address), its create in flight. */
export function newRecord(id: string, spec: InstanceSpec, createdAt: string): InstanceRecord {
  return {
    version: 1,
    id,
    name: spec.name,
    spec,
    imageDigest: null,
    createdAt,
    startedAt: null,
    stoppedAt: null,
    phase: 'creating',
    steps: [],
    vmm: null,
    statusMark: 0,
    exit: null,
    snapshot: false,
    network: null,
    machineId: randomBytes(16).toString('hex'),
    kernelHeaders: !spec.skipKernelHeaders,
  }
}

export interface InstanceNetworkRecord {
  tap: string
  mac: string
  ip: string
  prefixLength: number
  gateway: string
  dns: string[]
  netns: string | null
  downloadBitsPerSec: number
  uploadBitsPerSec: number
}

export interface InstancePaths {
  dir: string
  record: string
  lock: string
  overlay: string
  /** The guest's RAM while its VMM runs, on tmpfs (drivers with `capabilities.memoryFile`); a standby copies it into the snapshot. */
  memory: string
  config: string
  appLog: string
  statusLog: string
  consoleLog: string
  hypemanLog: string
  snapshot: string
  /** Where standby writes; it becomes `snapshot` once complete. */
  snapshotStaging: string
  /** A restored snapshot, until it is removed (after the restore). */
  snapshotConsumed: string
  runtimeDir: string
  agentSocket: string
  controlSocket: string
  vmmLog: string
}

/**
 * Sockets and pidfiles live under `/run/hypeman-ts/<first 10 hex of sha256(dataDir)>/<instance id>`:
 * on tmpfs (gone at reboot, like the VMMs), and short enough for unix socket paths.
 */
export const RUN_ROOT = '/run/hypeman-ts'

/**
 * Guest RAM files live under `/dev/shm/hypeman-ts/<same hash>/<instance id>`: on tmpfs, a page
 * first touched costs what anonymous memory costs (on a disk filesystem it allocates a block, and
 * dirty pages are written back: boots measured 8–35 % slower), and nothing outlives the host.
 */
export const RAM_ROOT = '/dev/shm/hypeman-ts'

/** The warm pool's dir in the run and RAM bases (templates/warm-pool.ts), next to the instances'. */
export const WARM_DIR = 'warm'

export class InstanceFiles {
  readonly root: string
  readonly runBase: string
  readonly ramBase: string
  /** `ramBase` could be made: RAM files can live there. */
  #ramUsable = false

  constructor(dataDir: string, runBase?: string, ramBase?: string) {
    this.root = join(dataDir, 'instances')
    // One run dir per data dir: two managers on different data dirs never share sockets.
    const hash = createHash('sha256').update(dataDir).digest('hex').slice(0, 10)
    this.runBase = runBase ?? join(RUN_ROOT, hash)
    this.ramBase = ramBase ?? join(RAM_ROOT, hash)
  }

  async init(): Promise<void> {
    await mkdir(this.root, { recursive: true })
    await mkdir(this.runBase, { recursive: true })
    this.#ramUsable = await mkdir(this.ramBase, { recursive: true, mode: 0o700 }).then(() => true, () => false)
  }

  /**
   * Whether a guest of `bytes` RAM gets a RAM file: the RAM dir exists and has room for it now.
   * A tmpfs that fills up makes a guest's next new page a SIGBUS for its VMM; without a file the
   * guest's RAM is anonymous memory (a standby then streams it, slower).
   */
  async ramFileFits(bytes: number): Promise<boolean> {
    if (!this.#ramUsable) return false
    const fs = await statfs(this.ramBase).catch(() => undefined)
    return !!fs && fs.bavail * fs.bsize >= bytes
  }

  /** Ids with a RAM file (the warm pool's dir aside). */
  async ramIds(): Promise<string[]> {
    return (await readdir(this.ramBase).catch(() => [] as string[])).filter((n) => n !== WARM_DIR)
  }

  paths(id: string): InstancePaths {
    const dir = join(this.root, id)
    const run = join(this.runBase, id)
    return {
      dir,
      record: join(dir, 'instance.json'),
      lock: join(dir, 'lock'),
      overlay: join(dir, 'overlay.ext4'),
      memory: join(this.ramBase, id),
      config: join(dir, 'config.img'),
      appLog: join(dir, 'app.log'),
      statusLog: join(dir, 'status.jsonl'),
      consoleLog: join(dir, 'console.log'),
      hypemanLog: join(dir, 'hypeman.log'),
      snapshot: join(dir, 'snapshot'),
      snapshotStaging: join(dir, 'snapshot.new'),
      snapshotConsumed: join(dir, 'snapshot.old'),
      runtimeDir: run,
      agentSocket: join(run, 'agent.sock'),
      controlSocket: join(run, 'control.sock'),
      vmmLog: join(dir, 'vmm.log'),
    }
  }

  read(id: string): Promise<InstanceRecord | undefined> {
    return readJsonIfExists<InstanceRecord>(this.paths(id).record)
  }

  write(record: InstanceRecord): Promise<void> {
    return writeJsonAtomic(this.paths(record.id).record, record, 0o600)
  }

  /** Serialises every change to one instance, across processes. */
  withLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return withFileLock(this.paths(id).lock, fn, { timeoutMs: 5 * 60_000 })
  }

  /** Serialises name reservations (create) and deletes across instances. */
  withNamesLock<T>(fn: () => Promise<T>): Promise<T> {
    return withFileLock(join(this.root, '.names.lock'), fn, { timeoutMs: 60_000 })
  }

  async ids(): Promise<string[]> {
    const names = await readdir(this.root).catch(() => [] as string[])
    return names.filter((n) => !n.startsWith('.'))
  }

  /** Removes the run and RAM bases, and their roots above them, when nothing is left in them. */
  async removeRunBaseIfEmpty(): Promise<void> {
    await rmdir(this.runBase).catch(() => {})
    if (dirname(this.runBase) === RUN_ROOT) await rmdir(RUN_ROOT).catch(() => {})
    await rmdir(this.ramBase).catch(() => {})
    if (dirname(this.ramBase) === RAM_ROOT) await rmdir(RAM_ROOT).catch(() => {})
  }

  /** Ids with a runtime dir (the warm pool's dir aside: the pool reaps its own). */
  async runtimeIds(): Promise<string[]> {
    return (await readdir(this.runBase).catch(() => [] as string[])).filter((n) => n !== WARM_DIR)
  }

  /** The per-instance operations log (the `hypeman` log source): one timestamped line per action. */
  async log(id: string, line: string): Promise<void> {
    await appendFile(this.paths(id).hypemanLog, `${new Date().toISOString()} ${line}\n`).catch(() => {})
  }
}
