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

/** The pack-time binary for this host's architecture, if it was built from exactly these sources. */
async function prebuiltFor(sourceDir: string, hash: string): Promise<string | undefined> {
  const dir = join(sourceDir, 'prebuilt', guestArch())
  const recorded = (await readFile(join(dir, PREBUILT_HASH_FILE), 'utf8').catch(() => '')).trim()
  return recorded === hash ? join(dir, GUEST_INIT_BINARY) : undefined
}

/** Builds the init from `sourceDir` into `outDir` (the one build, for the cache and for packing). */
async function buildGuestInit(sourceDir: string, outDir: string, signal?: AbortSignal): Promise<void> {
  try {
    await run('make', ['-s', '-C', sourceDir, `OUT=${outDir}`], { signal, step: 'build_guest_init' })
  } catch (err) {
    throw new AssetError(
      'guest_init_build_failed',
      `building the guest init failed (it needs make and gcc with a static libc: Debian/Ubuntu build-essential, Fedora make gcc glibc-static, Alpine build-base): ${errorMessage(err)}`,
      { cause: err },
    )
  }
}

/** Pack time: builds the init for this host's architecture into `<sourceDir>/prebuilt/<arch>/` with the hash of its sources. */
export async function prebuildGuestInit(sourceDir?: string): Promise<{ path: string; hash: string }> {
  const dir = sourceDir ?? (await findGuestSourceDir())
  if (!dir) throw new AssetError('guest_init_build_failed', 'the guest init sources are not next to this module')
  const hash = await guestSourceHash(dir)
  const out = join(dir, 'prebuilt', guestArch())
  await rm(out, { recursive: true, force: true })
  await buildGuestInit(dir, out)
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
      const prebuilt = await prebuiltFor(sourceDir, hash)
      if (prebuilt) {
        await copyFile(prebuilt, join(out, GUEST_INIT_BINARY))
        await chmod(join(out, GUEST_INIT_BINARY), 0o755)
      } else {
        await buildGuestInit(sourceDir, out, opts.signal)
      }
      await chmod(out, 0o755)
      await rename(out, join(root, hash))
    } finally {
      await rm(out, { recursive: true, force: true })
    }
  })
  return { path, hash }
}
