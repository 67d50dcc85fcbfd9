/**
 * The host programs the project runs, and the package that brings each on the distributions we
 * know. One table for two readers: a command that cannot be started because it is not installed
 * fails with `tool_missing` naming the package (never a bare `spawn ENOENT`), and `doctor` checks
 * the same list before anything runs.
 */
import { accessSync, constants, existsSync, statSync } from 'node:fs'
import { delimiter, isAbsolute, join } from 'node:path'
import { HypemanError } from './errors.js'

export interface HostTool {
  /** What it is used for, in a few words. */
  for: string
  debian: string
  fedora?: string
  alpine?: string
}

export const HOST_TOOLS: Readonly<Record<string, HostTool>> = {
  'qemu-system-x86_64': { for: 'running VMs', debian: 'qemu-system-x86', fedora: 'qemu-system-x86-core', alpine: 'qemu-system-x86_64' },
  'mkfs.ext4': { for: 'image and overlay disks', debian: 'e2fsprogs', fedora: 'e2fsprogs', alpine: 'e2fsprogs' },
  'mkfs.erofs': { for: 'erofs image disks', debian: 'erofs-utils', fedora: 'erofs-utils', alpine: 'erofs-utils' },
  busybox: { for: 'the guest initrd (static)', debian: 'busybox-static', fedora: 'busybox', alpine: 'busybox-static' },
  depmod: { for: 'the guest kernel modules', debian: 'kmod', fedora: 'kmod', alpine: 'kmod' },
  lz4: { for: 'unpacking the guest kernel', debian: 'lz4', fedora: 'lz4', alpine: 'lz4' },
  zstd: { for: 'zstd image layers', debian: 'zstd', fedora: 'zstd', alpine: 'zstd' },
  'apt-get': { for: "fetching Debian's cloud kernel", debian: 'apt' },
  'apt-cache': { for: "finding Debian's cloud kernel", debian: 'apt' },
  'dpkg-deb': { for: "unpacking Debian's cloud kernel", debian: 'dpkg' },
  ip: { for: 'host networking', debian: 'iproute2', fedora: 'iproute', alpine: 'iproute2' },
  tc: { for: 'bandwidth shaping', debian: 'iproute2', fedora: 'iproute-tc', alpine: 'iproute2' },
  nft: { for: 'egress enforcement', debian: 'nftables', fedora: 'nftables', alpine: 'nftables' },
  sysctl: { for: 'IP forwarding', debian: 'procps', fedora: 'procps-ng', alpine: 'procps' },
  nsenter: { for: 'VMs in a network namespace', debian: 'util-linux', fedora: 'util-linux', alpine: 'util-linux' },
  // GNU's: sparse copies (`--sparse`, `--reflink`; `conv=notrunc,sparse`), which busybox's lack.
  cp: { for: 'sparse copies of disks and guest RAM', debian: 'coreutils', fedora: 'coreutils', alpine: 'coreutils' },
  dd: { for: 'copying a clone\'s RAM in place', debian: 'coreutils', fedora: 'coreutils', alpine: 'coreutils' },
  make: { for: 'building the guest init from source', debian: 'make', fedora: 'make', alpine: 'make' },
  gcc: { for: 'building the guest init from source (static)', debian: 'gcc libc6-dev', fedora: 'gcc glibc-static', alpine: 'gcc musl-dev' },
}

/** "Debian/Ubuntu: apt-get install X; Fedora: dnf install Y; Alpine: apk add Z", for a tool in the table. */
export function installHint(tool: string): string | undefined {
  const t = HOST_TOOLS[tool]
  if (!t) return undefined
  const parts = [`Debian/Ubuntu: apt-get install ${t.debian}`]
  if (t.fedora) parts.push(`Fedora: dnf install ${t.fedora}`)
  if (t.alpine) parts.push(`Alpine: apk add ${t.alpine}`)
  return parts.join('; ')
}

/** A host program that is not installed (not on PATH). `field` names it. */
export class ToolMissingError extends HypemanError {
  constructor(tool: string, opts: { step?: string; cause?: unknown; alsoMissing?: string[] } = {}) {
    const { alsoMissing = [], ...rest } = opts
    const hint = installHint(tool)
    const also = alsoMissing.length ? `; also missing: ${alsoMissing.join(', ')} (npx hypeman-ts doctor lists what to install)` : ''
    super('tool_missing', `${tool} is not installed (not found on PATH)${hint ? `; ${hint}` : ''}${also}`, {
      field: tool,
      ...rest,
      ...(alsoMissing.length ? { details: { missing: [tool, ...alsoMissing] } } : {}),
    })
  }
}

/** Where `tool` is: an executable file on PATH (or the path itself, when absolute); undefined if none. */
export function findOnPath(tool: string, path: string = process.env.PATH ?? ''): string | undefined {
  const candidates = isAbsolute(tool) ? [tool] : path.split(delimiter).filter(Boolean).map((dir) => join(dir, tool))
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK)
      if (statSync(candidate).isFile()) return candidate
    } catch {
      // not here: the next PATH entry
    }
  }
  return undefined
}

/**
 * Fails at once, with `tool_missing` naming the first missing program (and listing the rest),
 * when any of `tools` is not on PATH: for checks before anything is created, with no process started.
 */
export function requireTools(tools: readonly string[], opts: { step?: string } = {}): void {
  const missing = tools.filter((t) => findOnPath(t) === undefined)
  if (missing.length) throw new ToolMissingError(missing[0]!, { ...opts, alsoMissing: missing.slice(1) })
}

/**
 * Whether a spawn error means the program is not on PATH. Node says ENOENT for a missing working
 * directory too, so that is ruled out when one was given.
 */
export function isNotInstalled(err: unknown, cwd?: string): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT' && (cwd === undefined || existsSync(cwd))
}
