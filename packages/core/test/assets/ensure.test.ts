// ensureGuestAssets end to end on a fresh cache dir, offline: the kernel comes from the machine's
// cache as a "user kernel" (vmlinux + modules tree), the init is built from packages/core/guest.
// (The apt download path runs in scripts/setup.d/20-guest.sh; tests stay off the network.)
import { appendFile, copyFile, mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run, type Logger } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { defaultCacheDir, ensureGuestAssets } from '../../src/assets/ensure.js'
import { ensureGuestInit, guestSourceHash, findGuestSourceDir } from '../../src/assets/guest-init.js'
import { listCachedKernels, type KernelAssets } from '../../src/assets/kernel.js'

let cache: string
let source: KernelAssets
const warnings: string[] = []
const logger: Logger = { debug() {}, info() {}, warn: (m) => warnings.push(m), error() {} }

beforeAll(async () => {
  cache = await mkdtemp(join(tmpdir(), 'hm-assets-'))
  const k = (await listCachedKernels(defaultCacheDir()))[0]
  expect(k?.modulesDir, 'a kernel with modules in the cache (scripts/setup)').toBeDefined()
  source = k!
})
afterAll(() => rm(cache, { recursive: true, force: true }))

async function cpioList(path: string): Promise<string[]> {
  return (await run('cpio', ['-it', '--quiet', '-F', path])).stdout.trim().split('\n')
}

async function cpioFile(path: string, member: string): Promise<Buffer> {
  const out = await mkdtemp(join(cache, 'x-'))
  await run('cpio', ['-idm', '--quiet', '-F', path, member], { cwd: out })
  return readFile(join(out, member))
}

describe('guest assets', () => {
  it('builds the init from its sources into the cache, named by their hash, once', async () => {
    const first = await ensureGuestInit({ cacheDir: cache })
    expect(first.path).toBe(join(cache, 'guest-init', first.hash, 'hypeman-init'))
    expect(first.hash).toBe(await guestSourceHash((await findGuestSourceDir())!))
    const { stdout } = await run('file', ['-b', first.path])
    expect(stdout).toMatch(/ELF 64-bit.*statically linked/)
    const mtime = (await stat(first.path)).mtimeMs
    expect(await ensureGuestInit({ cacheDir: cache })).toEqual(first)
    expect((await stat(first.path)).mtimeMs).toBe(mtime)
  })

  it('imports a kernel the user points to into the cache layout, with depmod output', async () => {
    const a = await ensureGuestAssets({ cacheDir: cache, kernel: { image: source.vmlinux, modules: source.modulesDir!, version: source.version }, logger })
    const dir = join(cache, 'kernel', source.version)
    expect(a).toMatchObject({ kernelVersion: source.version, kernelPath: join(dir, 'vmlinux'), modulesDir: join(dir, 'modules'), cmdline: 'quiet' })
    await run('cmp', [a.kernelPath, source.vmlinux])
    for (const f of ['modules.dep', 'modules.dep.bin', 'modules.alias']) await stat(join(dir, 'modules', f))
    expect(JSON.parse(await readFile(join(dir, 'source.json'), 'utf8'))).toMatchObject({ kind: 'user', image: source.vmlinux })
    expect(a.initrdPath).toMatch(new RegExp(`^${dir}/initrd-[0-9a-f]{16}\\.cpio$`))
  })

  it('packs the init, busybox and the planned modules with their load order into the initrd', async () => {
    const a = await ensureGuestAssets({ cacheDir: cache, kernel: { version: source.version }, logger })
    const members = await cpioList(a.initrdPath)
    expect(members).toEqual(expect.arrayContaining(['init', 'bin/busybox', 'bin/sh', 'dev/console', 'etc/hypeman/modules', 'newroot', 'lib/modules/virtio_pci.ko', 'lib/modules/virtio_console.ko', 'lib/modules/overlay.ko', 'lib/modules/erofs.ko']))
    expect((await cpioFile(a.initrdPath, 'init')).equals(await readFile(a.initPath))).toBe(true)
    const list = (await cpioFile(a.initrdPath, 'etc/hypeman/modules')).toString().trim().split('\n')
    expect(list.slice(0, 3)).toEqual(['boot /lib/modules/virtio_pci_legacy_dev.ko', 'boot /lib/modules/virtio_pci_modern_dev.ko', 'boot /lib/modules/virtio_ring.ko'])
    expect(list).toContain('erofs /lib/modules/erofs.ko')
    expect(list.filter((l) => l.startsWith('late ')).length).toBeGreaterThan(0)
    // Every listed module is in the archive; nothing in the archive is unlisted.
    const listed = new Set(list.map((l) => l.split(' ')[1]!.slice(1)))
    expect(new Set(members.filter((m) => m.startsWith('lib/modules/') && m.endsWith('.ko')))).toEqual(listed)
    expect(a.modules.missing).toEqual([])
  })

  it('reuses an initrd whose inputs did not change, and builds a new one when one did', async () => {
    const kernel = { version: source.version }
    const a = await ensureGuestAssets({ cacheDir: cache, kernel })
    const mtime = (await stat(a.initrdPath)).mtimeMs
    const b = await ensureGuestAssets({ cacheDir: cache, kernel })
    expect(b.initrdPath).toBe(a.initrdPath)
    expect((await stat(a.initrdPath)).mtimeMs).toBe(mtime)

    const busybox = join(cache, 'busybox-changed')
    await copyFile('/bin/busybox', busybox)
    await appendFile(busybox, Buffer.from([0]))
    const c = await ensureGuestAssets({ cacheDir: cache, kernel, busybox })
    expect(c.initrdPath).not.toBe(a.initrdPath)
    await stat(a.initrdPath) // the old one stays for whoever still boots from it
  })

  it('takes a kernel without modules, warning that the drivers must be built in', async () => {
    warnings.length = 0
    const a = await ensureGuestAssets({ cacheDir: cache, kernel: { image: source.vmlinux, version: 'nomodules-test' }, logger })
    expect(a.modulesDir).toBeUndefined()
    expect((await cpioList(a.initrdPath)).filter((m) => m.endsWith('.ko'))).toEqual([])
    expect(warnings.join('\n')).toMatch(/no modules directory/)
  })

  it.each<[string, object, string, string]>([
    ['a version not in the cache', { version: 'not-there' }, 'kernel_resolve_failed', 'kernel.version'],
    ['an image that does not exist', { image: '/nonexistent/vmlinuz', version: 'x' }, 'invalid_kernel', 'kernel.image'],
    ['a modules dir that does not exist', { image: '/bin/busybox', modules: '/nonexistent/6.1', version: 'x' }, 'invalid_kernel', 'kernel.modules'],
    ['a file that is neither ELF nor bzImage', { image: '/etc/hostname', version: 'bad-image' }, 'invalid_kernel', 'kernel.image'],
    ['an ELF without a PVH entry', { image: '/bin/busybox', version: 'busybox-as-kernel' }, 'invalid_kernel', 'kernel.image'],
  ])('refuses %s, naming the field', async (_name, kernel, code, field) => {
    await expect(ensureGuestAssets({ cacheDir: cache, kernel: kernel as never })).rejects.toMatchObject({ code, field })
  })
})
