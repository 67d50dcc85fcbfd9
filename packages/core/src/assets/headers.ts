/**
 * The guest kernel's headers, so DKMS and `make -C /lib/modules/$(uname -r)/build M=…` work in
 * the guest: one read-only ext4 disk per kernel, made once and shared by every instance that asks
 * for headers (`skipKernelHeaders: false`), attached with serial `hm-headers`:
 *
 *   <cacheDir>/kernel/<version>/headers.ext4
 *   <cacheDir>/kernel/<version>/headers.json     (what it was made from)
 *
 * The disk's root mirrors /usr of a Debian system with the headers installed, so the packages'
 * relative symlinks (`src/linux-headers-*\/scripts -> ../../lib/linux-kbuild-*\/scripts`) resolve
 * inside it wherever it is mounted:
 *
 *   src/linux-headers-<version>/                 the build dir (.config, Module.symvers, generated headers)
 *   src/linux-headers-<base>-common/             Debian: the tree the flavour's Makefile includes
 *   lib/linux-kbuild-<x.y>/                      Debian: kbuild's scripts and tools
 *   lib/modules/<version>/build  -> ../../../src/linux-headers-<version>
 *   lib/modules/<version>/source -> ../../../src/linux-headers-<base>-common   (Debian)
 *
 * Debian's kernel: `linux-headers-<version>` at the kernel's package version and the two packages
 * it depends on for the files (`linux-headers-<base>-common`, `linux-kbuild-<x.y>`), through apt
 * like the kernel itself. A kernel of your own: `kernel.headers`, its build tree.
 */
import { cp, mkdir, readlink, rename, rm, stat, symlink } from 'node:fs/promises'
import { dirname, join, relative } from 'node:path'
import { errorMessage, NotSupportedError, pathExists, readJsonIfExists, run, silentLogger, throwIfAborted, withFileLock, writeJsonAtomic, type Logger } from '@hypeman-ts/common'
import { buildDisk } from '../images/disk.js'
import { AssetError } from './errors.js'
import { aptDownloadAndUnpack, kernelStagingDir, type KernelSource } from './kernel.js'

export const HEADERS_DISK = 'headers.ext4'
export const HEADERS_SOURCE = 'headers.json'

export type HeadersSource = { kind: 'debian'; package: string; packageVersion: string | null; packages: string[] } | { kind: 'user'; path: string }

export interface KernelHeadersDisk {
  path: string
  bytes: number
  source: HeadersSource
}

export interface EnsureKernelHeadersOptions {
  cacheDir: string
  /** The kernel the headers are for (ensureKernel's answer). */
  kernel: { version: string; dir: string }
  /** A build tree of the kernel (the user's `kernel.headers`); without it, Debian's packages. */
  headers?: string
  logger?: Logger
  signal?: AbortSignal
}

/**
 * The packages `linux-headers-<version>` needs for its files, from its `apt-cache show`:
 * `linux-headers-*-common` and `linux-kbuild-*`, pinned when the dependency is `(= v)`. The
 * compiler dependency is left out: the disk holds headers, the image brings its compiler. Pure.
 */
export function parseHeadersDepends(aptShow: string): string[] {
  const line = aptShow.split('\n').find((l) => l.startsWith('Depends:'))
  if (!line) return []
  const out: string[] = []
  for (const alt of line.slice('Depends:'.length).split(',')) {
    const m = /^\s*(linux-headers-[A-Za-z0-9.+-]+-common|linux-kbuild-[A-Za-z0-9.+-]+)(?:\s*\((=|>=)\s*([^)\s]+)\))?\s*$/.exec(alt.split('|')[0]!)
    if (m && m[1]) out.push(m[2] === '=' && m[3] ? `${m[1]}=${m[3]}` : m[1])
  }
  return out
}

function sameSource(a: HeadersSource | undefined, b: HeadersSource): boolean {
  if (!a || a.kind !== b.kind) return false
  if (a.kind === 'user' && b.kind === 'user') return a.path === b.path
  return a.kind === 'debian' && b.kind === 'debian' && a.package === b.package && a.packageVersion === b.packageVersion
}

/** The cached disk, if it exists and was made from `source`. */
export async function cachedKernelHeaders(kernelDir: string, source: HeadersSource): Promise<KernelHeadersDisk | undefined> {
  const recorded = await readJsonIfExists<HeadersSource>(join(kernelDir, HEADERS_SOURCE)).catch(() => undefined)
  if (!sameSource(recorded, source)) return undefined
  const path = join(kernelDir, HEADERS_DISK)
  const st = await stat(path).catch(() => undefined)
  return st?.isFile() ? { path, bytes: st.size, source: recorded! } : undefined
}

/** Replaces `dir/name` with a symlink to `target`, relative, so it resolves inside the disk. */
async function relativeLink(dir: string, name: string, target: string): Promise<void> {
  await rm(join(dir, name), { force: true, recursive: true })
  await symlink(relative(dir, target), join(dir, name))
}

/**
 * Lays out the unpacked Debian headers packages (`tree`, as `dpkg-deb -x` left them) as the disk
 * root `out`: their /usr, and the `build`/`source` links of lib/modules/<version>, which the
 * packages make absolute (/usr/src/…), made relative.
 */
export async function assembleDebianHeaders(tree: string, out: string, version: string): Promise<void> {
  // Packages of a merged-/usr release put lib/modules under usr/; older ones under /lib.
  const linkDirs = [join(tree, 'lib', 'modules', version), join(tree, 'usr', 'lib', 'modules', version)]
  const targets = new Map<string, string>()
  for (const d of linkDirs) {
    for (const name of ['build', 'source']) {
      const t = await readlink(join(d, name)).catch(() => undefined)
      if (t) targets.set(name, t)
    }
  }
  await mkdir(out, { recursive: true })
  for (const part of ['src', 'lib']) {
    if (await pathExists(join(tree, 'usr', part))) await rename(join(tree, 'usr', part), join(out, part))
  }
  const modDir = join(out, 'lib', 'modules', version)
  await mkdir(modDir, { recursive: true })
  targets.set('build', targets.get('build') ?? `/usr/src/linux-headers-${version}`)
  for (const [name, target] of targets) {
    if (!target.startsWith('/usr/')) throw new AssetError('invalid_kernel_headers', `lib/modules/${version}/${name} points to ${target}, outside /usr`)
    await relativeLink(modDir, name, join(out, target.slice('/usr/'.length)))
  }
  if (!(await pathExists(join(modDir, 'build', 'Makefile')))) {
    throw new AssetError('invalid_kernel_headers', `the headers packages of ${version} have no build tree (${targets.get('build')}/Makefile)`)
  }
}

/** Lays out a kernel build tree of the user's as the disk root `out` (copied as it is, links verbatim). */
export async function assembleUserHeaders(buildTree: string, out: string, version: string): Promise<void> {
  if (!(await pathExists(join(buildTree, 'Makefile')))) {
    throw new AssetError('invalid_kernel_headers', `${buildTree} is not a kernel build tree (it has no Makefile)`, { field: 'kernel.headers' })
  }
  const dest = join(out, 'src', `linux-headers-${version}`)
  await mkdir(dirname(dest), { recursive: true })
  await cp(buildTree, dest, { recursive: true, verbatimSymlinks: true })
  const modDir = join(out, 'lib', 'modules', version)
  await mkdir(modDir, { recursive: true })
  await relativeLink(modDir, 'build', dest)
}

async function debianSource(kernel: { version: string; dir: string }, signal?: AbortSignal): Promise<HeadersSource> {
  const k = await readJsonIfExists<KernelSource>(join(kernel.dir, 'source.json')).catch(() => undefined)
  if (k?.kind !== 'debian') {
    throw new NotSupportedError(
      `skipKernelHeaders: the guest kernel ${kernel.version} is not Debian's, and no headers were given for it: ` +
        'set skipKernelHeaders to true, or give the kernel build tree as kernel.headers when opening the manager',
      { field: 'skipKernelHeaders' },
    )
  }
  throwIfAborted(signal, 'kernel_headers')
  return { kind: 'debian', package: `linux-headers-${kernel.version}`, packageVersion: k.packageVersion ?? null, packages: [] }
}

async function buildHeadersDisk(opts: EnsureKernelHeadersOptions, source: HeadersSource, logger: Logger): Promise<KernelHeadersDisk> {
  const { cacheDir, kernel, signal } = opts
  const staging = await kernelStagingDir(cacheDir, `headers-${kernel.version}`)
  try {
    const root = join(staging, 'root')
    if (source.kind === 'debian') {
      const spec = source.packageVersion ? `${source.package}=${source.packageVersion}` : source.package
      let deps: string[]
      try {
        deps = parseHeadersDepends((await run('apt-cache', ['show', '--no-all-versions', spec], { signal, step: 'kernel_headers' })).stdout)
      } catch (err) {
        throw new AssetError('kernel_headers_download_failed', `apt-cache show ${spec} failed (run apt-get update?): ${errorMessage(err)}`, { cause: err })
      }
      source.packages = [spec, ...deps]
      logger.info('downloading guest kernel headers', { packages: source.packages })
      const work = join(staging, 'debs')
      await mkdir(work)
      await aptDownloadAndUnpack(source.packages, work, join(staging, 'tree'), 'kernel_headers_download_failed', signal)
      await assembleDebianHeaders(join(staging, 'tree'), root, kernel.version)
    } else {
      await assembleUserHeaders(source.path, root, kernel.version)
    }
    const disk = join(staging, HEADERS_DISK)
    let bytes: number
    try {
      bytes = await buildDisk('ext4', root, disk, { label: 'hm-headers', ...(signal ? { signal } : {}) })
    } catch (err) {
      throw new AssetError('invalid_kernel_headers', `making the headers disk failed: ${errorMessage(err)}`, { cause: err })
    }
    // Record removed first: a crash between the two leaves a disk that is rebuilt, never one taken for another source's.
    await rm(join(kernel.dir, HEADERS_SOURCE), { force: true })
    await rename(disk, join(kernel.dir, HEADERS_DISK))
    await writeJsonAtomic(join(kernel.dir, HEADERS_SOURCE), source)
    logger.info('built guest kernel headers disk', { path: join(kernel.dir, HEADERS_DISK), bytes })
    return { path: join(kernel.dir, HEADERS_DISK), bytes, source }
  } finally {
    await rm(staging, { recursive: true, force: true })
  }
}

/**
 * Makes sure the headers disk of `kernel` is in the cache and says where. Idempotent; safe across
 * processes (a file lock per kernel, then a second look). A user kernel without `headers` is
 * refused with `not_supported` naming `skipKernelHeaders`.
 */
export async function ensureKernelHeaders(opts: EnsureKernelHeadersOptions): Promise<KernelHeadersDisk> {
  const logger = opts.logger ?? silentLogger
  const { kernel, signal } = opts
  let source: HeadersSource
  if (opts.headers !== undefined) {
    if (!(await stat(opts.headers).then((s) => s.isDirectory(), () => false))) {
      throw new AssetError('invalid_kernel_headers', `${opts.headers} is not a directory (kernel.headers: the kernel's build tree)`, { field: 'kernel.headers' })
    }
    source = { kind: 'user', path: opts.headers }
  } else {
    source = await debianSource(kernel, signal)
  }
  const cached = await cachedKernelHeaders(kernel.dir, source)
  if (cached) return cached
  // The headers build can outlast the default lock wait (a download and a 90 MB mkfs on a busy host).
  return withFileLock(join(opts.cacheDir, 'kernel', `.${kernel.version}.headers.lock`), async () => (await cachedKernelHeaders(kernel.dir, source)) ?? buildHeadersDisk(opts, source, logger), {
    timeoutMs: 10 * 60_000,
  })
}
