/**
 * The guest init binary (packages/core/guest, C), built with `make` into the cache under a hash
 * of its sources, so an edit to the C code gives a new binary and everything built from the old
 * one stays valid for what still uses it.
 *
 *   <cacheDir>/guest-init/<hash>/hypeman-init
 */
import { createHash } from 'node:crypto'
import { access, chmod, mkdir, mkdtemp, readdir, readFile, rename, rm } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { errorMessage, run, withFileLock } from '@hypeman-ts/common'
import { AssetError } from './errors.js'

export const GUEST_INIT_BINARY = 'hypeman-init'

/**
 * Where the C sources are: next to src/ in a checkout (src/assets/ → ../../guest), or next to
 * dist/ in a build (dist/ → ../guest).
 */
export async function findGuestSourceDir(): Promise<string | undefined> {
  const here = dirname(fileURLToPath(import.meta.url))
  for (const candidate of [resolve(here, '../../guest'), resolve(here, '../guest')]) {
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

export interface GuestInitOptions {
  cacheDir: string
  /** Default: found next to this module (findGuestSourceDir). */
  sourceDir?: string
  signal?: AbortSignal
}

/** Builds the init if this source hash has no binary yet; returns its path. */
export async function ensureGuestInit(opts: GuestInitOptions): Promise<{ path: string; hash: string }> {
  const sourceDir = opts.sourceDir ?? (await findGuestSourceDir())
  if (!sourceDir) throw new AssetError('guest_init_build_failed', 'the guest init sources (packages/core/guest) are not next to this module; pass guestInit to use a prebuilt binary')
  const hash = await guestSourceHash(sourceDir)
  const root = join(opts.cacheDir, 'guest-init')
  const path = join(root, hash, GUEST_INIT_BINARY)
  if (await access(path).then(() => true, () => false)) return { path, hash }
  await mkdir(root, { recursive: true })
  await withFileLock(join(root, `.${hash}.lock`), async () => {
    if (await access(path).then(() => true, () => false)) return
    const out = await mkdtemp(join(root, `.build-${hash}-`))
    try {
      await run('make', ['-s', '-C', sourceDir, `OUT=${out}`], { signal: opts.signal, step: 'build_guest_init' })
      await chmod(out, 0o755)
      await rename(out, join(root, hash))
    } catch (err) {
      throw new AssetError('guest_init_build_failed', `building the guest init failed: ${errorMessage(err)}`, { cause: err })
    } finally {
      await rm(out, { recursive: true, force: true })
    }
  })
  return { path, hash }
}
