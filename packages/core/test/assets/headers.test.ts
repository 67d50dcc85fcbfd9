// The kernel headers disk offline: the apt Depends parsing, the tree laid out from a fabricated copy
// of what Debian's packages unpack to (links kept valid inside the disk), and the cache (made
// aside and renamed in, reused, made again when missing or from another tree, nothing left by a
// failure). The apt download itself runs in scripts/setup; tests stay off the network.
import { lstat, mkdir, mkdtemp, readdir, readlink, realpath, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { assembleDebianHeaders, ensureKernelHeaders, HEADERS_DISK, HEADERS_SOURCE, parseHeadersDepends } from '../../src/assets/headers.js'

const V = '6.1.0-57-cloud-amd64'
let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-headers-unit-'))
})
afterAll(() => rm(dir, { recursive: true, force: true }))

async function files(tree: Record<string, string | { link: string }>, root: string): Promise<void> {
  for (const [p, v] of Object.entries(tree)) {
    await mkdir(join(root, p, '..'), { recursive: true })
    if (typeof v === 'string') await writeFile(join(root, p), v)
    else await symlink(v.link, join(root, p))
  }
}

/** Every symlink under `root`: its target must be relative and resolve to something inside `root`. */
async function checkLinks(root: string): Promise<string[]> {
  const links: string[] = []
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name)
      if (e.isSymbolicLink()) {
        const target = await readlink(p)
        expect(target.startsWith('/'), `${p} -> ${target}`).toBe(false)
        const real = await realpath(p)
        expect(relative(root, real).startsWith('..'), `${p} -> ${real}`).toBe(false)
        links.push(relative(root, p))
      } else if (e.isDirectory()) await walk(p)
    }
  }
  await walk(await realpath(root))
  return links.sort()
}

const debugfs = async (disk: string, cmd: string) => (await run('debugfs', ['-R', cmd, disk])).stdout

describe('kernel headers: from Debian packages', () => {
  it("reads the packages linux-headers-<version> needs for its files from apt's Depends", () => {
    const show = [
      `Package: linux-headers-${V}`,
      'Version: 6.1.192-3',
      'Depends: linux-headers-6.1.0-57-common (= 6.1.192-3), linux-kbuild-6.1 (>= 6.1.192-3), linux-compiler-gcc-12-x86',
      'Description: Header files for Linux',
    ].join('\n')
    expect(parseHeadersDepends(show)).toEqual(['linux-headers-6.1.0-57-common=6.1.192-3', 'linux-kbuild-6.1'])
    expect(parseHeadersDepends('Package: x\n')).toEqual([])
  })

  it('lays the unpacked packages out as /usr, with build and source made relative so every link resolves inside the disk', async () => {
    // What `dpkg-deb -x` of the three packages leaves (bookworm: lib/modules outside usr/).
    const tree = join(dir, 'deb-tree')
    await files(
      {
        [`usr/src/linux-headers-${V}/Makefile`]: 'include /usr/src/linux-headers-6.1.0-57-common/Makefile\n',
        [`usr/src/linux-headers-${V}/.config`]: 'CONFIG_VIRTIO_BLK=m\n',
        [`usr/src/linux-headers-${V}/include/generated/autoconf.h`]: '#define CONFIG_VIRTIO_BLK_MODULE 1\n',
        [`usr/src/linux-headers-${V}/scripts`]: { link: '../../lib/linux-kbuild-6.1/scripts' },
        'usr/src/linux-headers-6.1.0-57-common/Makefile': '# the kernel Makefile\n',
        'usr/src/linux-headers-6.1.0-57-common/scripts': { link: '../../lib/linux-kbuild-6.1/scripts' },
        'usr/src/linux-headers-6.1.0-57-common/include/dt-bindings/input/linux-event-codes.h': { link: '../../uapi/linux/input-event-codes.h' },
        'usr/src/linux-headers-6.1.0-57-common/include/uapi/linux/input-event-codes.h': '/* codes */\n',
        'usr/src/linux-kbuild-6.1': { link: '../lib/linux-kbuild-6.1' },
        'usr/lib/linux-kbuild-6.1/scripts/basic/fixdep': 'ELF',
        'usr/share/doc/linux-kbuild-6.1/copyright': 'GPL',
        [`lib/modules/${V}/build`]: { link: `/usr/src/linux-headers-${V}` },
        [`lib/modules/${V}/source`]: { link: '/usr/src/linux-headers-6.1.0-57-common' },
      },
      tree,
    )
    const out = join(dir, 'deb-out')
    await assembleDebianHeaders(tree, out, V)
    expect(await readdir(out)).toEqual(['lib', 'src'])
    expect(await readlink(join(out, 'lib/modules', V, 'build'))).toBe(`../../../src/linux-headers-${V}`)
    expect(await readlink(join(out, 'lib/modules', V, 'source'))).toBe('../../../src/linux-headers-6.1.0-57-common')
    expect(await checkLinks(out)).toEqual([
      `lib/modules/${V}/build`,
      `lib/modules/${V}/source`,
      `src/linux-headers-${V}/scripts`,
      'src/linux-headers-6.1.0-57-common/include/dt-bindings/input/linux-event-codes.h',
      'src/linux-headers-6.1.0-57-common/scripts',
      'src/linux-kbuild-6.1',
    ])
    await stat(join(out, 'lib/modules', V, 'build', 'scripts', 'basic', 'fixdep'))
  })

  it('refuses packages without a build tree for the version', async () => {
    const tree = join(dir, 'deb-empty')
    await files({ 'usr/src/linux-headers-other/Makefile': '' }, tree)
    await expect(assembleDebianHeaders(tree, join(dir, 'deb-empty-out'), V)).rejects.toMatchObject({ code: 'invalid_kernel_headers' })
  })
})

describe('kernel headers: the cached disk', () => {
  let cacheDir: string
  let kernel: { version: string; dir: string }
  let buildTree: string
  beforeAll(async () => {
    cacheDir = join(dir, 'cache')
    kernel = { version: 'hm-test-1', dir: join(cacheDir, 'kernel', 'hm-test-1') }
    await mkdir(kernel.dir, { recursive: true })
    await writeFile(join(kernel.dir, 'source.json'), JSON.stringify({ kind: 'user', image: '/nowhere/vmlinux' }))
    buildTree = join(dir, 'user-build')
    await files({ Makefile: 'all:\n', '.config': 'CONFIG_X=y\n', 'include/generated/autoconf.h': '#define CONFIG_X 1\n', 'arch/x86/Makefile': '' }, buildTree)
  })

  const leftovers = async () => (await readdir(join(cacheDir, 'kernel'))).filter((n) => n.startsWith('.staging-'))

  it('a user kernel without headers is refused naming skipKernelHeaders (and how to fix it)', async () => {
    await expect(ensureKernelHeaders({ cacheDir, kernel })).rejects.toMatchObject({
      code: 'not_supported',
      field: 'skipKernelHeaders',
      message: expect.stringMatching(/set skipKernelHeaders to true, or give .*kernel\.headers/),
    })
    await expect(ensureKernelHeaders({ cacheDir, kernel, headers: join(dir, 'nope') })).rejects.toMatchObject({ code: 'invalid_kernel_headers', field: 'kernel.headers' })
  })

  it('a tree without a Makefile is refused and leaves nothing behind', async () => {
    const bad = join(dir, 'not-a-build-tree')
    await files({ 'README': 'x' }, bad)
    await expect(ensureKernelHeaders({ cacheDir, kernel, headers: bad })).rejects.toMatchObject({ code: 'invalid_kernel_headers', field: 'kernel.headers' })
    expect((await readdir(kernel.dir)).filter((n) => n.startsWith('headers'))).toEqual([])
    expect(await leftovers()).toEqual([])
  })

  it('makes the disk from a build tree once (concurrent callers share it), ext4 with build linked inside it', async () => {
    const [a, b] = await Promise.all([ensureKernelHeaders({ cacheDir, kernel, headers: buildTree }), ensureKernelHeaders({ cacheDir, kernel, headers: buildTree })])
    expect(a).toEqual(b)
    expect(a).toMatchObject({ path: join(kernel.dir, HEADERS_DISK), source: { kind: 'user', path: buildTree } })
    expect(a.bytes).toBe((await stat(a.path)).size)
    expect(await debugfs(a.path, `stat /lib/modules/${kernel.version}/build`)).toContain(`Fast link dest: "../../../src/linux-headers-${kernel.version}"`)
    expect(await debugfs(a.path, `cat /src/linux-headers-${kernel.version}/include/generated/autoconf.h`)).toBe('#define CONFIG_X 1\n')
    expect((await run('dumpe2fs', ['-h', a.path])).stdout).toMatch(/Filesystem volume name:\s+hm-headers/)
    expect(await leftovers()).toEqual([])

    const ino = (await stat(a.path)).ino
    await ensureKernelHeaders({ cacheDir, kernel, headers: buildTree })
    expect((await stat(a.path)).ino).toBe(ino)
  })

  it('makes it again when the disk is gone, or when it was made from another tree', async () => {
    await rm(join(kernel.dir, HEADERS_DISK))
    const again = await ensureKernelHeaders({ cacheDir, kernel, headers: buildTree })
    await stat(again.path)

    const other = join(dir, 'user-build-2')
    await files({ Makefile: 'all:\n', 'include/generated/autoconf.h': '#define CONFIG_Y 1\n' }, other)
    const ino = (await stat(again.path)).ino
    const rebuilt = await ensureKernelHeaders({ cacheDir, kernel, headers: other })
    expect((await stat(rebuilt.path)).ino).not.toBe(ino)
    expect(await debugfs(rebuilt.path, `cat /src/linux-headers-${kernel.version}/include/generated/autoconf.h`)).toBe('#define CONFIG_Y 1\n')
    expect((await lstat(join(kernel.dir, HEADERS_SOURCE))).isFile()).toBe(true)
    expect(await leftovers()).toEqual([])
  })
})
