/**
 * Volumes attached and detached while instances run (QEMU under TCG): SCSI hot-plug plus a mount
 * by the guest agent, with the boot-time rules (read-write data moves between instances,
 * read-only is EROFS, an overlay keeps its writes), a busy mount refused and left attached, and
 * the attachment kept across standby/restore, stop/start and a reopen of the manager.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { QmpClient } from '@hypeman-ts/vmm-drivers'
import { describe, expect, inject, it } from 'vitest'
import { debugfs, fileManager } from '../support/manager.js'

const reg = inject('registry')
const BUSYBOX = `${reg.open}/busybox:latest`
const opts = { network: false as const, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' } }

const t = fileManager('hm-hotplug-', opts)

const sh = (id: string, script: string) => t.sh(id, script)
const record = (id: string) => JSON.parse(readFileSync(join(t.dataDir, 'instances', id, 'instance.json'), 'utf8'))
const mounted = (id: string, path: string) => sh(id, `grep -c " ${path} " /proc/mounts`).then((r) => r.out.trim())

describe('volumes attached while running', { timeout: 600_000 }, () => {
  let a: string
  let b: string

  it('read-write: hot attach, write from the guest, detach, attach to another instance, the file is there', async () => {
    const data = await t.hm.volumes.create({ name: 'hdata', size: '64MB' })
    a = (await t.hm.instances.create({ image: BUSYBOX, name: 'hot-a', cmd: ['sleep', '600'], diskIoBps: '400MB/s' })).id
    const attached = await t.hm.instances.attachVolume(a, 'hdata', { mountPath: '/hot/data' })
    expect(attached.state).toBe('Running')
    expect(attached.volumes).toEqual([{ volumeId: data.id, mountPath: '/hot/data', readonly: false }])
    expect((await t.hm.volumes.get('hdata')).attachments).toMatchObject([{ instanceId: a, mountPath: '/hot/data', readonly: false }])
    // diskIoBps applies to the hot-plugged disk as to boot-time ones.
    expect(record(a).vmm.spec.disks.find((d: { serial: string }) => d.serial === 'hm-hvol-0')).toMatchObject({
      bus: 'scsi',
      scsiId: 0,
      throttle: { bytesPerSec: 400_000_000 },
    })
    expect(await sh(a, 'echo hot > /hot/data/f && sync && cat /hot/data/f')).toMatchObject({ code: 0, out: 'hot\n' })

    // Read-write stays exclusive while it is hot-attached.
    b = (await t.hm.instances.create({ image: BUSYBOX, name: 'hot-b', cmd: ['sleep', '600'] })).id
    await expect(t.hm.instances.attachVolume(b, 'hdata', { mountPath: '/again' })).rejects.toMatchObject({ code: 'volume_in_use', field: 'volumeId' })

    const detached = await t.hm.instances.detachVolume(a, 'hdata')
    expect(detached.volumes).toEqual([])
    expect(await mounted(a, '/hot/data')).toBe('0')
    expect((await t.hm.volumes.get('hdata')).attachments).toEqual([])
    expect(record(a).vmm.spec.disks.map((d: { serial: string }) => d.serial)).not.toContain('hm-hvol-0')

    await t.hm.instances.attachVolume(b, 'hdata', { mountPath: '/again' })
    expect(await sh(b, 'cat /again/f')).toMatchObject({ code: 0, out: 'hot\n' })
  })

  it('a busy mount refuses the detach with volume_busy and stays attached; free, it detaches', async () => {
    // A process whose working directory is on the volume keeps the mount busy.
    expect(await sh(b, "setsid sh -c 'cd /again && exec tail -f /dev/null' </dev/null >/dev/null 2>&1 & sleep 0.3; echo started")).toMatchObject({ code: 0 })
    await expect(t.hm.instances.detachVolume(b, 'hdata')).rejects.toMatchObject({ code: 'volume_busy', field: 'volumeId' })
    expect((await t.hm.instances.get(b)).volumes).toMatchObject([{ mountPath: '/again' }])
    expect((await t.hm.volumes.get('hdata')).attachments).toMatchObject([{ instanceId: b }])
    expect(await sh(b, 'cat /again/f')).toMatchObject({ code: 0, out: 'hot\n' })
    expect(record(b).vmm.spec.disks.map((d: { serial: string }) => d.serial)).toContain('hm-hvol-0')
    expect(await sh(b, 'kill $(pidof tail); for i in 1 2 3 4 5 6 7 8 9 10; do pidof tail >/dev/null || break; sleep 0.2; done; pidof tail || echo gone')).toMatchObject({ out: 'gone\n' })
    expect((await t.hm.instances.detachVolume(b, 'hdata')).volumes).toEqual([])
    expect(await mounted(b, '/again')).toBe('0')
  })

  it('attach and detach back to back reuse the slot: the guest never takes the disk it is still removing for the new one', async () => {
    const cycle = await t.hm.volumes.create({ name: 'hcycle', size: '16MB' })
    for (let i = 0; i < 4; i++) {
      await t.hm.instances.attachVolume(b, cycle.id, { mountPath: '/cycle' })
      expect(await sh(b, `cat /cycle/n 2>/dev/null; echo ${i} > /cycle/n`)).toMatchObject({ code: 0, out: i ? `${i - 1}\n` : '' })
      await t.hm.instances.detachVolume(b, cycle.id)
    }
    await t.hm.volumes.delete(cycle.id)
  })

  it('read-only is EROFS (the VMM opens it read-only too); an overlay takes writes that never reach the volume', async () => {
    await t.hm.instances.attachVolume(b, 'hdata', { mountPath: '/ro', readonly: true })
    expect(record(b).vmm.spec.disks.find((d: { serial: string }) => d.serial === 'hm-hvol-0')).toMatchObject({ readonly: true })
    expect(await sh(b, 'cat /ro/f')).toMatchObject({ code: 0, out: 'hot\n' })
    const ro = await sh(b, 'echo x > /ro/g')
    expect(ro.code).not.toBe(0)
    expect(ro.err).toContain('Read-only file system')

    // Read-only attachments are shared: the overlay one beside b's.
    const ov = await t.hm.instances.attachVolume(a, 'hdata', { mountPath: '/ov', readonly: true, overlay: true, overlaySize: '16MB' })
    expect(ov.volumes).toMatchObject([{ mountPath: '/ov', readonly: true, overlay: true, overlaySize: '16MB' }])
    expect(await sh(a, 'echo ov > /ov/f && echo new > /ov/n && sync && cat /ov/f /ov/n')).toMatchObject({ code: 0, out: 'ov\nnew\n' })
    const disk = t.hm.volumes.diskPath((await t.hm.volumes.get('hdata')).id)
    expect(debugfs(disk, 'cat /f')).toBe('hot\n')
    expect(debugfs(disk, 'ls -l /')).not.toContain(' n\n')
  })

  it('standby/restore keeps it mounted; so does stop/start (mounted at boot from the SCSI bus)', async () => {
    await t.hm.instances.standby(a)
    expect((await t.hm.instances.get(a)).state).toBe('Standby')
    // The snapshot fixes the device set: no attach or detach on a Standby instance.
    await expect(t.hm.instances.detachVolume(a, 'hdata')).rejects.toMatchObject({ code: 'conflict', field: 'state' })
    expect((await t.hm.instances.start(a)).state).toBe('Running')
    expect(await sh(a, 'cat /ov/f /ov/n')).toMatchObject({ code: 0, out: 'ov\nnew\n' })

    await t.hm.instances.stop(a)
    await t.hm.instances.start(a)
    expect(await sh(a, 'cat /ov/f /ov/n; grep -c " /ov " /proc/mounts')).toMatchObject({ code: 0, out: 'ov\nnew\n1\n' })
  })

  it('after a reopen of the manager, a detach unplugs it; standby/restore afterwards works', async () => {
    await t.hm.close()
    await t.open()
    expect((await t.hm.instances.detachVolume(a, 'hdata')).volumes).toEqual([])
    expect(await mounted(a, '/ov')).toBe('0')
    await t.hm.instances.standby(a)
    await t.hm.instances.start(a)
    expect(await sh(a, 'echo alive')).toMatchObject({ code: 0, out: 'alive\n' })
    // A new attach takes the freed slot again.
    await t.hm.instances.attachVolume(a, 'hdata', { mountPath: '/back', readonly: true })
    expect(await sh(a, 'cat /back/f')).toMatchObject({ code: 0, out: 'hot\n' })
  })

  it('a detach cut short by a crash after the guest unmounted and QEMU unplugged is finished by the next detach', async () => {
    const cut = await t.hm.volumes.create({ name: 'hcut', size: '16MB' })
    await t.hm.instances.attachVolume(b, cut.id, { mountPath: '/cut' })
    const serial = `hm-hvol-${record(b).spec.volumes.find((v: { volumeId: string }) => v.volumeId === cut.id).hotplugSlot}`
    expect(record(b).vmm.spec.disks.map((d: { serial: string }) => d.serial)).toContain(serial)
    // What the detach had done when the host process died: unmounted in the guest, unplugged in QEMU.
    expect(await sh(b, 'umount /cut && echo ok')).toMatchObject({ out: 'ok\n' })
    await t.hm.close()
    const qmp = await QmpClient.connect(record(b).vmm.controlSocket, { deadline: Date.now() + 10_000 })
    try {
      await qmp.execute('device_del', { id: `hd-${serial}-dev` })
      for (let i = 0; i < 50 && (await qmp.execute<{ qdev?: string }[]>('query-block')).some((d) => d.qdev?.includes(serial)); i++) await sleep(100)
      await qmp.execute('blockdev-del', { 'node-name': `hd-${serial}` })
    } finally {
      await qmp.close()
    }
    await t.open()
    expect((await t.hm.instances.detachVolume(b, cut.id)).volumes?.map((v) => v.volumeId)).not.toContain(cut.id)
    expect((await t.hm.volumes.get(cut.id)).attachments).toEqual([])
    expect(record(b).vmm.spec.disks.map((d: { serial: string }) => d.serial)).not.toContain(serial)
    await t.hm.volumes.delete(cut.id)
  })

  it('an attachment a crash left behind (recorded in the volume, not in the instance) is released at the next open', async () => {
    const orphan = await t.hm.volumes.create({ name: 'horphan', size: '16MB' })
    // What a crash between the volume's record and the instance's leaves.
    await t.hm.volumes.attach(b, [{ volumeId: orphan.id, mountPath: '/z', readonly: true, overlay: false, overlaySize: null, overlayBytes: null }])
    await t.hm.close()
    await t.open()
    expect((await t.hm.volumes.get('horphan')).attachments).toEqual([])
    expect((await t.hm.volumes.get('hdata')).attachments.map((x) => x.instanceId).sort()).toEqual([a, b].sort())
  })

  it('volumes attached at create stay virtio-blk: detaching one while running is refused as a wrong state; volumeHotplug: false boots without the controller', async () => {
    await t.hm.close()
    await t.open({ volumeHotplug: false })
    const c = await t.hm.instances.create({ image: BUSYBOX, name: 'hot-c', cmd: ['sleep', '600'], volumes: [{ volumeId: 'horphan', mountPath: '/boot' }] })
    await expect(t.hm.instances.detachVolume(c.id, 'horphan')).rejects.toMatchObject({ code: 'conflict', field: 'state', message: expect.stringContaining('virtio-blk') })
    expect(await mounted(c.id, '/boot')).toBe('1')
    expect(record(c.id).vmm.spec.scsiController).toBeUndefined()
    await expect(t.hm.instances.attachVolume(c.id, 'hdata', { mountPath: '/late', readonly: true })).rejects.toMatchObject({
      code: 'conflict',
      field: 'state',
      message: expect.stringContaining('SCSI controller'),
    })
    expect((await t.hm.volumes.get('hdata')).attachments.map((x) => x.instanceId)).not.toContain(c.id)
    // An instance booted with it keeps it at its restore whatever the option says now.
    expect(record(a).scsiController).toBe(true)
    await t.hm.instances.delete(c.id)
  })
})
