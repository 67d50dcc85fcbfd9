/**
 * The instances API: the one public face over the operations, which live in a file each (as
 * hypeman's lib/instances does):
 *
 * - create.ts: validation, the name reservation and the ordered, recorded, reversible create steps
 * - lifecycle.ts: start, stop, kill, pause, resume, standby, restore, delete (state-checked)
 * - guest-access.ts: exec, execStream, stat, logs
 * - view.ts: the Instance, its state derived from the VMM and the guest (state.ts, transitions.ts)
 * - boot.ts: one boot of the VMM, its watch and the record of its end
 * - network.ts: host network attachment and the egress proxy's credential policy
 * - reconcile.ts: what a reopen after a crash, and a close, do
 */
import type { Readable } from 'node:stream'
import { mapBounded, parseDuration, ValidationError } from '@hypeman-ts/common'
import type { ExecOptions, ExecProcess, ExecResult, PathInfo } from '../guest/index.js'
import { matchesTags } from '../validate.js'
import { InstanceContext, READ_CONCURRENCY, type InstanceManagerOptions } from './context.js'
import { createInstance, type CreateOptions } from './create.js'
import { fork, type ForkParams } from './fork.js'
import { prepareTemplate, type TemplateShape } from './prepare.js'
import type { Template } from '../templates/store.js'
import { exec, execStream, logs, stat, type ExecParams, type LogOptions } from './guest-access.js'
import { copyFrom, copyTo, type CopyToOptions, type GuestFileEntry, mkdir } from './guest-files.js'
import { deleteInstance, kill, pause, restore, resume, standby, start, stop, type StopOptions } from './lifecycle.js'
import { INSTANCE_STATES, type Instance, type InstanceState } from './model.js'
import type { CreateInstanceParams, InstanceSpec } from './params.js'
import type { InstanceNetworkRecord } from './record.js'
import { detachAll, reconcile } from './reconcile.js'
import { instanceStats, type InstanceStats } from './stats.js'
import { type UpdateInstanceParams, updateInstance } from './update.js'
import { instanceView, toInstance } from './view.js'
import { attachVolume, detachVolume, type AttachVolumeParams } from './volumes.js'

export type { InstanceManagerOptions, NetworkProvider, EgressProvider } from './context.js'
export type { CreateOptions } from './create.js'
export type { ForkParams } from './fork.js'
export type { TemplateShape } from './prepare.js'
export type { ExecParams, LogOptions, LogSource } from './guest-access.js'
export type { StopOptions } from './lifecycle.js'
export type { InstanceSpec, InstanceNetworkRecord }

export interface WaitResult {
  state: InstanceState
  stateError: string | null
  timedOut: boolean
}

export class InstanceManager {
  readonly #cx: InstanceContext

  constructor(opts: InstanceManagerOptions) {
    this.#cx = new InstanceContext(opts)
  }

  /** Image digests instances depend on (their disks boot from them). */
  async digestsInUse(): Promise<Set<string>> {
    const out = new Set<string>()
    for (const r of await this.#cx.records()) if (r.imageDigest) out.add(r.imageDigest)
    return out
  }

  /** Creates and starts an instance (see create.ts for the steps). */
  create(params: CreateInstanceParams, opts: CreateOptions = {}): Promise<Instance> {
    return createInstance(this.#cx, params, opts)
  }

  get(idOrName: string): Promise<Instance> {
    return instanceView(this.#cx, idOrName)
  }

  /** Every instance (tags: all of them must match), oldest first; VM states are read a few at a time. */
  async list(filter: { tags?: Record<string, string> } = {}): Promise<Instance[]> {
    const records = (await this.#cx.records()).filter((r) => r.phase !== 'deleting' && matchesTags(r.spec.tags, filter.tags))
    const out = await mapBounded(records, READ_CONCURRENCY, (r) => toInstance(this.#cx, r))
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt))
  }

  /** Blocks until the instance reaches `state`, a terminal state, or the timeout (max 5 min). */
  async waitForState(idOrName: string, state: InstanceState, opts: { timeout?: string | number; signal?: AbortSignal } = {}): Promise<WaitResult> {
    if (!INSTANCE_STATES.includes(state)) throw new ValidationError('state', `must be one of ${INSTANCE_STATES.join(', ')}`)
    const timeoutMs = Math.min(parseDuration(opts.timeout ?? '60s', 'timeout'), 5 * 60_000)
    const deadline = Date.now() + timeoutMs
    // A loop rather than common's pollUntil: running out of time is an answer here (`timedOut`), not an error.
    for (;;) {
      const inst = await this.get(idOrName)
      const terminal = (inst.state === 'Stopped' || inst.state === 'Unknown') && state !== inst.state
      if (inst.state === state || terminal) return { state: inst.state, stateError: inst.stateError ?? null, timedOut: false }
      if (Date.now() >= deadline || opts.signal?.aborted) return { state: inst.state, stateError: inst.stateError ?? null, timedOut: true }
      await new Promise((r) => setTimeout(r, 100))
    }
  }

  /** Boots a stopped instance again (its overlay keeps what it wrote); a standby one is restored. */
  start(idOrName: string, opts: { signal?: AbortSignal } = {}): Promise<Instance> {
    return start(this.#cx, idOrName, opts)
  }

  /** Graceful stop: SIGTERM to the program, SIGKILL after the grace, power off. */
  stop(idOrName: string, opts: StopOptions = {}): Promise<Instance> {
    return stop(this.#cx, idOrName, opts)
  }

  /** Ends the VM at once (SIGKILL to the VMM). */
  kill(idOrName: string): Promise<Instance> {
    return kill(this.#cx, idOrName)
  }

  /** Freezes the VM's vCPUs (the guest's clock and processes stop until resume). */
  pause(idOrName: string): Promise<Instance> {
    return pause(this.#cx, idOrName)
  }

  resume(idOrName: string): Promise<Instance> {
    return resume(this.#cx, idOrName)
  }

  /** Snapshots the VM to disk and ends the VMM; `restore` (or `start`) resumes it where it was. */
  standby(idOrName: string): Promise<Instance> {
    return standby(this.#cx, idOrName)
  }

  restore(idOrName: string, opts: { signal?: AbortSignal } = {}): Promise<Instance> {
    return restore(this.#cx, idOrName, opts)
  }

  /** The boot template of `image` for instances of `shape`, made ahead of time (`hm.images.prepare`). */
  prepareTemplate(image: string, shape?: TemplateShape, opts: { signal?: AbortSignal } = {}): Promise<Template> {
    return prepareTemplate(this.#cx, image, shape, opts.signal)
  }

  /**
   * A new instance from this one's disks (Stopped), disks and memory (Standby), or, with
   * `fromRunning`, a Running one's (standby, fork, restore). See fork.ts.
   */
  fork(idOrName: string, params: ForkParams): Promise<Instance> {
    return fork(this.#cx, idOrName, params)
  }

  /** Removes the instance and everything it made: VMM, sockets, disks, logs, address. */
  delete(idOrName: string): Promise<void> {
    return deleteInstance(this.#cx, idOrName)
  }

  /**
   * Attaches a volume (id or name) to a Stopped instance, checked as at create (path rules,
   * read-write alone); mounted from its next start. Standby and running instances: `conflict` on
   * `state` (a snapshot fixes the disks; hot-plug is not built).
   */
  attachVolume(idOrName: string, volumeId: string, params: AttachVolumeParams): Promise<Instance> {
    return attachVolume(this.#cx, idOrName, volumeId, params)
  }

  /** Detaches a volume (id or name) from a Stopped instance; an overlay's writes go with it. */
  detachVolume(idOrName: string, volumeId: string): Promise<Instance> {
    return detachVolume(this.#cx, idOrName, volumeId)
  }

  /** Runs a program in the guest and collects its output and exit code. */
  exec(idOrName: string, params: ExecParams): Promise<ExecResult> {
    return exec(this.#cx, idOrName, params)
  }

  /** Runs a program in the guest with live streams; the connection closes when it exits. */
  execStream(idOrName: string, params: ExecOptions & { connectTimeoutMs?: number }): Promise<ExecProcess> {
    return execStream(this.#cx, idOrName, params)
  }

  /**
   * Changes what can change without a restart: `env` values that credentials take their real
   * value from (rotation). In effect for the next request of a running instance, at the next
   * start or restore otherwise. Other fields of hypeman's update are `not_supported`.
   */
  update(idOrName: string, params: UpdateInstanceParams): Promise<Instance> {
    return updateInstance(this.#cx, idOrName, params)
  }

  /**
   * Writes a file in a running guest (created or truncated, then given `mode`, default 0o644),
   * with no tool needed in the image. Resolves with the bytes written.
   */
  copyTo(idOrName: string, path: string, content: Readable | Buffer | string, opts: CopyToOptions = {}): Promise<{ bytesWritten: number }> {
    return copyTo(this.#cx, idOrName, path, content, opts)
  }

  /** Makes a directory (and missing parents) in a running guest. */
  mkdir(idOrName: string, path: string, opts: { mode?: number } = {}): Promise<void> {
    return mkdir(this.#cx, idOrName, path, opts)
  }

  /**
   * Reads a file, symlink or directory tree out of a running guest, entry by entry with its
   * metadata; read each file's `content` before asking for the next entry. Paths come from the
   * guest: untrusted.
   */
  copyFrom(idOrName: string, path: string, opts: { followLinks?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<GuestFileEntry> {
    return copyFrom(this.#cx, idOrName, path, opts)
  }

  /** Resource use now: the VMM's CPU time and memory, the guest's network bytes, what it was given. */
  stats(idOrName: string): Promise<InstanceStats> {
    return instanceStats(this.#cx, idOrName)
  }

  stat(idOrName: string, path: string, opts: { followLinks?: boolean } = {}): Promise<PathInfo> {
    return stat(this.#cx, idOrName, path, opts)
  }

  /**
   * Log lines: the program's output (app), the VMM's (vmm), our operations (hypeman), kernel
   * console. An async generator: an unknown id rejects on the first iteration.
   */
  logs(idOrName: string, opts: LogOptions = {}): AsyncGenerator<string> {
    return logs(this.#cx, idOrName, opts)
  }

  /** After a crash of the host process: finishes or undoes what was in flight (see reconcile.ts). */
  /** The pids of the VMMs instance records name. */
  async vmmPids(): Promise<number[]> {
    return (await this.#cx.records()).flatMap((r) => (r.vmm ? [r.vmm.pid] : []))
  }

  reconcile(): Promise<{ reattached: number; stopped: number; removed: number }> {
    return reconcile(this.#cx)
  }

  /** Forgets the VMs without stopping them: they keep running and a later open reattaches. */
  detachAll(): Promise<void> {
    return detachAll(this.#cx)
  }

  /** The run and RAM bases go once nothing is left in them (after the warm pool closed). */
  removeEmptyBases(): Promise<void> {
    return this.#cx.files.removeRunBaseIfEmpty()
  }
}
