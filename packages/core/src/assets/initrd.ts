/**
 * The initrd: a cpio "newc" archive, uncompressed (measured: no slower to boot under TCG than
 * gzip/lz4/zstd, and the guest spends no CPU unpacking it), holding
 *
 *   /init                      the guest init (packages/core/guest)
 *   /bin/busybox, /bin/sh      busybox-static, for the rescue shell (`hypeman.rescue` on the cmdline)
 *   /lib/modules/*.ko          only the modules the guest needs (GUEST_MODULES + their dependencies)
 *   /etc/hypeman/modules       "phase path" lines in load order, decided here from modules.dep
 *   /dev/console, /proc, /sys, /dev, /mnt, /newroot
 *
 * Its file name carries the hash of its bytes, and its bytes are a pure function of the inputs
 * (fixed mtimes, sorted entries), so a changed input gives a new file and an unchanged one reuses
 * the old: <cacheDir>/kernel/<version>/initrd-<hash>.cpio.
 */
import { createHash } from 'node:crypto'
import { access, readFile } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { Readable } from 'node:stream'
import { commandStream, errorMessage, silentLogger, writeFileAtomic, type Logger } from '@hypeman-ts/common'
import { encodeCpio, type CpioEntry } from './cpio.js'
import { AssetError } from './errors.js'
import type { KernelAssets } from './kernel.js'
import { GUEST_MODULES, parseModulesBuiltin, parseModulesDep, planModuleLoad, type GuestModule, type ModulePlan } from './modules.js'

export const DEFAULT_BUSYBOX = '/bin/busybox'
/** Where the init reads its module list (guest/src/boot.h MODULES_LIST). */
export const MODULES_LIST_PATH = 'etc/hypeman/modules'

export interface InitrdOptions {
  cacheDir: string
  kernel: KernelAssets
  /** The guest init binary (ensureGuestInit). */
  initPath: string
  /** A static busybox. Default /bin/busybox (Debian's busybox-static). */
  busyboxPath?: string
  modules?: readonly GuestModule[]
  logger?: Logger
  signal?: AbortSignal
}

export interface InitrdAssets {
  path: string
  hash: string
  modules: ModulePlan
}

async function readModule(path: string, signal?: AbortSignal): Promise<Buffer> {
  const tool = path.endsWith('.xz') ? ['xz', '-dc'] : path.endsWith('.zst') ? ['zstd', '-dcq'] : path.endsWith('.gz') ? ['gzip', '-dc'] : undefined
  const raw = await readFile(path)
  if (!tool) return raw
  // The guest loads plain .ko files: decompressing here spares it the work and the kernel option.
  const stream = commandStream(tool[0]!, tool.slice(1), { signal, step: 'decompress_module' })
  const chunks: Buffer[] = []
  const done = (async () => {
    for await (const c of stream) chunks.push(c as Buffer)
  })()
  Readable.from([raw]).pipe(stream)
  await done
  return Buffer.concat(chunks)
}

/** The archive entries (pure apart from the file contents handed in). */
export function initrdEntries(parts: { init: Buffer; busybox: Buffer; modules: { name: string; data: Buffer }[]; moduleList: string }): CpioEntry[] {
  const entries: CpioEntry[] = [
    ...['bin', 'dev', 'etc', 'etc/hypeman', 'lib', 'lib/modules', 'mnt', 'newroot', 'proc', 'sys'].map((path) => ({ type: 'dir' as const, path })),
    { type: 'chardev', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
    { type: 'file', path: 'init', data: parts.init, mode: 0o755 },
    { type: 'file', path: 'bin/busybox', data: parts.busybox, mode: 0o755 },
    { type: 'symlink', path: 'bin/sh', target: 'busybox' },
    { type: 'file', path: MODULES_LIST_PATH, data: Buffer.from(parts.moduleList), mode: 0o644 },
  ]
  for (const m of parts.modules) entries.push({ type: 'file', path: `lib/modules/${m.name}`, data: m.data, mode: 0o644 })
  return entries
}

/** initrd file name of a module: its basename with .ko (decompressed), or a flattened path on a clash. */
function initrdModuleNames(paths: string[]): Map<string, string> {
  const names = new Map<string, string>()
  const taken = new Set<string>()
  for (const p of paths) {
    let name = basename(p).replace(/\.ko\.(xz|zst|gz)$/, '.ko')
    if (taken.has(name)) name = p.replace(/\.ko\.(xz|zst|gz)$/, '.ko').replaceAll('/', '__')
    taken.add(name)
    names.set(p, name)
  }
  return names
}

export async function ensureInitrd(opts: InitrdOptions): Promise<InitrdAssets> {
  const logger = opts.logger ?? silentLogger
  const busyboxPath = opts.busyboxPath ?? DEFAULT_BUSYBOX
  let plan: ModulePlan = { load: [], builtin: [], missing: [] }
  if (opts.kernel.modulesDir) {
    const dep = parseModulesDep(await readFile(join(opts.kernel.modulesDir, 'modules.dep'), 'utf8'))
    const builtin = parseModulesBuiltin(await readFile(join(opts.kernel.modulesDir, 'modules.builtin'), 'utf8').catch(() => ''))
    plan = planModuleLoad(dep, builtin, opts.modules ?? GUEST_MODULES)
    for (const m of plan.missing) logger.warn('optional guest kernel module not available', { module: m.name, why: m.why })
  } else {
    logger.warn('guest kernel has no modules directory: assuming virtio, virtio_console and overlay are built in', { kernel: opts.kernel.version })
  }

  const unique = [...new Set(plan.load.map((m) => m.path))]
  const names = initrdModuleNames(unique)
  let init: Buffer, busybox: Buffer
  try {
    init = await readFile(opts.initPath)
  } catch (err) {
    throw new AssetError('initrd_build_failed', `cannot read the guest init ${opts.initPath}: ${errorMessage(err)}`, { field: 'guestInit', cause: err })
  }
  try {
    busybox = await readFile(busyboxPath)
  } catch (err) {
    throw new AssetError('initrd_build_failed', `cannot read busybox at ${busyboxPath} (install busybox-static): ${errorMessage(err)}`, { field: 'busybox', cause: err })
  }
  const modules = await Promise.all(unique.map(async (p) => ({ name: names.get(p)!, data: await readModule(join(opts.kernel.modulesDir!, p), opts.signal) })))
  const moduleList = plan.load.map((m) => `${m.phase} /lib/modules/${names.get(m.path)}\n`).join('')
  const cpio = encodeCpio(initrdEntries({ init, busybox, modules, moduleList }))
  const hash = createHash('sha256').update(cpio).digest('hex').slice(0, 16)
  const path = join(opts.kernel.dir, `initrd-${hash}.cpio`)
  if (!(await access(path).then(() => true, () => false))) {
    await writeFileAtomic(path, cpio)
    logger.info('built guest initrd', { path, bytes: cpio.length, modules: unique.length })
  }
  return { path, hash, modules: plan }
}
