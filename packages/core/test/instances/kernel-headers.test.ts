/**
 * `skipKernelHeaders` in real VMs: the guest kernel's headers at /lib/modules/$(uname -r)/build,
 * read-only, unless skipped (by the create or the manager's default); kept across standby/restore;
 * a kernel of the user's without headers refused before anything is made. Needs the headers disk
 * in the cache (scripts/setup makes it), so no test downloads it.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { beforeAll, describe, expect, inject, it } from 'vitest'
import { defaultCacheDir, HEADERS_DISK, listCachedKernels } from '../../src/assets/index.js'
import { readStatusEvents } from '../../src/guest/index.js'
import { Hypeman } from '../../src/index.js'
import { fileManager } from '../support/manager.js'

const reg = inject('registry')
const BUSYBOX = `${reg.open}/busybox:latest`
const opts = { network: false as const, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' } }

beforeAll(async () => {
  const k = (await listCachedKernels(defaultCacheDir()))[0]
  expect(k, 'a kernel in the cache (scripts/setup)').toBeDefined()
  expect(existsSync(join(k!.dir, HEADERS_DISK)), 'the headers disk in the cache (scripts/setup)').toBe(true)
})
const t = fileManager('hm-headers-', opts)

const sh = async (m: Hypeman, id: string, script: string) => {
  const r = await m.instances.exec(id, { argv: ['sh', '-c', script] })
  return { code: r.exitCode, out: r.stdout.toString().trim(), err: r.stderr.toString().trim() }
}

/** Debian's kernel Makefile names its compiler (gcc-12 for bookworm's); make and unshare do the rest. */
/** Exit 0 with "present" when the headers are usable as DKMS would use them, "absent" when there are none. */
const PROBE = [
  'b=/lib/modules/$(uname -r)/build',
  'if [ ! -e "$b" ]; then echo absent; grep -qx hm-headers /sys/block/vd*/serial && echo disk-attached; exit 0; fi',
  'test -f "$b/Makefile" && test -r "$b/.config" && test -r "$b/include/generated/autoconf.h" && test -r "$b/Module.symvers" || exit 11',
  // scripts/ is a relative link into linux-kbuild; the flavour Makefile includes the common tree by its /usr/src path.
  'test -x "$b/scripts/basic/fixdep" || exit 12',
  'common=$(sed -n "s/^include //p" "$b/Makefile"); test -f "$common" || exit 13',
  'test -f /lib/modules/$(uname -r)/source/Makefile || exit 14',
  'grep -q CONFIG_VIRTIO_BLK "$b/.config" || exit 15',
  'touch "$b/x" 2>/dev/null && exit 16',
  'grep " /usr/src/.hypeman-headers " /proc/mounts | grep -q " ro[ ,]" || exit 17',
  'echo present',
].join('\n')

describe('kernel headers', () => {
  it('are there, read-only and complete by default (the spec default false), gone with skipKernelHeaders: true, and kept across standby/restore', async () => {
    const a = await t.hm.instances.create({ image: BUSYBOX, name: 'hdr-default', cmd: ['sleep', '600'] })
    const b = await t.hm.instances.create({ image: BUSYBOX, name: 'hdr-skipped', cmd: ['sleep', '600'], skipKernelHeaders: true })
    expect(await sh(t.hm, a.id, PROBE)).toEqual({ code: 0, out: 'present', err: '' })
    expect(await sh(t.hm, b.id, PROBE)).toEqual({ code: 0, out: 'absent', err: '' })
    const started = async (id: string) => (await readStatusEvents(join(t.dataDir, 'instances', id, 'status.jsonl'))).find((e) => e.type === 'started')
    expect(await started(a.id)).toMatchObject({ headersMs: expect.any(Number) })
    expect(await started(b.id)).not.toHaveProperty('headersMs')
    await t.hm.instances.delete(b.id)

    // The disk is part of the VM's device list: a restore must bring it back the same.
    await sh(t.hm, a.id, 'ls /lib/modules/$(uname -r)/build/include > /tmp/before')
    expect(await t.hm.instances.standby(a.id)).toMatchObject({ state: 'Standby' })
    expect(await t.hm.instances.restore(a.id)).toMatchObject({ state: 'Running' })
    expect(await sh(t.hm, a.id, `${PROBE.replace('echo present', 'ls /lib/modules/$(uname -r)/build/include | cmp - /tmp/before && echo present')}`)).toEqual({ code: 0, out: 'present', err: '' })
    // And a cold boot of the same instance finds its links (kept in its writable layer) replaced cleanly.
    await t.hm.instances.stop(a.id, { timeoutMs: 3000 })
    await t.hm.instances.start(a.id)
    expect(await sh(t.hm, a.id, PROBE)).toEqual({ code: 0, out: 'present', err: '' })
    await t.hm.instances.delete(a.id)
  })

  it("take the manager's default when the create does not say", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'hm-headers-default-'))
    // One manager per data dir: this one has its own.
    const skipping = await Hypeman.open({ dataDir: dir, ...opts, defaults: { ...opts.defaults, skipKernelHeaders: true } })
    try {
      const c = await skipping.instances.create({ image: BUSYBOX, name: 'hdr-manager-default', cmd: ['sleep', '600'] })
      expect(await sh(skipping, c.id, PROBE)).toEqual({ code: 0, out: 'absent', err: '' })
      await skipping.instances.delete(c.id)
    } finally {
      await skipping.close()
      await rm(dir, { recursive: true, force: true })
    }
    await expect(Hypeman.open({ dataDir: dir, ...opts, defaults: { skipKernelHeaders: 'no' as never } })).rejects.toMatchObject({ code: 'invalid_input', field: 'defaults.skipKernelHeaders' })
  })

  // No fixture image has a compiler: the module is built on the host against the disk's own tree
  // (with /usr/src laid out as the init lays it out, in a private mount namespace), then loaded in the guest.
  // gcc, make and debugfs come with scripts/setup; the build runs as root in a mount namespace (unshare).
  it('a module built against the headers disk loads into the guest kernel', async () => {
    const k = (await listCachedKernels(defaultCacheDir()))[0]!
    const dir = await mkdtemp(join(tmpdir(), 'hm-headers-mod-'))
    try {
      await run('debugfs', ['-R', `rdump / ${dir}`, join(k.dir, HEADERS_DISK)])
      const mod = join(dir, 'mod')
      mkdirSync(mod)
      writeFileSync(join(mod, 'Makefile'), 'obj-m += hm_hello.o\n')
      writeFileSync(
        join(mod, 'hm_hello.c'),
        '#include <linux/module.h>\nstatic int __init hi(void) { pr_info("hm_hello loaded\\n"); return 0; }\nmodule_init(hi);\nMODULE_LICENSE("GPL");\n',
      )
      const script = `mount -t tmpfs tmpfs /usr/src && for d in ${dir}/src/*; do ln -s "$d" /usr/src/; done && make -s -C ${dir}/lib/modules/${k.version}/build M=${mod} modules`
      await run('unshare', ['-m', 'sh', '-c', script], { timeoutMs: 300_000 })
      const inst = await t.hm.instances.create({ image: BUSYBOX, name: 'hdr-module', cmd: ['sleep', '600'], skipKernelHeaders: true })
      await t.hm.instances.copyTo(inst.id, '/tmp/hm_hello.ko', readFileSync(join(mod, 'hm_hello.ko')))
      expect(await sh(t.hm, inst.id, 'insmod /tmp/hm_hello.ko && grep -c "^hm_hello " /proc/modules && dmesg | grep -c "hm_hello loaded"')).toEqual({ code: 0, out: '1\n1', err: '' })
      await t.hm.instances.delete(inst.id)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('a kernel of your own: without kernel.headers a create that wants them is refused naming skipKernelHeaders, nothing made; with them, its build tree is the guest\'s', async () => {
    const k = (await listCachedKernels(defaultCacheDir()))[0]!
    const dir = await mkdtemp(join(tmpdir(), 'hm-headers-user-'))
    const own = { dataDir: join(dir, 'data'), cacheDir: join(dir, 'cache'), ...opts }
    let user = await Hypeman.open({ ...own, kernel: { image: k.vmlinux, modules: k.modulesDir!, version: k.version } })
    try {
      const err = await user.instances.create({ image: BUSYBOX, name: 'hdr-user-kernel', cmd: ['true'] }).catch((e: unknown) => e)
      expect(err).toMatchObject({ code: 'not_supported', field: 'skipKernelHeaders', message: expect.stringMatching(/set skipKernelHeaders to true, or give .*kernel\.headers/) })
      expect(await user.instances.list()).toEqual([])
      expect(readdirSync(join(dir, 'data', 'instances')).filter((n) => !n.startsWith('.'))).toEqual([])
      expect(readdirSync(join(dir, 'cache', 'kernel', k.version)).filter((n) => n.startsWith('headers'))).toEqual([])
      await user.close()

      const tree = join(dir, 'build-tree')
      mkdirSync(join(tree, 'include', 'generated'), { recursive: true })
      writeFileSync(join(tree, 'Makefile'), '# a kernel build tree\n')
      writeFileSync(join(tree, 'include', 'generated', 'autoconf.h'), '#define HM_USER_TREE 1\n')
      user = await Hypeman.open({ ...own, kernel: { image: k.vmlinux, modules: k.modulesDir!, version: k.version, headers: tree } })
      const inst = await user.instances.create({ image: BUSYBOX, name: 'hdr-user-tree', cmd: ['sleep', '600'] })
      const b = '/lib/modules/$(uname -r)/build'
      expect(await sh(user, inst.id, `readlink ${b}; cat ${b}/include/generated/autoconf.h; test -e /lib/modules/$(uname -r)/source || echo no-source`)).toEqual({
        code: 0,
        out: `/usr/src/.hypeman-headers/src/linux-headers-${k.version}\n#define HM_USER_TREE 1\nno-source`,
        err: '',
      })
      await user.instances.delete(inst.id)
    } finally {
      await user.close().catch(() => {})
      await rm(dir, { recursive: true, force: true })
    }
  })
})
