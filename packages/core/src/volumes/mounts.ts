/**
 * The `volumes` create parameter, checked without looking at any volume: mount paths the guest
 * init can honour, overlay options that make sense. Which volumes exist and who holds them is the
 * manager's to check (manager.ts, `attach`).
 */
import { parseSize, ValidationError } from '@hypeman-ts/common'

/** One entry of the seed's `volumes` (VolumeMount, camelCase). */
export interface VolumeMount {
  volumeId: string
  mountPath: string
  readonly?: boolean
  overlay?: boolean
  overlaySize?: string
}

/** A checked VolumeMount; `volumeId` becomes the volume's id once create resolved a name. */
export interface VolumeMountSpec {
  volumeId: string
  mountPath: string
  readonly: boolean
  overlay: boolean
  overlaySize: string | null
  overlayBytes: number | null
}

/** Where init mounts its own things: a volume there would hide them or take their writes. */
const SYSTEM_TREES = ['/proc', '/sys', '/dev']
/** Files init bind-mounts over (guest/README.md, "Network"); their directories may not be covered either. */
const INIT_FILES = ['/etc/hosts', '/etc/hostname', '/etc/resolv.conf']
const MIB = 1024 * 1024
/**
 * Each volume attached at create is a virtio-blk PCI device (two with an overlay) on a bus of 32
 * slots that the VM's own devices share; the guest init reads at most 64. The same cap holds for
 * an instance's volumes however attached (instances/volumes.ts).
 */
export const MAX_VOLUME_MOUNTS = 16

function checkMountPath(path: unknown, field: string): string {
  if (typeof path !== 'string' || path === '') throw new ValidationError(field, 'is required')
  if (!path.startsWith('/')) throw new ValidationError(field, `"${path}" must be an absolute path`)
  if (path.length > 4096 || path.includes('\0')) throw new ValidationError(field, 'must be at most 4096 bytes without NUL')
  const parts = path.split('/').slice(1)
  // One spelling per path, so that "two volumes at one path" cannot hide behind `//` or `/./`.
  if (parts.some((p) => p === '' || p === '.' || p === '..')) {
    if (path === '/') throw new ValidationError(field, 'cannot be "/" (the root is the image)')
    throw new ValidationError(field, `"${path}" must be normalised (no "..", ".", empty components or trailing "/")`)
  }
  if (SYSTEM_TREES.some((t) => path === t || path.startsWith(`${t}/`))) throw new ValidationError(field, `"${path}" is a system path the guest init mounts itself`)
  if (INIT_FILES.some((f) => f === path || f.startsWith(`${path}/`))) throw new ValidationError(field, `"${path}" would cover ${INIT_FILES.join(', ')}, which the guest init manages`)
  return path
}

/** Names a field of the i-th mount in errors: `volumes[i].key` at create; attachVolume passes its own. */
export type MountField = (i: number, key: string) => string
const createField: MountField = (i, key) => `volumes[${i}]${key ? `.${key}` : ''}`

export function validateVolumeMounts(input: unknown, fieldOf: MountField = createField): VolumeMountSpec[] {
  if (input === undefined || input === null) return []
  if (!Array.isArray(input)) throw new ValidationError('volumes', 'must be an array')
  if (input.length > MAX_VOLUME_MOUNTS) throw new ValidationError('volumes', `at most ${MAX_VOLUME_MOUNTS} volumes, got ${input.length}`)
  const seenPaths = new Map<string, number>()
  const seenIds = new Map<string, number>()
  return input.map((m: unknown, i): VolumeMountSpec => {
    const f = (name: string) => fieldOf(i, name)
    if (!m || typeof m !== 'object' || Array.isArray(m)) throw new ValidationError(fieldOf(i, ''), 'must be an object')
    const v = m as Record<string, unknown>
    for (const key of Object.keys(v)) {
      if (!['volumeId', 'mountPath', 'readonly', 'overlay', 'overlaySize'].includes(key) && v[key] !== undefined) throw new ValidationError(f(key), 'is not a volume mount field')
    }
    if (typeof v.volumeId !== 'string' || v.volumeId === '') throw new ValidationError(f('volumeId'), 'is required')
    const mountPath = checkMountPath(v.mountPath, f('mountPath'))
    for (const [key, value] of [['readonly', v.readonly], ['overlay', v.overlay]] as const) {
      if (value !== undefined && value !== null && typeof value !== 'boolean') throw new ValidationError(f(key), 'must be true or false')
    }
    const readonly = v.readonly === true
    const overlay = v.overlay === true
    if (overlay && !readonly) throw new ValidationError(f('overlay'), 'needs readonly: true (the overlay takes the writes, the volume stays read-only)')
    let overlayBytes: number | null = null
    if (overlay) {
      if (v.overlaySize === undefined || v.overlaySize === null) throw new ValidationError(f('overlaySize'), 'is required with overlay: true')
      overlayBytes = parseSize(v.overlaySize, f('overlaySize'), { min: 16 * MIB, max: 16 * 1024 ** 4 })
    } else if (v.overlaySize !== undefined && v.overlaySize !== null) {
      throw new ValidationError(f('overlaySize'), 'only applies with overlay: true')
    }
    if (seenPaths.has(mountPath)) throw new ValidationError(f('mountPath'), `"${mountPath}" is also the mount path of volumes[${seenPaths.get(mountPath)}]`)
    seenPaths.set(mountPath, i)
    if (seenIds.has(v.volumeId)) throw new ValidationError(f('volumeId'), `volume "${v.volumeId}" is also volumes[${seenIds.get(v.volumeId)}]`)
    seenIds.set(v.volumeId, i)
    return { volumeId: v.volumeId, mountPath, readonly, overlay, overlaySize: overlay ? (v.overlaySize as string) : null, overlayBytes }
  })
}
