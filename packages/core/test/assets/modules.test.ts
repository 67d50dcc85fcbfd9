import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { defaultCacheDir } from '../../src/assets/ensure.js'
import { listCachedKernels } from '../../src/assets/kernel.js'
import { GUEST_MODULES, moduleName, parseModulesBuiltin, parseModulesDep, planModuleLoad, type GuestModule } from '../../src/assets/modules.js'

const DEP = `
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/erofs/erofs.ko.xz: kernel/lib/libcrc32c.ko.xz
kernel/lib/libcrc32c.ko.xz:
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/hv-sock.ko: kernel/net/vmw_vsock/vsock.ko kernel/lib/libcrc32c.ko.xz
`
const want = (name: string, phase: GuestModule['phase'], required = true): GuestModule => ({ name, phase, required, why: 'test' })

describe('module load plan', () => {
  it('names modules like modprobe (suffixes dropped, dashes as underscores)', () => {
    expect(['a/virtio-rng.ko', 'b/erofs.ko.xz', 'c/x.ko.zst', 'overlay.ko.gz'].map(moduleName)).toEqual(['virtio_rng', 'erofs', 'x', 'overlay'])
  })

  it('puts every dependency first, each module once, phase by phase', () => {
    const plan = planModuleLoad(parseModulesDep(DEP), new Set(), [want('virtio_pci', 'boot'), want('virtio_blk', 'boot'), want('erofs', 'erofs'), want('hv_sock', 'late')])
    expect(plan.load.map((m) => `${m.phase} ${m.path.split('/').pop()}`)).toEqual([
      'boot virtio_pci_legacy_dev.ko',
      'boot virtio_pci_modern_dev.ko',
      'boot virtio_ring.ko',
      'boot virtio.ko',
      'boot virtio_pci.ko',
      'boot virtio_blk.ko',
      'erofs libcrc32c.ko.xz',
      'erofs erofs.ko.xz',
      // erofs is conditional, so a later phase loads the shared dependency again (EEXIST in the guest).
      'late vsock.ko',
      'late libcrc32c.ko.xz',
      'late hv-sock.ko',
    ])
  })

  it('skips built-ins, reports missing optional modules and refuses missing required ones', () => {
    const plan = planModuleLoad(parseModulesDep(DEP), parseModulesBuiltin('kernel/fs/overlayfs/overlay.ko\n'), [want('overlay', 'boot'), want('virtio_net', 'late', false)])
    expect(plan).toMatchObject({ load: [], builtin: ['overlay'], missing: [{ name: 'virtio_net' }] })
    expect(() => planModuleLoad(parseModulesDep(DEP), new Set(), [want('virtio_console', 'boot')])).toThrowError(expect.objectContaining({ code: 'module_missing', field: 'kernel.modules' }))
  })

  it('refuses a modules.dep with a cycle or a dangling dependency', () => {
    expect(() => planModuleLoad(parseModulesDep('a.ko: b.ko\nb.ko: a.ko\n'), new Set(), [want('a', 'boot')])).toThrow(/cycle: a.ko -> b.ko -> a.ko/)
    expect(() => planModuleLoad(parseModulesDep('a.ko: gone.ko\n'), new Set(), [want('a', 'boot')])).toThrow(/does not list/)
  })

  it("orders the cached Debian kernel's real modules.dep so every module follows its dependencies", async () => {
    const kernel = (await listCachedKernels(defaultCacheDir()))[0]
    expect(kernel, 'a kernel in the cache (scripts/setup)').toBeDefined()
    const dep = parseModulesDep(await readFile(join(kernel!.modulesDir!, 'modules.dep'), 'utf8'))
    const plan = planModuleLoad(dep, parseModulesBuiltin(await readFile(join(kernel!.modulesDir!, 'modules.builtin'), 'utf8')))
    expect(plan.missing).toEqual([])
    const loaded = new Map<string, number>()
    plan.load.forEach((m, i) => {
      for (const d of dep.get(m.path)!) {
        const at = loaded.get(d)
        expect(at, `${d} before ${m.path}`).toBeDefined()
      }
      if (!loaded.has(m.path)) loaded.set(m.path, i)
    })
    // Every wanted module is loaded, and the boot phase is exactly the boot modules' closure.
    const names = new Set(plan.load.map((m) => moduleName(m.path)))
    for (const m of GUEST_MODULES) expect(names.has(m.name), m.name).toBe(true)
    const closure = new Set<string>()
    for (const m of GUEST_MODULES.filter((w) => w.phase === 'boot')) {
      const path = [...dep.keys()].find((p) => moduleName(p) === m.name)!
      for (const p of [path, ...dep.get(path)!]) closure.add(p)
    }
    expect(new Set(plan.load.filter((m) => m.phase === 'boot').map((m) => m.path))).toEqual(closure)
    // The SCSI driver of hot-plugged volumes stays off the boot: its own phase, after what it needs.
    expect(plan.load.filter((m) => m.phase === 'scsi').map((m) => moduleName(m.path))).toEqual(['scsi_common', 'scsi_mod', 'virtio_scsi', 'sd_mod'])
  })
})
