/**
 * The guest kernel: Debian's current `linux-image-*-cloud-amd64`, found through apt, unpacked into
 * the cache as an ELF vmlinux (QEMU boots it directly through its PVH entry) plus its modules tree
 * with `depmod` output; or a kernel the user points to, imported into the same layout:
 *
 *   <cacheDir>/kernel/<version>/vmlinux
 *   <cacheDir>/kernel/<version>/modules/        (lib/modules/<version>, with modules.dep)
 *   <cacheDir>/kernel/<version>/source.json     (where it came from)
 *
 * A version directory appears complete or not at all (built aside, then renamed into place).
 */
import { randomBytes } from 'node:crypto'
import { chmod, cp, mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { errorMessage, run, silentLogger, throwIfAborted, withFileLock, writeJsonAtomic, type Logger } from '@hypeman-ts/common'
import { AssetError, type AssetErrorCode } from './errors.js'
import { hasPvhEntry, isElf, locateKernelPayload } from './kernel-image.js'

export const CLOUD_KERNEL_METAPACKAGE = 'linux-image-cloud-amd64'

export interface KernelAssets {
  version: string
  /** The directory of this version in the cache. */
  dir: string
  vmlinux: string
  /** The modules tree (with modules.dep), or undefined for a kernel imported without modules. */
  modulesDir: string | undefined
}

export interface KernelSource {
  kind: 'debian' | 'user'
  package?: string
  packageVersion?: string
  image?: string
  modules?: string
}

/** A kernel the user provides: a vmlinux (ELF) or a bzImage with an LZ4 payload, and its modules tree. */
export interface UserKernel {
  /** ELF vmlinux, or a bzImage (vmlinuz) to unpack. */
  image: string
  /** The lib/modules/<version> directory. Optional when everything the guest needs is built in. */
  modules?: string
  /** Default: the modules directory's name. Required without `modules`. */
  version?: string
  /**
   * The kernel's build tree (what /lib/modules/<version>/build points to on a machine that built
   * it), made into the guests' headers disk. Without it, creates must set skipKernelHeaders.
   */
  headers?: string
}

/** A kernel already in the cache, by version (and, for one of your own, its build tree). */
export interface CachedKernelRef {
  version: string
  headers?: string
}

export interface EnsureKernelOptions {
  cacheDir: string
  /** Unset: Debian's current cloud kernel via apt. `{ version }`: one already in the cache. */
  kernel?: UserKernel | CachedKernelRef
  logger?: Logger
  signal?: AbortSignal
}

const VERSION_RE = /^[A-Za-z0-9._+-]+$/

/** "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)" in `apt-cache show` output → package and version. Pure. */
export function parseCloudKernelDepends(aptShow: string): { package: string; version: string; packageVersion?: string } | undefined {
  const line = aptShow.split('\n').find((l) => l.startsWith('Depends:'))
  if (!line) return undefined
  for (const alt of line.slice('Depends:'.length).split(',')) {
    const m = /^\s*(linux-image-([A-Za-z0-9.+-]+-cloud-amd64))(?:\s*\(=\s*([^)\s]+)\))?\s*$/.exec(alt)
    if (m && m[1] && m[2]) {
      const out: { package: string; version: string; packageVersion?: string } = { package: m[1], version: m[2] }
      if (m[3]) out.packageVersion = m[3]
      return out
    }
  }
  return undefined
}

export function kernelDir(cacheDir: string, version: string): string {
  return join(cacheDir, 'kernel', version)
}

async function readHead(path: string, bytes: number): Promise<Buffer> {
  const fh = await open(path, 'r')
  try {
    const buf = Buffer.alloc(bytes)
    const { bytesRead } = await fh.read(buf, 0, bytes, 0)
    return buf.subarray(0, bytesRead)
  } finally {
    await fh.close()
  }
}

/** The cached version, if it is complete: an ELF vmlinux and (unless imported without) modules.dep. */
export async function cachedKernel(cacheDir: string, version: string): Promise<KernelAssets | undefined> {
  const dir = kernelDir(cacheDir, version)
  const vmlinux = join(dir, 'vmlinux')
  try {
    if (!isElf(await readHead(vmlinux, 4))) return undefined
  } catch {
    return undefined
  }
  const modulesDir = join(dir, 'modules')
  const hasModules = await stat(join(modulesDir, 'modules.dep')).then(() => true, () => false)
  if (!hasModules) {
    const source = await readFile(join(dir, 'source.json'), 'utf8').then((t) => JSON.parse(t) as KernelSource, () => undefined)
    // Only a user kernel imported without modules may lack them; anything else is half-made.
    if (!(source?.kind === 'user' && !source.modules)) return undefined
  }
  return { version, dir, vmlinux, modulesDir: hasModules ? modulesDir : undefined }
}

/** Complete cached versions, newest first (by directory mtime). */
export async function listCachedKernels(cacheDir: string): Promise<KernelAssets[]> {
  const names = await readdir(join(cacheDir, 'kernel')).catch(() => [] as string[])
  const found: { k: KernelAssets; mtime: number }[] = []
  for (const name of names) {
    if (name.startsWith('.') || !VERSION_RE.test(name)) continue
    const k = await cachedKernel(cacheDir, name)
    if (k) found.push({ k, mtime: (await stat(k.dir)).mtimeMs })
  }
  return found.sort((a, b) => b.mtime - a.mtime).map((f) => f.k)
}

/**
 * Unpacks a bzImage's vmlinux with the `lz4` CLI into `out`, checking the size the build recorded
 * and that the result is a PVH-bootable ELF.
 */
export async function extractVmlinux(bzImage: string, out: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
  const img = await readFile(bzImage)
  let payload
  try {
    payload = locateKernelPayload(img)
  } catch (err) {
    throw new AssetError('invalid_kernel', `${bzImage}: ${errorMessage(err)}`, { field: 'kernel.image', cause: err })
  }
  if (payload.compression !== 'lz4') {
    throw new AssetError('invalid_kernel', `${bzImage}: payload is ${payload.compression}-compressed; only LZ4 (Debian's choice) is supported`, { field: 'kernel.image' })
  }
  const packed = `${out}.lz4.${randomBytes(4).toString('hex')}`
  await writeFile(packed, img.subarray(payload.offset, payload.offset + payload.length))
  try {
    await run('lz4', ['-d', '-f', '-q', packed, out], { signal: opts.signal, step: 'extract_vmlinux' })
  } finally {
    await rm(packed, { force: true })
  }
  const size = (await stat(out)).size
  if (size !== payload.uncompressedSize) {
    throw new AssetError('invalid_kernel', `${bzImage}: unpacked ${size} bytes, the image says ${payload.uncompressedSize}`, { field: 'kernel.image' })
  }
  await checkVmlinux(out)
}

export async function checkVmlinux(path: string): Promise<void> {
  // The PVH note sits in the first few MB; reading the whole 50 MB file is not needed.
  const head = await readHead(path, 32 * 1024 * 1024)
  if (!isElf(head)) throw new AssetError('invalid_kernel', `${path} is not an ELF file`, { field: 'kernel.image' })
  if (!hasPvhEntry(head)) throw new AssetError('invalid_kernel', `${path} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): direct boot needs CONFIG_PVH`, { field: 'kernel.image' })
}

async function resolveDebianKernel(logger: Logger, signal?: AbortSignal): Promise<{ package: string; version: string; packageVersion?: string }> {
  const { stdout } = await run('apt-cache', ['show', '--no-all-versions', CLOUD_KERNEL_METAPACKAGE], { signal, step: 'resolve_kernel' })
  const dep = parseCloudKernelDepends(stdout)
  if (!dep) throw new AssetError('kernel_resolve_failed', `apt-cache show ${CLOUD_KERNEL_METAPACKAGE} names no linux-image-*-cloud-amd64 dependency`)
  logger.debug('resolved guest kernel', dep)
  return dep
}

const STALE_STAGING_MS = 60 * 60 * 1000

/** Staging dirs left by a process that died mid-build (old enough that nobody is still writing them). */
async function sweepStaging(root: string): Promise<void> {
  for (const name of await readdir(root).catch(() => [] as string[])) {
    if (!name.startsWith('.staging-')) continue
    const st = await stat(join(root, name)).catch(() => undefined)
    if (st && Date.now() - st.mtimeMs > STALE_STAGING_MS) await rm(join(root, name), { recursive: true, force: true })
  }
}

/**
 * A fresh staging dir under <cacheDir>/kernel, named so that a later sweep removes it if this
 * process dies before renaming what it built into place.
 */
export async function kernelStagingDir(cacheDir: string, label: string): Promise<string> {
  const root = join(cacheDir, 'kernel')
  await mkdir(root, { recursive: true })
  await sweepStaging(root)
  return mkdtemp(join(root, `.staging-${label}-`))
}

/** Builds a version directory aside, then renames it into place. */
async function publish(cacheDir: string, version: string, build: (staging: string) => Promise<void>): Promise<void> {
  const staging = await kernelStagingDir(cacheDir, version)
  try {
    await build(staging)
    await chmod(staging, 0o755)
    await rm(kernelDir(cacheDir, version), { recursive: true, force: true })
    await rename(staging, kernelDir(cacheDir, version))
  } finally {
    await rm(staging, { recursive: true, force: true })
  }
}

/**
 * `apt-get download` of each `package[=version]` into `work`, then `dpkg-deb -x` of them all into
 * `tree` (no maintainer scripts run: only the files).
 */
export async function aptDownloadAndUnpack(specs: string[], work: string, tree: string, code: AssetErrorCode, signal?: AbortSignal): Promise<void> {
  try {
    // As root apt wants to drop to _apt, which cannot write into our cache dir.
    await run('apt-get', ['download', '-q', '-o', 'APT::Sandbox::User=root', ...specs], { cwd: work, signal, step: code })
  } catch (err) {
    throw new AssetError(code, `apt-get download ${specs.join(' ')} failed (is the network up, and apt-get update done?): ${errorMessage(err)}`, { cause: err })
  }
  const debs = (await readdir(work)).filter((f) => f.endsWith('.deb'))
  if (debs.length !== specs.length) throw new AssetError(code, `apt-get download ${specs.join(' ')} left ${debs.length} .deb files`)
  for (const deb of debs) await run('dpkg-deb', ['-x', join(work, deb), tree], { signal, step: code })
}

async function downloadDebianKernel(cacheDir: string, dep: { package: string; version: string; packageVersion?: string }, logger: Logger, signal?: AbortSignal): Promise<void> {
  await publish(cacheDir, dep.version, async (staging) => {
    const work = join(staging, '.work')
    await mkdir(work)
    const spec = dep.packageVersion ? `${dep.package}=${dep.packageVersion}` : dep.package
    logger.info('downloading guest kernel', { package: spec })
    const tree = join(work, 'tree')
    await aptDownloadAndUnpack([spec], work, tree, 'kernel_download_failed', signal)
    await extractVmlinux(join(tree, 'boot', `vmlinuz-${dep.version}`), join(staging, 'vmlinux'), { signal })
    await run('depmod', ['-b', tree, dep.version], { signal, step: 'depmod' })
    await rename(join(tree, 'lib', 'modules', dep.version), join(staging, 'modules'))
    await rm(work, { recursive: true, force: true })
    await writeJsonAtomic(join(staging, 'source.json'), { kind: 'debian', package: dep.package, packageVersion: dep.packageVersion } satisfies KernelSource)
  })
}

async function importUserKernel(cacheDir: string, k: UserKernel, signal?: AbortSignal): Promise<string> {
  const version = k.version ?? (k.modules ? basename(k.modules.replace(/\/+$/, '')) : undefined)
  if (!version || !VERSION_RE.test(version)) {
    throw new AssetError('invalid_kernel', 'a kernel version is needed (kernel.version, or the name of the kernel.modules directory)', { field: 'kernel.version' })
  }
  const source: KernelSource = { kind: 'user', image: k.image, ...(k.modules ? { modules: k.modules } : {}) }
  const existing = await cachedKernel(cacheDir, version)
  const recorded = existing && (await readFile(join(existing.dir, 'source.json'), 'utf8').then((t) => JSON.parse(t) as KernelSource, () => undefined))
  if (existing && recorded?.kind === 'user' && recorded.image === k.image && recorded.modules === k.modules) return version
  await publish(cacheDir, version, async (staging) => {
    const head = await readHead(k.image, 4)
    if (isElf(head)) {
      await checkVmlinux(k.image)
      await cp(k.image, join(staging, 'vmlinux'))
    } else {
      await extractVmlinux(k.image, join(staging, 'vmlinux'), { signal })
    }
    if (k.modules) {
      // depmod -b wants <base>/lib/modules/<version>: copy into that shape, run it, move the tree up.
      const base = join(staging, '.depmod')
      const tree = join(base, 'lib', 'modules', version)
      await mkdir(join(base, 'lib', 'modules'), { recursive: true })
      await cp(k.modules, tree, { recursive: true, verbatimSymlinks: true })
      await rm(join(tree, 'build'), { force: true, recursive: true })
      await rm(join(tree, 'source'), { force: true, recursive: true })
      await run('depmod', ['-b', base, version], { signal, step: 'depmod' })
      await rename(tree, join(staging, 'modules'))
      await rm(base, { recursive: true, force: true })
    }
    await writeJsonAtomic(join(staging, 'source.json'), source)
  })
  return version
}

/** Makes sure the kernel is in the cache and says where. Idempotent; safe across processes (file lock). */
export async function ensureKernel(opts: EnsureKernelOptions): Promise<KernelAssets> {
  const logger = opts.logger ?? silentLogger
  const { cacheDir, signal } = opts
  throwIfAborted(signal, 'ensure_kernel')
  const k = opts.kernel
  if (k && 'version' in k && !('image' in k)) {
    const cached = await cachedKernel(cacheDir, k.version)
    if (!cached) throw new AssetError('kernel_resolve_failed', `kernel ${k.version} is not in the cache (${kernelDir(cacheDir, k.version)})`, { field: 'kernel.version' })
    return cached
  }
  await mkdir(join(cacheDir, 'kernel'), { recursive: true })
  if (k && 'image' in k) {
    await stat(k.image).catch(() => {
      throw new AssetError('invalid_kernel', `${k.image} does not exist`, { field: 'kernel.image' })
    })
    if (k.modules) {
      await stat(join(k.modules)).catch(() => {
        throw new AssetError('invalid_kernel', `${k.modules} does not exist`, { field: 'kernel.modules' })
      })
    }
    const version = await withFileLock(join(cacheDir, 'kernel', '.import.lock'), () => importUserKernel(cacheDir, k, signal))
    return (await cachedKernel(cacheDir, version))!
  }

  let dep: { package: string; version: string; packageVersion?: string }
  try {
    dep = await resolveDebianKernel(logger, signal)
  } catch (err) {
    const newest = (await listCachedKernels(cacheDir))[0]
    if (newest) {
      logger.warn('cannot ask apt for the current cloud kernel; using the newest cached one', { version: newest.version, error: errorMessage(err) })
      return newest
    }
    if (err instanceof AssetError) throw err
    throw new AssetError('kernel_resolve_failed', `cannot resolve ${CLOUD_KERNEL_METAPACKAGE} with apt (run apt-get update?): ${errorMessage(err)}`, { cause: err })
  }
  const cached = await cachedKernel(cacheDir, dep.version)
  if (cached) return cached
  await withFileLock(join(cacheDir, 'kernel', `.${dep.version}.lock`), async () => {
    if (!(await cachedKernel(cacheDir, dep.version))) await downloadDebianKernel(cacheDir, dep, logger, signal)
  })
  const done = await cachedKernel(cacheDir, dep.version)
  if (!done) throw new AssetError('kernel_download_failed', `kernel ${dep.version} is still incomplete after unpacking`)
  return done
}
