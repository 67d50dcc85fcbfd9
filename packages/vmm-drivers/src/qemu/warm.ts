/**
 * A QEMU spawned before it is needed (`-incoming defer -S`) on files of its own, with a snapshot
 * already loaded when its spec names one (a boot template's). Starting QEMU costs ≈ 80 ms before
 * QMP answers whatever the machine (dynamic linking of ≈ 50 libraries: even `-version` takes
 * 60 ms here), plus the load of the snapshot's device state; a warm VM has paid both.
 *
 * `adopt` makes it another spec's VM without the guest seeing a difference:
 * - a disk whose file differs is re-pointed: `blockdev-add` of the new file, `blockdev-reopen` of
 *   the format node onto it (the old file node goes with its last reference); or, named in
 *   `moveDisks`, its warm file is moved to the spec's path;
 * - logs and sockets are renamed to the spec's paths (QEMU keeps its descriptors); what an earlier
 *   boot left in a log is put ahead of this one's, as an append would have kept it;
 * - a shared RAM file (`memoryFile`) is the warm VM's own, mapped at spawn: the RAM the VM
 *   resumes with is copied into it (the snapshot's, unless the spawn loaded the snapshot and
 *   copied it then; a clone source's, `ramFrom`), and the file is moved to the spec's path;
 * - the snapshot is loaded unless it already was, and the VM runs.
 * QEMU cannot swap a virtio-serial port's chardev (`chardev-change`: "Chardev user does not
 * support chardev hotswap"), hence the renames. A NIC's TAP cannot be swapped either: QEMU opened
 * it by name at start, so the caller renames that TAP to the spec's before adopting.
 */
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { setPriority } from 'node:os'
import { join, resolve } from 'node:path'
import { copySparse, errorMessage, pollUntil, type Logger } from '@hypeman-ts/common'
import { VmmError } from '../errors.js'
import { killAndWait, type ProcessWatch } from '../process.js'
import type { AdoptOptions, DiskSpec, PersistedVm, RunningVm, VmSpec, WarmVm } from '../types.js'
import { qemuDisk, RUNTIME_FILES } from './argv.js'
import type { QmpClient } from './qmp-client.js'
import { pidFilePath, qmpSocketPath, removeRuntimeFiles } from './runtime.js'
import { loadSnapshot, loadSnapshotForRestore } from './snapshot.js'
import { mapQemuStatus, MIGRATE_MAX_BANDWIDTH, QemuMachine } from './vm.js'

/** The spec without what adopt may change: two specs with the same shape make the same machine. */
export function warmShape(spec: VmSpec): string {
  const { name: _n, consoleLog: _c, vmmLog: _v, runtimeDir: _r, restoreFrom: _s, disks, channels, nics, memoryFile, ...rest } = spec
  return JSON.stringify({
    ...rest,
    // A shared RAM file is moved to the spec's at adoption; a file mapped copy-on-write is shared and stays.
    ...(memoryFile ? { memoryFile: memoryFile.shared ? { shared: true } : memoryFile } : {}),
    // The TAP's name is not QEMU's business once it holds it: the caller renames it to the spec's.
    nics: (nics ?? []).map(({ tap: _t, ...n }) => n),
    disks: (disks ?? []).map(({ path: _p, ...d }) => d),
    channels: (channels ?? []).map((c) => ({ name: c.name, kind: c.backend.kind })),
  })
}

/** What spawnWarm refuses: parts that are an instance's own and cannot be re-pointed. */
export function warmUnsupported(spec: VmSpec): string | undefined {
  if (spec.passthrough?.length) return 'host devices are passed through per VM'
  if ((spec.disks ?? []).some((d) => d.throttle)) return 'a throttled disk cannot be re-pointed'
  if ((spec.disks ?? []).some((d) => d.bus === 'scsi')) return 'hot-plugged disks are added per VM'
  return undefined
}

/** The nice value a warm VM waits at (driver.ts spawns it so); adopted, its threads get 0. */
export const WARM_NICE = 19

/**
 * Every thread of `pid` to nice 0 (on Linux the nice value is per thread). Lowering it needs
 * CAP_SYS_NICE (root has it); without, the VM runs on at the warm priority, which is said.
 */
async function renice(pid: number, logger: Logger): Promise<void> {
  const tids = await readdir(`/proc/${pid}/task`).catch(() => [])
  try {
    for (const tid of tids) setPriority(Number(tid), 0)
  } catch (err) {
    logger.warn(`the adopted VMM ${pid} keeps the warm VMM's low CPU priority (nice ${WARM_NICE}): ${errorMessage(err)}`)
  }
}

/** A RAM file to resume with must be the guest's size: a short one would fault the VMM at the first touch past its end. */
async function checkRamFile(path: string, bytes: number): Promise<void> {
  const size = await stat(path).then((st) => st.size, () => -1)
  if (size !== bytes) throw new VmmError('restore_failed', `the guest RAM file ${path} is missing or has the wrong size (${size} bytes)`, { step: 'adopt' })
}

export function vmmLogOf(spec: VmSpec): string {
  return spec.vmmLog ?? join(spec.runtimeDir, RUNTIME_FILES.vmmLog)
}

export class QemuWarmVm implements WarmVm {
  #adopted = false
  /** A clone source's RAM file copied into ours ahead of the adoption (spawnWarm's or preloadRam's `ramFrom`). */
  #ram: { from: string; copied: Promise<void> } | undefined

  constructor(
    readonly persisted: PersistedVm,
    readonly qmp: QmpClient,
    readonly watch: ProcessWatch,
    /** The snapshot dir loaded at spawn, if any. */
    readonly loaded: string | undefined,
    readonly readyTimeoutMs: number,
    readonly logger: Logger,
    /** The clone source's RAM file the spawn copied in, if any. */
    ramFrom?: string,
  ) {
    if (ramFrom !== undefined) this.#ram = { from: resolve(ramFrom), copied: Promise.resolve() }
  }

  preloadRam(from: string): Promise<void> {
    const mine = this.persisted.spec.memoryFile
    const copied = this.#adopted
      ? Promise.reject(new VmmError('invalid_state', 'this warm VM was adopted already', { step: 'adopt' }))
      : !mine?.shared || this.loaded !== undefined
        ? Promise.reject(new VmmError('invalid_state', 'only a warm VM with a shared RAM file and no snapshot loaded takes a clone\'s RAM', { step: 'adopt' }))
        : checkRamFile(from, this.persisted.spec.memoryBytes).then(() => copySparse(from, mine.path))
    // Awaited by the adoption; until then a failure is only kept.
    copied.catch(() => {})
    this.#ram = { from: resolve(from), copied }
    return copied
  }

  get pid(): number {
    return this.persisted.pid
  }

  get spec(): VmSpec {
    return this.persisted.spec
  }

  get exited(): Promise<unknown> {
    return this.watch.exited
  }

  async adopt(spec: VmSpec, opts: AdoptOptions = {}): Promise<RunningVm> {
    if (this.#adopted) throw new VmmError('invalid_state', 'this warm VM was adopted already', { step: 'adopt' })
    this.#adopted = true
    const t0 = Date.now()
    const deadline = t0 + (opts.readyTimeoutMs ?? this.readyTimeoutMs)
    const own = this.persisted.spec
    try {
      if (warmShape(spec) !== warmShape(own)) throw new VmmError('invalid_state', 'the spec makes another machine than this warm VM', { step: 'adopt' })
      if (this.watch.done) throw new VmmError('vmm_start_failed', 'the warm QEMU has exited', { step: 'adopt' })
      if (this.loaded !== undefined && spec.restoreFrom !== this.loaded) {
        throw new VmmError('invalid_state', `this warm VM holds the snapshot of ${this.loaded}, not ${spec.restoreFrom ?? 'a cold boot'}`, { step: 'adopt' })
      }
      const from = opts.migrateFrom
      if (this.loaded === undefined && !spec.restoreFrom && !from) throw new VmmError('invalid_state', 'a warm VM without a snapshot can only restore one, or clone a VM', { step: 'adopt' })
      if (from && (this.loaded !== undefined || spec.restoreFrom)) throw new VmmError('invalid_state', 'a clone loads no snapshot', { step: 'adopt' })
      if (opts.ramFrom && !from) throw new VmmError('invalid_state', 'ramFrom is the RAM of a clone\'s source (migrateFrom)', { step: 'adopt' })
      // Checked even when loaded at spawn: a snapshot broken since then is no longer the one to run.
      const checked = from ? undefined : await loadSnapshotForRestore(spec)
      const restore = this.loaded === undefined ? checked : undefined
      // From here the work is the caller's, now: at the normal priority.
      await renice(this.pid, this.logger)
      // The RAM to resume with: a clone's source's, or the snapshot's unless the spawn copied it in.
      await this.#adoptRam(own, spec, from ? opts.ramFrom : restore?.ramFrom, opts.signal)
      await this.#repointDisks(own.disks ?? [], spec.disks ?? [], new Set(opts.moveDisks ?? []))
      await this.#moveFiles(own, spec)
      const persisted: PersistedVm = { ...this.persisted, spec, controlSocket: qmpSocketPath(spec.runtimeDir) }
      await opts.onSpawn?.(persisted)
      if (restore) await loadSnapshot(this.qmp, restore, deadline, opts.signal)
      if (from) await this.#migrateFrom(from, spec, !!opts.ramFrom, deadline, opts.signal)
      opts.signal?.throwIfAborted()
      await this.qmp.execute('cont')
      const status = await this.qmp.execute<{ status: string }>('query-status')
      if (mapQemuStatus(status.status) !== 'running') throw new VmmError('vmm_start_failed', `QEMU is ${status.status} after cont`, { step: 'adopt' })
      const ms = Date.now() - t0
      return new QemuMachine(persisted, this.qmp, this.watch, { readyMs: ms, restoreMs: ms }, this.logger).runningView()
    } catch (err) {
      await this.discard()
      await removeRuntimeFiles(spec).catch(() => {})
      if (err instanceof VmmError) throw err
      throw new VmmError('vmm_start_failed', `adopting a warm QEMU failed: ${errorMessage(err)}`, { step: 'adopt', cause: err })
    }
  }

  /**
   * The source's state over a unix socket in the runtime dir: this QEMU listens, the source sends
   * (the devices, and the RAM unless it was copied: `ramCopied`; no bandwidth cap). The source ends paused with its
   * disks inactive; its `cont` takes them back (QEMU supports going on after a completed migration).
   */
  async #migrateFrom(from: NonNullable<AdoptOptions['migrateFrom']>, spec: VmSpec, ramCopied: boolean, deadline: number, signal?: AbortSignal): Promise<void> {
    const uri = `unix:${join(spec.runtimeDir, RUNTIME_FILES.migrate)}`
    // Both ends agree: with the RAM copied, shared RAM blocks are left out of the stream.
    const ignoreShared = { capabilities: [{ capability: 'x-ignore-shared', state: ramCopied }] }
    await this.qmp.execute('migrate-set-capabilities', ignoreShared)
    await this.qmp.execute('migrate-incoming', { uri })
    await from.execute('migrate-set-parameters', { 'max-bandwidth': MIGRATE_MAX_BANDWIDTH })
    await from.execute('migrate-set-capabilities', ignoreShared)
    await from.execute('migrate', { uri })
    const done = (q: { execute<T>(c: string): Promise<T> }, what: string) =>
      pollUntil(
        async () => {
          const info = await q.execute<{ status?: string; 'error-desc'?: string }>('query-migrate')
          return info.status === 'completed' || info.status === 'failed' || info.status === 'cancelled' ? info : undefined
        },
        { deadline, ...(signal ? { signal } : {}), intervalMs: 5, maxIntervalMs: 10, what, step: 'adopt.migrate' },
      )
    const [sent, received] = await Promise.all([done(from, 'the source to send its state'), done(this.qmp, 'the clone to receive its state')])
    await rm(uri.slice('unix:'.length), { force: true })
    for (const [side, info] of [['sending', sent], ['receiving', received]] as const) {
      if (info.status !== 'completed') throw new VmmError('restore_failed', `${side} the guest's state ${info.status}: ${info['error-desc'] ?? 'no reason given'}`, { step: 'adopt.migrate' })
    }
  }

  async discard(): Promise<void> {
    this.qmp.destroy()
    await killAndWait(this.persisted.pid, this.persisted.pidStartTime)
    await removeRuntimeFiles(this.persisted.spec).catch(() => {})
  }

  /**
   * The warm VM's shared RAM file becomes the spec's: `content` (when given and not the file
   * itself) is copied into it first, in place, while the VM has not run (QEMU maps it, so the
   * mapping sees the copy), then it is moved over the spec's path.
   */
  async #adoptRam(own: VmSpec, spec: VmSpec, content: string | undefined, signal?: AbortSignal): Promise<void> {
    const mine = own.memoryFile
    const wanted = spec.memoryFile
    if (!mine?.shared || !wanted?.shared) return
    const ahead = this.#ram
    this.#ram = undefined
    if (content !== undefined && ahead?.from === resolve(content)) {
      // Copied while the VMM started or waited: the source was paused before, and still is.
      await ahead.copied
    } else if (content !== undefined && resolve(content) !== resolve(mine.path)) {
      // Not over a preload of another file still writing into the same one.
      await ahead?.copied.catch(() => {})
      await checkRamFile(content, spec.memoryBytes)
      await copySparse(content, mine.path, signal ? { signal } : {})
    }
    if (resolve(mine.path) !== resolve(wanted.path)) await rename(mine.path, wanted.path)
  }

  /** Disks of the same size only: the guest read each one's capacity before the snapshot. */
  async #repointDisks(own: DiskSpec[], wanted: DiskSpec[], move: ReadonlySet<string>): Promise<void> {
    for (const [i, disk] of wanted.entries()) {
      const before = own[i]!
      if (disk.path === before.path) continue
      if (move.has(disk.serial)) {
        await rename(before.path, disk.path)
        continue
      }
      const [a, b] = await Promise.all([stat(before.path), stat(disk.path)])
      if (a.size !== b.size) throw new VmmError('invalid_state', `disk ${disk.serial}: ${disk.path} has ${b.size} bytes, the warm VM's ${a.size}`, { step: 'adopt' })
      const q = qemuDisk(disk, i)
      const { file, ...format } = q.blockdev as { file: Record<string, unknown> } & Record<string, unknown>
      const fileNode = `${q.node}-adopted`
      await this.qmp.execute('blockdev-add', { ...file, 'node-name': fileNode })
      await this.qmp.execute('blockdev-reopen', { options: [{ ...format, file: fileNode }] })
    }
  }

  /** Logs keep what earlier boots wrote; sockets and the pidfile just move. */
  async #moveFiles(own: VmSpec, spec: VmSpec): Promise<void> {
    const newRuntimeDir = spec.runtimeDir !== own.runtimeDir
    if (newRuntimeDir) {
      // Leftovers of an earlier VMM of that dir (a socket path that exists cannot be moved onto).
      await removeRuntimeFiles(spec)
      await mkdir(spec.runtimeDir, { recursive: true })
    }
    const moves: [string, string, 'log' | 'move'][] = [
      [own.consoleLog, spec.consoleLog, 'log'],
      [vmmLogOf(own), vmmLogOf(spec), 'log'],
      [qmpSocketPath(own.runtimeDir), qmpSocketPath(spec.runtimeDir), 'move'],
      [pidFilePath(own.runtimeDir), pidFilePath(spec.runtimeDir), 'move'],
    ]
    for (const [i, ch] of (spec.channels ?? []).entries()) {
      moves.push([own.channels![i]!.backend.path, ch.backend.path, ch.backend.kind === 'file' ? 'log' : 'move'])
    }
    for (const [from, to, kind] of moves) {
      if (from === to) continue
      if (kind === 'log') {
        const earlier = await readFile(to).catch(() => undefined)
        // QEMU appends (O_APPEND): after this rewrite its next write still lands at the end.
        if (earlier?.length) await writeFile(from, Buffer.concat([earlier, await readFile(from)]))
      }
      await rename(from, to)
    }
    if (newRuntimeDir) await rm(own.runtimeDir, { recursive: true, force: true })
  }
}
