/**
 * VMMs spawned ahead of need for the shapes boot templates serve (VmmDriver.spawnWarm): each
 * waits paused with its template's snapshot loaded, on files of its own (a slot), and a template
 * boot adopts one instead of starting QEMU and loading the template — ≈ 80 ms of QEMU's own start
 * plus the load, off the path of a create. After each use the shape gets a new one, spawned once
 * the boot that used it has its program running (not to compete with it for the CPU).
 *
 *   <dataDir>/warm/<slot>/    the slot's disks (sparse, of the instance's sizes) and logs
 *   <runBase>/warm/<slot>/    its sockets and pidfile; the QMP socket path marks the process
 *   <ramBase>/warm/<slot>     its guest RAM file (tmpfs), when the shape has one
 *
 * A shape with a NIC gets a spare TAP per slot (netsetup's `addSpareTap`): QEMU opens its TAP
 * when it starts, so the adoption renames the spare to the instance's TAP (`adoptTap`) first.
 *
 * Nothing of the pool outlives the manager: close ends every slot, and an open ends the ones a
 * crash left (a warm VMM no instance record names) and removes the slot dirs (netsetup's
 * reconcile, before, removes spare TAPs).
 */
import { randomBytes } from 'node:crypto'
import { mkdir, open, rm, stat } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { errorMessage, silentLogger, type Logger } from '@hypeman-ts/common'
import { findProcessesByArg, killAndWait, readStartTime, type AdoptOptions, type RunningVm, type VmmDriver, type VmSpec, type WarmVm } from '@hypeman-ts/vmm-drivers'
import { copyDiskSparse } from '../guest/index.js'

export interface WarmPoolOptions {
  /** Slot files: `<dataDir>/warm`. */
  dir: string
  /** Slot sockets: `<runBase>/warm`. */
  runDir: string
  /** Slot RAM files: `<ramBase>/warm` (the instances' RAM dir: an adoption renames the file). */
  ramDir: string
  /** Warm VMMs kept per shape. */
  perShape: number
  /** Shapes kept; the least recently used one's VMMs end first. */
  maxShapes: number
  logger?: Logger
}

/** How long after its trigger a refill starts spawning (see #quiet). */
const REFILL_DELAY_MS = 1000

export interface RefillOptions {
  /** Disks every instance shares (by serial): the slot uses the same files. */
  sharedDisks: ReadonlySet<string>
  /** Disks (by serial) the slot gets a copy of, for an adoption to move in (`moveDisks`); the others are sparse and empty. */
  seed?: Record<string, string>
  /** Spawning waits for it to settle. */
  after?: Promise<unknown>
  /** For a spec with a NIC: the spare TAPs a slot's VMM opens (netsetup's addSpareTap), and their removal. */
  taps?: { add(): Promise<string>; remove(tap: string): Promise<void> }
}

export interface AdoptHooks {
  /** Renames the slot's spare TAP to the instance's (before the adoption). */
  adoptTap?: (spare: string) => Promise<void>
}

/** A warm VMM taken for one boot (WarmPool.claim). */
export interface WarmClaim {
  readonly key: string
  /** As WarmPool.adopt, with the claimed VMM (waiting for its spawn); undefined a second time. */
  adopt(spec: VmSpec, opts: AdoptOptions, hooks?: AdoptHooks): Promise<RunningVm | undefined>
  /** Ends the claimed VMM unless it was adopted. */
  release(): Promise<void>
}

interface Slot {
  id: string
  vm: WarmVm
  /** The spare TAP it holds, until an adoption renames it the instance's. */
  tap?: string
  removeTap?: (tap: string) => Promise<void>
}

export class WarmPool {
  readonly #o: WarmPoolOptions
  readonly #logger: Logger
  /** Ready slots by shape key; Map order is use order (least recent first). */
  readonly #ready = new Map<string, Slot[]>()
  readonly #spawning = new Map<string, number>()
  readonly #refills = new Set<Promise<void>>()
  /** Claims neither adopted nor released yet, by their release. */
  readonly #claims = new Set<() => Promise<void>>()
  readonly #closing = new AbortController()
  #closed = false

  constructor(opts: WarmPoolOptions) {
    this.#o = opts
    this.#logger = opts.logger ?? silentLogger
  }

  /** Aborted when the pool closes: what a refill waits for (`after`) should end with it. */
  get closing(): AbortSignal {
    return this.#closing.signal
  }

  /** Warm VMMs ready now, by shape key. */
  get ready(): Record<string, number> {
    return Object.fromEntries([...this.#ready].map(([k, v]) => [k, v.length]))
  }

  /**
   * `spec`'s VM from a warm VMM of shape `key`, or undefined when none is ready or the adoption
   * failed (the caller starts one; a failure is logged). The slot's files go either way.
   */
  async adopt(key: string, spec: VmSpec, opts: AdoptOptions, hooks: AdoptHooks = {}): Promise<RunningVm | undefined> {
    const slot = this.#ready.get(key)?.shift()
    if (!slot) return undefined
    this.#touch(key)
    return this.#adoptSlot(key, slot, spec, opts, hooks)
  }

  /**
   * A warm VMM of shape `key` for a boot that will need it in a moment (a fork of a running
   * instance, whose steps run meanwhile): the ready one, else one spawned now, at the normal
   * priority and without the refill's delay. `ramFrom`: the paused clone source's RAM file,
   * copied into the VMM's now (while it starts, for a spawned one). The claim is adopted once or
   * released (which ends it); the pool's close ends one that is neither.
   */
  claim(key: string, driver: VmmDriver, spec: VmSpec, opts: RefillOptions, ramFrom?: string): WarmClaim {
    const ready = this.#ready.get(key)?.shift()
    if (ready) this.#touch(key)
    // Only into a RAM file of the slot's own (a spec with a shared one gets one).
    const ram = spec.memoryFile?.shared ? ramFrom : undefined
    // The adoption waits for the copy and fails (then starts a VMM of its own) if it failed.
    if (ready && ram !== undefined) ready.vm.preloadRam?.(ram).catch(() => {})
    const spawned: Promise<Slot | undefined> = ready
      ? Promise.resolve(ready)
      : !this.#closed && driver.spawnWarm
        ? this.#diskSizes(spec, opts)
            .then((sizes) => this.#makeSlot(driver, spec, opts, sizes, true, ram))
            .catch((err: unknown) => {
              if (!this.#closed) this.#logger.warn('spawning a warm VMM for a claim failed; the boot starts its own', { key, error: errorMessage(err) })
              return undefined
            })
        : Promise.resolve(undefined)
    let taken = false
    const take = async (): Promise<Slot | undefined> => {
      if (taken) return undefined
      taken = true
      const slot = await spawned
      this.#claims.delete(release)
      return slot
    }
    const release = async (): Promise<void> => {
      const slot = await take()
      if (slot) await this.#end(slot)
    }
    this.#claims.add(release)
    return {
      key,
      adopt: async (s, adoptOpts, hooks = {}) => {
        const slot = await take()
        return slot ? this.#adoptSlot(key, slot, s, adoptOpts, hooks) : undefined
      },
      release,
    }
  }

  async #adoptSlot(key: string, slot: Slot, spec: VmSpec, opts: AdoptOptions, hooks: AdoptHooks): Promise<RunningVm | undefined> {
    try {
      if (slot.tap) {
        if (!hooks.adoptTap) throw new Error('the warm VMM has a spare TAP and nothing adopts it')
        // Renamed the instance's from here on, whatever the adoption does next.
        const tap = slot.tap
        delete slot.tap
        await hooks.adoptTap(tap)
      }
      return await slot.vm.adopt(spec, opts)
    } catch (err) {
      await this.#end(slot)
      if (opts.signal?.aborted) throw err
      this.#logger.warn('adopting a warm VMM failed; starting one', { key, error: errorMessage(err) })
      return undefined
    } finally {
      await this.#removeSlotFiles(slot.id)
    }
  }

  /**
   * Spawns warm VMMs of shape `key` up to the pool's size, for specs like `spec` (its own files
   * replaced by the slot's), a second after `after` settles. Failures are logged; the boots go on without.
   */
  refill(key: string, driver: VmmDriver, spec: VmSpec, opts: RefillOptions): void {
    if (this.#closed || !driver.spawnWarm || this.#o.perShape <= 0) return
    const have = (this.#ready.get(key)?.length ?? 0) + (this.#spawning.get(key) ?? 0)
    const wanted = this.#o.perShape - have
    if (wanted <= 0) return
    this.#spawning.set(key, (this.#spawning.get(key) ?? 0) + wanted)
    // Now, while the instance's files exist: a short-lived one may be gone by the time of the spawn.
    const sizes = this.#diskSizes(spec, opts)
    sizes.catch(() => {})
    const refill = (opts.after ?? Promise.resolve())
      .catch(() => {})
      .then(() => this.#quiet())
      .then(async () => {
        for (let i = 0; i < wanted; i++) {
          try {
            if (!this.#closed) await this.#spawn(key, driver, spec, opts, await sizes)
          } catch (err) {
            if (!this.#closed) this.#logger.warn('spawning a warm VMM failed; boots of this shape start their own', { key, error: errorMessage(err) })
            break
          } finally {
            this.#spawning.set(key, (this.#spawning.get(key) ?? 1) - 1)
          }
        }
        this.#spawning.delete(key)
      })
    this.#refills.add(refill)
    void refill.finally(() => this.#refills.delete(refill))
  }

  /** Ends the warm VMMs of `key` (its template is gone). */
  async drop(key: string): Promise<void> {
    const slots = this.#ready.get(key) ?? []
    this.#ready.delete(key)
    await Promise.all(slots.map((s) => this.#end(s)))
  }

  async close(): Promise<void> {
    this.#closed = true
    this.#closing.abort()
    await Promise.all([...this.#refills])
    await Promise.all([...this.#claims].map((release) => release()))
    await Promise.all([...this.#ready.keys()].map((k) => this.drop(k)))
    await rm(this.#o.dir, { recursive: true, force: true })
    await rm(this.#o.runDir, { recursive: true, force: true })
    await rm(this.#o.ramDir, { recursive: true, force: true })
  }

  /** At open: ends warm VMMs a crashed manager left (those no instance record names, `known`) and removes the slots. */
  async reap(known: ReadonlySet<number>): Promise<number> {
    let ended = 0
    for (const pid of await findProcessesByArg(`path=${this.#o.runDir}/`)) {
      if (known.has(pid)) continue // adopted: an instance's VMM now
      await killAndWait(pid, readStartTime(pid))
      ended++
    }
    await rm(this.#o.dir, { recursive: true, force: true })
    await rm(this.#o.runDir, { recursive: true, force: true })
    await rm(this.#o.ramDir, { recursive: true, force: true })
    return ended
  }

  /**
   * A moment after the trigger: what a caller does next (a standby after a create, a restore after
   * a standby) does not share a small host's CPU with the spawn. Ends early when the pool closes.
   */
  #quiet(): Promise<void> {
    return new Promise((resolve) => {
      const signal = this.#closing.signal
      const onClose = (): void => (clearTimeout(timer), resolve())
      // Each refill waits here: a listener left behind would pile up on the pool's signal.
      const timer = setTimeout(() => (signal.removeEventListener('abort', onClose), resolve()), REFILL_DELAY_MS)
      signal.addEventListener('abort', onClose, { once: true })
    })
  }

  /** The sizes of `spec`'s own disks (0 for the shared ones), for a slot's empty copies. */
  #diskSizes(spec: VmSpec, opts: RefillOptions): Promise<number[]> {
    return Promise.all((spec.disks ?? []).map((d) => (opts.sharedDisks.has(d.serial) ? 0 : stat(d.path).then((st) => st.size))))
  }

  async #spawn(key: string, driver: VmmDriver, spec: VmSpec, opts: RefillOptions, sizes: number[]): Promise<void> {
    const slot = await this.#makeSlot(driver, spec, opts, sizes, false)
    // A warm VMM that dies waiting leaves the pool.
    void slot.vm.exited.then(() => {
      const slots = this.#ready.get(key)
      const at = slots?.indexOf(slot) ?? -1
      if (at >= 0) {
        slots!.splice(at, 1)
        void this.#end(slot)
      }
    })
    if (this.#closed) {
      await this.#end(slot)
      return
    }
    this.#ready.set(key, [...(this.#ready.get(key) ?? []), slot])
    this.#touch(key)
    await this.#evict()
  }

  /** A VMM spawned on files of its own; `now` and `ramFrom` as driver.spawnWarm takes them. */
  async #makeSlot(driver: VmmDriver, spec: VmSpec, opts: RefillOptions, sizes: number[], now: boolean, ramFrom?: string): Promise<Slot> {
    const id = randomBytes(6).toString('hex')
    const dir = join(this.#o.dir, id)
    const runtimeDir = join(this.#o.runDir, id)
    await mkdir(dir, { recursive: true })
    await mkdir(this.#o.ramDir, { recursive: true, mode: 0o700 })
    let tap: string | undefined
    try {
      const own = (p: string) => join(dir, basename(p))
      const disks = await Promise.all(
        (spec.disks ?? []).map(async (d, i) => {
          if (opts.sharedDisks.has(d.serial)) return d
          const path = join(dir, `disk${i}.img`)
          const seed = opts.seed?.[d.serial]
          if (seed) {
            await copyDiskSparse(seed, path)
          } else {
            const f = await open(path, 'w', 0o600)
            await f.truncate(sizes[i]!).finally(() => f.close())
          }
          return { ...d, path }
        }),
      )
      // The VMM maps its RAM file at spawn (the driver copies a snapshot's RAM in): the slot's own,
      // next to the instances' on the same tmpfs, moved to the instance's at adoption.
      const memory = spec.memoryFile?.shared ? join(this.#o.ramDir, id) : undefined
      if (spec.nics?.length) {
        if (spec.nics.length > 1 || !opts.taps) throw new Error('a warm VMM takes one NIC, with a spare TAP')
        tap = await opts.taps.add()
      }
      const vm = await driver.spawnWarm!({
        ...spec,
        ...(tap ? { nics: [{ ...spec.nics![0]!, tap }] } : {}),
        name: `warm-${id}`,
        disks,
        ...(memory ? { memoryFile: { path: memory, shared: true } } : {}),
        channels: (spec.channels ?? []).map((c) => ({ ...c, backend: { ...c.backend, path: c.backend.kind === 'socket' ? join(runtimeDir, basename(c.backend.path)) : own(c.backend.path) } })),
        consoleLog: own(spec.consoleLog),
        vmmLog: join(dir, 'vmm.log'),
        runtimeDir,
      }, { signal: this.#closing.signal, ...(now ? { now } : {}), ...(ramFrom !== undefined ? { ramFrom } : {}) })
      return { id, vm, ...(tap ? { tap, removeTap: opts.taps!.remove } : {}) }
    } catch (err) {
      await this.#removeSlotFiles(id)
      if (tap) await opts.taps!.remove(tap).catch(() => {})
      throw err
    }
  }

  #touch(key: string): void {
    const slots = this.#ready.get(key)
    if (!slots) return
    this.#ready.delete(key)
    this.#ready.set(key, slots)
  }

  async #evict(): Promise<void> {
    while (this.#ready.size > this.#o.maxShapes) await this.drop(this.#ready.keys().next().value as string)
  }

  async #end(slot: Slot): Promise<void> {
    await slot.vm.discard().catch((err) => this.#logger.warn('ending a warm VMM failed', { error: errorMessage(err) }))
    await this.#removeSlotFiles(slot.id)
    if (slot.tap) await slot.removeTap?.(slot.tap).catch((err) => this.#logger.warn('removing a warm VMM\'s spare TAP failed; the next open removes it', { error: errorMessage(err) }))
    delete slot.tap
  }

  async #removeSlotFiles(id: string): Promise<void> {
    await rm(join(this.#o.dir, id), { recursive: true, force: true })
    await rm(join(this.#o.runDir, id), { recursive: true, force: true })
    await rm(join(this.#o.ramDir, id), { force: true })
  }
}
