/**
 * vGPUs as mediated devices: a parent device (under `class/mdev_bus/`) offers mdev types in
 * `mdev_supported_types/<type>/` with a user-facing `name`, an `available_instances` count and a
 * `create` file; writing a UUID to `create` makes `bus/mdev/devices/<uuid>`, which VFIO hands to
 * a VM by that path; writing 1 to its `remove` ends it.
 */
import { randomUUID } from 'node:crypto'
import { DeviceError } from '../errors.js'
import type { Sysfs } from './sysfs.js'

/** One mdev type on one parent. */
export interface MdevType {
  parent: string
  type: string
  /** The type's `name` file, e.g. "NVIDIA L40S-1Q". */
  name: string
  available: number
  /** From the type's `description` (`framebuffer=1024M`), when it says. */
  framebufferMb?: number
}

/** A vGPU profile across the host's parents (the spec's GPUProfile, camelCase). */
export interface GpuProfile {
  name: string
  framebufferMb: number
  available: number
}

/** The mdev an instance holds. */
export interface MdevRecord {
  profile: string
  uuid: string
  parent: string
  type: string
}

export const mdevDir = (uuid: string) => `bus/mdev/devices/${uuid}`

const mdevFailed = (field?: string) => (message: string, cause: unknown) => new DeviceError('mdev_failed', message, { cause, ...(field ? { field } : {}) })

export async function listMdevTypes(sysfs: Sysfs): Promise<MdevType[]> {
  const out: MdevType[] = []
  for (const parent of await sysfs.list('class/mdev_bus')) {
    const base = `class/mdev_bus/${parent}/mdev_supported_types`
    for (const type of await sysfs.list(base)) {
      const name = await sysfs.read(`${base}/${type}/name`)
      if (!name) continue
      const available = Number(await sysfs.read(`${base}/${type}/available_instances`))
      const fb = /framebuffer=(\d+)M/.exec((await sysfs.read(`${base}/${type}/description`)) ?? '')
      out.push({ parent, type, name, available: Number.isSafeInteger(available) ? available : 0, ...(fb ? { framebufferMb: Number(fb[1]) } : {}) })
    }
  }
  return out
}

/**
 * A type answers to a profile by its exact name, or by its last word: NVIDIA's names carry the
 * vendor ("NVIDIA L40S-1Q"), hypeman's profiles do not ("L40S-1Q").
 */
export function profileOf(t: MdevType): string {
  return t.name.split(/\s+/).at(-1)!
}

const matches = (t: MdevType, profile: string) => t.name === profile || profileOf(t) === profile

export async function gpuProfiles(sysfs: Sysfs): Promise<GpuProfile[]> {
  const byName = new Map<string, GpuProfile>()
  for (const t of await listMdevTypes(sysfs)) {
    const name = profileOf(t)
    const p = byName.get(name) ?? { name, framebufferMb: t.framebufferMb ?? 0, available: 0 }
    p.available += t.available
    byName.set(name, p)
  }
  return [...byName.values()].sort((a, b) => a.name.localeCompare(b.name))
}

/** The first parent that can make one more of `profile`; the error names `gpu.profile`. */
export async function pickMdevType(sysfs: Sysfs, profile: string): Promise<MdevType> {
  const types = (await listMdevTypes(sysfs)).filter((t) => matches(t, profile))
  if (types.length === 0) {
    const known = (await gpuProfiles(sysfs)).map((p) => p.name)
    const hint = known.length ? `profiles on this host: ${known.join(', ')}` : 'this host offers no vGPU (no device under /sys/class/mdev_bus)'
    throw new DeviceError('gpu_profile_not_found', `no vGPU profile "${profile}" (${hint})`, { field: 'gpu.profile' })
  }
  const free = types.find((t) => t.available > 0)
  if (!free) throw new DeviceError('gpu_profile_exhausted', `no parent device can create another "${profile}" vGPU (all in use)`, { field: 'gpu.profile' })
  return free
}

/** Parents with at least one mdev (the kernel lists each type's mdevs in its `devices/`). */
export async function mdevParentsInUse(sysfs: Sysfs): Promise<Set<string>> {
  const used = new Set<string>()
  for (const parent of await sysfs.list('class/mdev_bus')) {
    const base = `class/mdev_bus/${parent}/mdev_supported_types`
    for (const type of await sysfs.list(base)) if ((await sysfs.list(`${base}/${type}/devices`)).length) used.add(parent)
  }
  return used
}

/** A fresh UUID for an mdev; chosen before `createMdev` so the caller can record it first. */
export const newMdevUuid = (): string => randomUUID()

export async function createMdev(sysfs: Sysfs, t: MdevType, uuid: string): Promise<void> {
  await sysfs.write(`class/mdev_bus/${t.parent}/mdev_supported_types/${t.type}/create`, uuid, mdevFailed('gpu.profile'))
  if (!(await sysfs.exists(mdevDir(uuid)))) throw new DeviceError('mdev_failed', `the kernel made no mdev ${uuid} on ${t.parent} (type ${t.type})`, { field: 'gpu.profile' })
}

/** Removes the mdev if it exists. Idempotent. */
export async function removeMdev(sysfs: Sysfs, uuid: string): Promise<void> {
  if (!(await sysfs.exists(mdevDir(uuid)))) return
  await sysfs.write(`${mdevDir(uuid)}/remove`, '1', mdevFailed())
  if (await sysfs.exists(mdevDir(uuid))) throw new DeviceError('mdev_failed', `mdev ${uuid} is still there after its remove`)
}
