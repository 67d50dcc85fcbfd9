/**
 * What `Hypeman.open` checks before it creates anything, each failure a typed error naming the
 * thing and what to do (the same facts `doctor` reports, without starting a process):
 * - the programs this configuration runs are on PATH (the drivers' VMM binaries, mkfs.ext4, and
 *   the networking tools unless `network: false`);
 * - a kernel of the user's own is a kernel image (ELF vmlinux or bzImage), checked by its header;
 * - the data and cache directories are writable and were not laid out by a newer, incompatible
 *   version (a marker file in each records the layout; one without a marker is this layout).
 */
import { mkdir, open, readFile, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { CodedError, errorMessage, requireTools } from '@hypeman-ts/common'
import type { VmmDriver } from '@hypeman-ts/vmm-drivers'
import { isElf } from './assets/kernel-image.js'
import { AssetError } from './assets/errors.js'

/** What host networking runs: the same list doctor checks. */
export const NETWORK_TOOLS = ['ip', 'tc', 'nft', 'sysctl', 'nsenter'] as const

/** Every disk (image, overlay, config) is made with it. */
const DISK_TOOLS = ['mkfs.ext4'] as const

export type PreflightErrorCode =
  | 'dir_not_writable' // the data or cache directory cannot be created or written
  | 'incompatible_layout' // the directory was laid out by a version this one cannot read

export class PreflightError extends CodedError<PreflightErrorCode>() {}

/**
 * The layout of the data and cache directories this version reads and writes. Raise it when a
 * change makes what an older version wrote unreadable (and teach open to migrate, or refuse).
 */
export const LAYOUT_VERSION = 1
const LAYOUT_FILE = 'hypeman-ts.layout.json'

interface LayoutMarker {
  layout: number
  writtenBy: string
}

/** "@hypeman-ts/core 0.1.0": what the layout markers say wrote them. */
export const WRITTEN_BY = `@hypeman-ts/core ${(createRequire(import.meta.url)('../package.json') as { version: string }).version}`

export function requiredPrograms(drivers: readonly VmmDriver[], network: boolean): string[] {
  const programs = new Set<string>([...drivers.flatMap((d) => d.programs ?? []), ...DISK_TOOLS])
  if (network) for (const t of NETWORK_TOOLS) programs.add(t)
  return [...programs]
}

export function checkPrograms(drivers: readonly VmmDriver[], network: boolean): void {
  requireTools(requiredPrograms(drivers, network), { step: 'open' })
}

/** That `path` looks like a kernel: the full check (PVH note, unpacking) runs when it is imported. */
export async function checkKernelImage(path: string): Promise<void> {
  let head: Buffer
  try {
    const fh = await open(path, 'r')
    try {
      head = Buffer.alloc(0x210)
      head = head.subarray(0, (await fh.read(head, 0, head.length, 0)).bytesRead)
    } finally {
      await fh.close()
    }
  } catch (err) {
    throw new AssetError('invalid_kernel', `kernel.image ${path} cannot be read: ${errorMessage(err)}`, { field: 'kernel.image', cause: err })
  }
  const bzImage = head.length >= 0x206 && head.toString('latin1', 0x202, 0x206) === 'HdrS'
  if (!isElf(head) && !bzImage) {
    throw new AssetError('invalid_kernel', `kernel.image ${path} is not a kernel image (neither an ELF vmlinux nor a bzImage): pass the vmlinux or vmlinuz of a Linux build`, { field: 'kernel.image' })
  }
}

/**
 * Creates `dir` if needed, proves it writable, and checks (or writes) its layout marker.
 * `field` names the option the directory came from.
 */
export async function claimDirectory(dir: string, field: 'dataDir' | 'cacheDir', writtenBy: string): Promise<void> {
  const marker = join(dir, LAYOUT_FILE)
  let existing: LayoutMarker | undefined
  try {
    existing = JSON.parse(await readFile(marker, 'utf8')) as LayoutMarker
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') existing = undefined
    else if (err instanceof SyntaxError) existing = { layout: Number.NaN, writtenBy: 'something unreadable' }
    else throw notWritable(dir, field, err)
  }
  if (existing && existing.layout !== LAYOUT_VERSION) {
    const newer = Number.isInteger(existing.layout) && existing.layout > LAYOUT_VERSION
    throw new PreflightError(
      'incompatible_layout',
      `${field} ${dir} was laid out by ${existing.writtenBy} (layout ${existing.layout}); this version reads layout ${LAYOUT_VERSION}: ${newer ? 'upgrade @hypeman-ts/core to that version or newer' : 'remove it'}, or point ${field} at another directory`,
      { field, details: { layout: existing.layout, writtenBy: existing.writtenBy, expected: LAYOUT_VERSION } },
    )
  }
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 })
    // Writing the marker every open is the writability probe too.
    await writeFile(marker, `${JSON.stringify({ layout: LAYOUT_VERSION, writtenBy } satisfies LayoutMarker)}\n`)
  } catch (err) {
    throw notWritable(dir, field, err)
  }
}

function notWritable(dir: string, field: string, err: unknown): PreflightError {
  return new PreflightError('dir_not_writable', `${field} ${dir} cannot be created or written (${errorMessage(err)}): run as root, or set ${field} to a directory this user owns`, { field, cause: err })
}
