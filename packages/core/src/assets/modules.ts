/**
 * Which kernel modules the guest loads, and in which order. Pure functions over the text of
 * `modules.dep` and `modules.builtin`, so the order is decided (and tested) on the host; the guest
 * init only loads the list it is given.
 */
import { AssetError } from './errors.js'

/**
 * When the guest init loads a module: `boot` before anything else; `erofs` only for erofs image
 * disks; `net` only when the config has a network (before the program, which may use it at once);
 * `scsi` only when the VM has a SCSI controller (for hot-plugged volumes): before the volumes when
 * one is on it already, else by the agent at the first hot mount (a VM that never gets one never
 * loads it); `late` after the program started, off the boot's critical path.
 */
export type ModulePhase = 'boot' | 'erofs' | 'net' | 'scsi' | 'late'
export const MODULE_PHASES: readonly ModulePhase[] = ['boot', 'erofs', 'net', 'scsi', 'late']

export interface GuestModule {
  name: string
  phase: ModulePhase
  /** A required module that is missing fails the build; an optional one is skipped with a warning. */
  required: boolean
  why: string
}

/** What the guest needs from a Debian cloud kernel (ext4 and the rest are built in). */
export const GUEST_MODULES: readonly GuestModule[] = [
  { name: 'virtio_pci', phase: 'boot', required: true, why: 'virtio devices on the PCI bus (q35)' },
  { name: 'virtio_blk', phase: 'boot', required: true, why: 'image, overlay and config disks' },
  { name: 'virtio_console', phase: 'boot', required: true, why: 'named ports: agent, app log, status, control' },
  { name: 'overlay', phase: 'boot', required: true, why: 'writable overlay over the read-only image' },
  { name: 'erofs', phase: 'erofs', required: false, why: 'erofs image disks' },
  { name: 'virtio_scsi', phase: 'scsi', required: false, why: 'the SCSI controller of volumes attached while running' },
  { name: 'sd_mod', phase: 'scsi', required: false, why: 'SCSI disks (volumes attached while running)' },
  { name: 'virtio_net', phase: 'net', required: false, why: 'the NIC, when the instance has a network' },
  { name: 'vmw_vsock_virtio_transport', phase: 'late', required: false, why: 'agent over vsock on VMMs that offer it' },
  { name: 'button', phase: 'late', required: false, why: 'ACPI power button: graceful stop from the VMM' },
  { name: 'evdev', phase: 'late', required: false, why: 'reading the power button events' },
]

/** modules.dep: "kernel/x/y.ko: kernel/a.ko kernel/b.ko" → path → dependency paths. */
export function parseModulesDep(text: string): Map<string, string[]> {
  const deps = new Map<string, string[]>()
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (!line || line.startsWith('#')) continue
    const colon = line.indexOf(':')
    if (colon < 0) continue
    deps.set(line.slice(0, colon).trim(), line.slice(colon + 1).trim().split(/\s+/).filter(Boolean))
  }
  return deps
}

/** The module name of a path: basename without .ko and compression suffix, dashes as underscores. */
export function moduleName(path: string): string {
  const base = path.slice(path.lastIndexOf('/') + 1)
  return base.replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_')
}

/** Names of built-in modules, from modules.builtin (paths, one a line). */
export function parseModulesBuiltin(text: string): Set<string> {
  return new Set(text.split('\n').map((l) => l.trim()).filter(Boolean).map(moduleName))
}

export interface PlannedModule {
  /** Relative to the modules dir, as in modules.dep. */
  path: string
  phase: ModulePhase
}

export interface ModulePlan {
  /** Each module after all of its dependencies, phase by phase. */
  load: PlannedModule[]
  builtin: string[]
  missing: GuestModule[]
}

/**
 * The load order for `wanted`: phase by phase, a depth-first walk that puts every dependency
 * before its user. A module loaded at `boot` is not repeated; one placed in a conditional phase is
 * repeated where a later phase needs it too (a second load is a harmless EEXIST in the guest).
 * Built-in modules need no loading; missing required ones throw.
 */
export function planModuleLoad(dep: Map<string, string[]>, builtin: Set<string>, wanted: readonly GuestModule[] = GUEST_MODULES): ModulePlan {
  const byName = new Map<string, string>()
  for (const path of dep.keys()) byName.set(moduleName(path), path)
  const plan: ModulePlan = { load: [], builtin: [], missing: [] }
  const atBoot = new Set<string>()
  for (const phase of MODULE_PHASES) {
    const done = new Set(atBoot)
    const visiting = new Set<string>()
    const visit = (path: string, chain: string[]) => {
      if (done.has(path)) return
      if (visiting.has(path)) throw new AssetError('module_missing', `modules.dep has a dependency cycle: ${[...chain, path].join(' -> ')}`)
      visiting.add(path)
      for (const d of dep.get(path) ?? []) {
        if (!dep.has(d)) throw new AssetError('module_missing', `modules.dep: ${path} depends on ${d}, which it does not list`)
        visit(d, [...chain, path])
      }
      visiting.delete(path)
      done.add(path)
      if (phase === 'boot') atBoot.add(path)
      plan.load.push({ path, phase })
    }
    for (const m of wanted.filter((w) => w.phase === phase)) {
      const path = byName.get(m.name)
      if (path) visit(path, [])
      else if (builtin.has(m.name)) plan.builtin.push(m.name)
      else if (m.required) throw new AssetError('module_missing', `kernel module ${m.name} (${m.why}) is neither in modules.dep nor built in`, { field: 'kernel.modules' })
      else plan.missing.push(m)
    }
  }
  return plan
}
