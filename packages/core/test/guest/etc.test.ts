/**
 * The init's /etc files (guest/src/etc.c): what it renders for /etc/hosts, /etc/hostname and
 * /etc/resolv.conf, and where a bind-mount over such a path lands when the image has it as a
 * symlink (run under chroot, as the guest runs it in its switched root), and how it writes
 * /etc/machine-id (boot.c). The mounts themselves are checked in real VMs (network.test.ts, vm.test.ts).
 */
import { chown, copyFile, link, lstat, mkdir, mkdtemp, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { encodeGuestConfig, type GuestConfig } from '../../src/guest/config-disk.js'
import { guestInitBinary } from './helpers.js'

let dir: string
let init: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-etc-'))
  init = await guestInitBinary()
})
afterAll(() => rm(dir, { recursive: true, force: true }))

async function renderEtc(config: GuestConfig): Promise<string> {
  const path = join(dir, `cfg-${Math.random().toString(36).slice(2)}`)
  await writeFile(path, encodeGuestConfig(config))
  return (await run(init, ['render-etc', path])).stdout
}

const LOCALHOST = '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n'
const network = { mac: '52:54:00:12:34:56', address: '10.77.0.2', prefixLength: 24, gateway: '10.77.0.1', dns: ['10.77.0.1', '192.0.2.53'] }

describe('the /etc files the init renders', () => {
  it('maps the hostname to the NIC address and lists the DNS servers with a network', async () => {
    expect(await renderEtc({ argv: ['true'], env: {}, hostname: 'web-1', network })).toBe(
      `--- /etc/hosts\n${LOCALHOST}10.77.0.2\tweb-1\n--- /etc/hostname\nweb-1\n--- /etc/resolv.conf\n# written at boot by hypeman-init from the instance's network config\nnameserver 10.77.0.1\nnameserver 192.0.2.53\n`,
    )
  })

  it('writes none of them without a network (the image keeps its own)', async () => {
    expect(await renderEtc({ argv: ['true'], env: {} })).toBe('')
  })

  it('adds the short name of a dotted hostname, and writes a resolv.conf without servers when DNS is empty', async () => {
    const out = await renderEtc({ argv: ['true'], env: {}, hostname: 'api.internal.example', network: { ...network, dns: [] } })
    expect(out).toContain('10.77.0.2\tapi.internal.example api\n')
    expect(out).toMatch(/--- \/etc\/resolv.conf\n# written at boot[^\n]*\n$/)
  })
})

describe('where a bind-mount over an image path lands (chroot)', () => {
  let root: string
  beforeAll(async () => {
    root = join(dir, 'root')
    await mkdir(join(root, 'etc'), { recursive: true })
    await copyFile(init, join(root, 'hypeman-init'))
    await writeFile(join(root, 'etc/hosts'), 'image hosts\n')
    await symlink('../run/systemd/resolve/stub-resolv.conf', join(root, 'etc/resolv.conf'))
    await symlink('/etc/hostname.real', join(root, 'etc/hostname'))
    await writeFile(join(root, 'etc/hostname.real'), 'image-name\n')
    await symlink('chain2', join(root, 'etc/chain1'))
    await symlink('/etc/chain3', join(root, 'etc/chain2'))
    await symlink('hosts', join(root, 'etc/chain3'))
    await symlink('loop-b', join(root, 'etc/loop-a'))
    await symlink('loop-a', join(root, 'etc/loop-b'))
    await mkdir(join(root, 'etc/adir'))
  })

  const target = async (path: string) => (await run('chroot', [root, '/hypeman-init', 'mount-target', path])).stdout.trim()

  it('takes a regular file as it is', async () => {
    expect(await target('/etc/hosts')).toBe('/etc/hosts')
    expect(await readFile(join(root, 'etc/hosts'), 'utf8')).toBe('image hosts\n')
  })

  it("follows symlinks inside the root, absolute ones included, to the file they name", async () => {
    expect(await target('/etc/hostname')).toBe('/etc/hostname.real')
    expect(await target('/etc/chain1')).toBe('/etc/hosts')
    expect(await readlink(join(root, 'etc/hostname'))).toBe('/etc/hostname.real')
  })

  it("creates a dangling link's target (with its directories) empty, leaving the link as it was", async () => {
    expect(await target('/etc/resolv.conf')).toBe('/etc/../run/systemd/resolve/stub-resolv.conf')
    expect((await lstat(join(root, 'run/systemd/resolve/stub-resolv.conf'))).size).toBe(0)
    expect(await readlink(join(root, 'etc/resolv.conf'))).toBe('../run/systemd/resolve/stub-resolv.conf')
  })

  it('creates a missing file, and its directory, in an image without /etc files', async () => {
    expect(await target('/opt/none/file')).toBe('/opt/none/file')
    expect((await lstat(join(root, 'opt/none/file'))).isFile()).toBe(true)
  })

  it('refuses a directory and a symlink loop', async () => {
    await expect(target('/etc/adir')).rejects.toThrowError(/not a regular file/)
    await expect(target('/etc/loop-a')).rejects.toThrowError(/more than 16 symbolic links/)
  })
})

describe('/etc/machine-id (chroot)', () => {
  const ID = '0123456789abcdef0123456789abcdef'
  let root: string
  beforeAll(async () => {
    root = join(dir, 'mid-root')
    await mkdir(join(root, 'etc'), { recursive: true })
    await copyFile(init, join(root, 'hypeman-init'))
  })
  const write = (id = ID) => run('chroot', [root, '/hypeman-init', 'write-machine-id', id])
  const mid = (): string => join(root, 'etc/machine-id')

  it('rewrites a plain file in place, root-owned, 0444, exactly the id', async () => {
    await writeFile(mid(), 'an image id that is longer than the new one\n', { mode: 0o644 })
    await chown(mid(), 1000, 1000)
    const ino = (await lstat(mid())).ino
    await write()
    const st = await lstat(mid())
    expect(st.ino).toBe(ino)
    expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([0, 0, 0o444])
    expect(await readFile(mid(), 'utf8')).toBe(`${ID}\n`)
    // Again with the same length: still the same file.
    await write('fedcba9876543210fedcba9876543210')
    expect((await lstat(mid())).ino).toBe(ino)
    expect(await readFile(mid(), 'utf8')).toBe('fedcba9876543210fedcba9876543210\n')
  })

  it('replaces a symlink, a hard-linked file and a FIFO rather than writing through them', async () => {
    await writeFile(join(root, 'etc/shadow-ish'), 'secret\n')
    await rm(mid(), { force: true })
    await symlink('shadow-ish', mid())
    await write()
    expect((await lstat(mid())).isFile()).toBe(true)
    expect(await readFile(join(root, 'etc/shadow-ish'), 'utf8')).toBe('secret\n')

    await rm(mid())
    await link(join(root, 'etc/shadow-ish'), mid())
    await write()
    expect((await lstat(mid())).nlink).toBe(1)
    expect(await readFile(mid(), 'utf8')).toBe(`${ID}\n`)
    expect(await readFile(join(root, 'etc/shadow-ish'), 'utf8')).toBe('secret\n')

    await rm(mid())
    await run('mkfifo', [mid()])
    await write()
    expect((await lstat(mid())).isFile()).toBe(true)
    expect(await readFile(mid(), 'utf8')).toBe(`${ID}\n`)
  })
})
