/**
 * The one owner of "which VMs this manager drives". An entry per instance holds the current
 * handle: pause and resume hand back new handles over the same VMM, and they replace the handle
 * inside the entry, never the entry. The entry stops counting as live the moment its VMM's exit
 * is seen, whichever handle is current, and goes once the exit has been recorded, so the
 * bookkeeping can never outlive the VMM.
 */
import type { ExitInfo, LiveVm } from '@hypeman-ts/vmm-drivers'

interface Entry {
  vm: LiveVm
  ended: boolean
  /** Settles when the exit has been recorded (the `onExit` given to `watch`). */
  recorded: Promise<void>
}

export class LiveVms {
  readonly #entries = new Map<string, Entry>()

  /** Starts driving `vm` for instance `id`; `onExit` records its end (it must not throw). */
  watch(id: string, vm: LiveVm, onExit: (exit: ExitInfo) => Promise<void>): void {
    const entry: Entry = { vm, ended: false, recorded: Promise.resolve() }
    this.#entries.set(id, entry)
    entry.recorded = vm.exited.then(async (exit) => {
      entry.ended = true
      try {
        await onExit(exit)
      } finally {
        if (this.#entries.get(id) === entry) this.#entries.delete(id)
      }
    })
  }

  /** The handle of the instance's running VMM, if this manager drives one. */
  get(id: string): LiveVm | undefined {
    const entry = this.#entries.get(id)
    return entry && !entry.ended ? entry.vm : undefined
  }

  /** Takes the handle `pause()` or `resume()` returned: the same VMM in its new state. */
  update(id: string, vm: LiveVm): void {
    const entry = this.#entries.get(id)
    if (!entry || entry.vm.pid !== vm.pid) throw new Error(`internal: no live VM with pid ${vm.pid} for instance ${id}`)
    entry.vm = vm
  }

  /** Settles once the end of the instance's last watched VMM is recorded (at once if there is none). */
  async recorded(id: string): Promise<void> {
    await this.#entries.get(id)?.recorded
  }

  /** Stops driving the instance's VMM (delete, a failed create); returns the handle it had. */
  forget(id: string): LiveVm | undefined {
    const entry = this.#entries.get(id)
    this.#entries.delete(id)
    return entry && !entry.ended ? entry.vm : undefined
  }

  /** Forgets every VM and returns their handles (the VMMs keep running). */
  forgetAll(): LiveVm[] {
    const vms = [...this.#entries.values()].filter((e) => !e.ended).map((e) => e.vm)
    this.#entries.clear()
    return vms
  }

  get size(): number {
    return [...this.#entries.values()].filter((e) => !e.ended).length
  }
}
