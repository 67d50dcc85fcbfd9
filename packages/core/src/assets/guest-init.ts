/**
 * The guest init binary (packages/core/guest, C), in the cache under a hash of its sources, so an
 * edit to the C code gives a new binary and everything built from the old one stays valid for
 * what still uses it:
 *
 *   <cacheDir>/guest-init/<hash>/hypeman-init
 *
 * The packed package carries a binary built at pack time (guest/prebuilt/<arch>/, with the hash
 * of the sources it was built from), so a user's host needs no C toolchain; it is used only when
 * that hash is the hash of the sources next to it. Otherwise, or on another architecture, the
 * sources are built with `make`.
 *
 * Packing builds for every architecture in PREBUILT_ARCHES whose compiler is there: the host's
 * own gcc, and Debian's cross compilers for the other (gcc-aarch64-linux-gnu with
 * libc6-dev-arm64-cross on an x86_64 host; gcc-x86-64-linux-gnu with libc6-dev-amd64-cross on an
 * aarch64 one), which link a static glibc like the native build.
 */
import { createHash } from 'node:crypto'
import { access, chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { errorMessage, run, withFileLock } from '@hypeman-ts/common'
import { AssetError } from './errors.js'

export const GUEST_INIT_BINARY = 'hypeman-init'

/**
 * Where the C sources are: next to src/ in a checkout (src/assets/ → ../../guest), next to
 * dist/ in a build or an installed package (dist/ → ../guest), or, from a bundle, in the
 * installed package that node's resolution finds.
 */
export async function findGuestSourceDir(): Promise<string | undefined> {
  const here = dirname(fileURLToPath(import.meta.url))
  const candidates = [resolve(here, '../../guest'), resolve(here, '../guest')]
  // Bundled into someone's app, this module is not in the package: find the installed package.
  try {
    candidates.push(join(dirname(createRequire(import.meta.url).resolve('@hypeman-ts/core/package.json')), 'guest'))
  } catch {
    // not installed as a package (a checkout, or a bundle without it): the paths above decide
  }
  for (const candidate of candidates) {
    if (await access(join(candidate, 'Makefile')).then(() => true, () => false)) return candidate
  }
  return undefined
}

/** Hash of everything make reads: the Makefile and src/*. */
export async function guestSourceHash(sourceDir: string): Promise<string> {
  const h = createHash('sha256')
  const files = ['Makefile', ...(await readdir(join(sourceDir, 'src'))).sort().map((f) => join('src', f))]
  for (const f of files) {
    h.update(`${f}\0`)
    h.update(await readFile(join(sourceDir, f)))
    h.update('\0')
  }
  return h.digest('hex').slice(0, 16)
}

/** The `uname -m` name of an architecture, as the prebuilt binaries are filed. */
export function guestArch(arch: string = process.arch): string {
  return ({ x64: 'x86_64', arm64: 'aarch64' } as Record<string, string>)[arch] ?? arch
}

const PREBUILT_HASH_FILE = 'source-hash'

/** The architectures a packed package carries a binary for (as `uname -m` names them). */
export const PREBUILT_ARCHES = ['x86_64', 'aarch64'] as const

/** The C compiler that builds for `arch` here: the host's gcc, or Debian's cross gcc, with the packages that bring it. */
function compilerFor(arch: string): { cc: string; debian: string } {
  if (arch === guestArch()) return { cc: 'gcc', debian: 'gcc libc6-dev' }
  const cross: Record<string, string> = { aarch64: 'gcc-aarch64-linux-gnu libc6-dev-arm64-cross', x86_64: 'gcc-x86-64-linux-gnu libc6-dev-amd64-cross' }
  if (!cross[arch]) throw new AssetError('guest_init_build_failed', `no known compiler builds the guest init for ${arch}`, { field: 'arch' })
  return { cc: `${arch}-linux-gnu-gcc`, debian: cross[arch] }
}

/** The pack-time binary for this host's architecture, if it was built from exactly these sources. */
export async function prebuiltGuestInit(sourceDir: string, hash: string): Promise<string | undefined> {
  const dir = join(sourceDir, 'prebuilt', guestArch())
  const recorded = (await readFile(join(dir, PREBUILT_HASH_FILE), 'utf8').catch(() => '')).trim()
  return recorded === hash ? join(dir, GUEST_INIT_BINARY) : undefined
}

/** Builds the init from `sourceDir` into `outDir` (the one build, for the cache and for packing). */
async function buildGuestInit(sourceDir: string, outDir: string, opts: { arch?: string; signal?: AbortSignal } = {}): Promise<void> {
  const { cc, debian } = compilerFor(opts.arch ?? guestArch())
  try {
    await run('make', ['-s', '-C', sourceDir, `OUT=${outDir}`, `CC=${cc}`], { signal: opts.signal, step: 'build_guest_init' })
  } catch (err) {
    throw new AssetError(
      'guest_init_build_failed',
      `building the guest init for ${opts.arch ?? guestArch()} failed (it needs make and ${cc} with a static libc: Debian/Ubuntu ${debian}${cc === 'gcc' ? ', Fedora make gcc glibc-static, Alpine build-base' : ''}): ${errorMessage(err)}`,
      { cause: err },
    )
  }
}

/**
 * Pack time: builds the init for `arch` (default: this host's) into
 * `<sourceDir>/prebuilt/<arch>/` with the hash of its sources.
 */
export async function prebuildGuestInit(opts: { sourceDir?: string; arch?: string } = {}): Promise<{ path: string; hash: string }> {
  const dir = opts.sourceDir ?? (await findGuestSourceDir())
  if (!dir) throw new AssetError('guest_init_build_failed', 'the guest init sources are not next to this module')
  const arch = opts.arch ?? guestArch()
  const hash = await guestSourceHash(dir)
  const out = join(dir, 'prebuilt', arch)
  await rm(out, { recursive: true, force: true })
  await buildGuestInit(dir, out, { arch })
  await writeFile(join(out, PREBUILT_HASH_FILE), `${hash}\n`)
  return { path: join(out, GUEST_INIT_BINARY), hash }
}

export interface GuestInitOptions {
  cacheDir: string
  /** Default: found next to this module (findGuestSourceDir). */
  sourceDir?: string
  signal?: AbortSignal
}

/** Builds the init if this source hash has no binary yet; returns its path. */
export async function ensureGuestInit(opts: GuestInitOptions): Promise<{ path: string; hash: string }> {
  const sourceDir = opts.sourceDir ?? (await findGuestSourceDir())
  if (!sourceDir) throw new AssetError('guest_init_build_failed', 'the guest init (guest/ of @hypeman-ts/core) is not next to this module; reinstall the package, or pass guestInit to use a binary of your own')
  const hash = await guestSourceHash(sourceDir)
  const root = join(opts.cacheDir, 'guest-init')
  const path = join(root, hash, GUEST_INIT_BINARY)
  if (await access(path).then(() => true, () => false)) return { path, hash }
  await mkdir(root, { recursive: true })
  await withFileLock(join(root, `.${hash}.lock`), async () => {
    if (await access(path).then(() => true, () => false)) return
    const out = await mkdtemp(join(root, `.build-${hash}-`))
    try {
      const prebuilt = await prebuiltGuestInit(sourceDir, hash)
      if (prebuilt) {
        await copyFile(prebuilt, join(out, GUEST_INIT_BINARY))
        await chmod(join(out, GUEST_INIT_BINARY), 0o755)
      } else {
        await buildGuestInit(sourceDir, out, { signal: opts.signal })
      }
      await chmod(out, 0o755)
      await rename(out, join(root, hash))
    } finally {
      await rm(out, { recursive: true, force: true })
    }
  })
  return { path, hash }
}
