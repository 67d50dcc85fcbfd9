/**
 * Volumes in real VMs: data outlives instances, read-only means EROFS, read-write is exclusive,
 * overlay writes never reach the volume, and a crash mid-create releases the attachment.
 */
import { spawn } from 'node:child_process'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { createGzip } from 'node:zlib'
import { pack } from 'tar-stream'
import { describe, expect, inject, it } from 'vitest'
import { debugfs, fileManager } from '../support/manager.js'

const reg = inject('registry')
const BUSYBOX = `${reg.open}/busybox:latest`
const opts = { network: false as const, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' } }

const t = fileManager('hm-volumes-', opts)

function tgz(files: Record<string, string>): Readable {
  const p = pack()
  for (const [name, body] of Object.entries(files)) p.entry({ name }, body)
  p.finalize()
  return p.pipe(createGzip())
}

const sh = (id: string, script: string) => t.sh(id, script)

describe('volumes attached at create', () => {
  it('read-write data outlives its instance; read-only is EROFS; read-write is exclusive; delete refused while attached', async () => {
    const data = await t.hm.volumes.create({ name: 'data', size: '64MB' })
    const shared = await t.hm.volumes.createFromArchive({ name: 'shared', sizeLimit: '32MB' }, tgz({ 'hello.txt': 'hello from the archive\n' }))

    const a = await t.hm.instances.create({
      image: BUSYBOX,
      name: 'vol-a',
      cmd: ['sleep', '600'],
      diskIoBps: '400MB/s',
      volumes: [
        { volumeId: 'data', mountPath: '/data' },
        { volumeId: shared.id, mountPath: '/srv/shared', readonly: true },
      ],
    })
    expect(a.volumes).toEqual([
      { volumeId: data.id, mountPath: '/data', readonly: false },
      { volumeId: shared.id, mountPath: '/srv/shared', readonly: true },
    ])
    expect(await sh(a.id, 'echo persisted > /data/f && sync && cat /srv/shared/hello.txt')).toMatchObject({ code: 0, out: 'hello from the archive\n' })
    const ro = await sh(a.id, 'echo x > /srv/shared/f')
    expect(ro.code).not.toBe(0)
    expect(ro.err).toContain('Read-only file system')

    // diskIoBps: every disk but the config disk is throttled, the two volumes (and the kernel headers disk) included.
    const pid = JSON.parse(readFileSync(join(t.dataDir, 'instances', a.id, 'instance.json'), 'utf8')).vmm.pid
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8')
    expect(argv.match(/"qom-type":"throttle-group"/g)).toHaveLength(5)

    // A second read-write attach is refused up front, naming the field; nothing is created.
    await expect(t.hm.instances.create({ image: BUSYBOX, name: 'vol-b', volumes: [{ volumeId: 'data', mountPath: '/d' }] })).rejects.toMatchObject({
      code: 'volume_in_use',
      field: 'volumes[0].volumeId',
    })
    // ... and so is a read-only one beside a read-write holder.
    await expect(t.hm.instances.create({ image: BUSYBOX, name: 'vol-b', volumes: [{ volumeId: 'data', mountPath: '/d', readonly: true }] })).rejects.toMatchObject({
      code: 'volume_in_use',
    })
    await expect(t.hm.instances.get('vol-b')).rejects.toMatchObject({ code: 'not_found' })
    await expect(t.hm.volumes.delete('data')).rejects.toMatchObject({ code: 'volume_in_use', message: expect.stringContaining('vol-a') })
    expect((await t.hm.volumes.get('data')).attachments).toEqual([{ instanceId: a.id, mountPath: '/data', readonly: false }])

    // Stop and start keep the attachment and the data.
    await t.hm.instances.stop(a.id)
    await t.hm.instances.start(a.id)
    expect(await sh(a.id, 'cat /data/f; grep -c " /data ext4 rw" /proc/mounts')).toMatchObject({ code: 0, out: 'persisted\n1\n' })

    await t.hm.instances.delete(a.id)
    expect((await t.hm.volumes.get('data')).attachments).toEqual([])
    expect((await t.hm.volumes.get('shared')).attachments).toEqual([])
  })

  it('the next instance reads it; an overlay takes writes that never reach the volume', async () => {
    const b = await t.hm.instances.create({
      image: BUSYBOX,
      name: 'vol-b',
      cmd: ['sleep', '600'],
      volumes: [
        { volumeId: 'data', mountPath: '/data', readonly: true },
        { volumeId: 'shared', mountPath: '/cache', readonly: true, overlay: true, overlaySize: '32MB' },
      ],
    })
    expect(await sh(b.id, 'cat /data/f')).toMatchObject({ code: 0, out: 'persisted\n' })
    expect(await sh(b.id, 'echo changed > /cache/hello.txt && echo new > /cache/new && cat /cache/hello.txt /cache/new')).toMatchObject({ code: 0, out: 'changed\nnew\n' })
    expect(await sh(b.id, 'grep " /cache " /proc/mounts')).toMatchObject({ code: 0, out: expect.stringMatching(/^overlay \/cache overlay rw/) })
    // Standby and restore keep the volumes, the overlay's writes with them.
    await t.hm.instances.standby(b.id)
    // A snapshot fixes the VM's disks: no attach or detach while Standby.
    await expect(t.hm.instances.attachVolume(b.id, 'data', { mountPath: '/x', readonly: true })).rejects.toMatchObject({ code: 'conflict', field: 'state' })
    await expect(t.hm.instances.detachVolume(b.id, 'data')).rejects.toMatchObject({ code: 'conflict', field: 'state' })
    await t.hm.instances.restore(b.id)
    expect(await sh(b.id, 'cat /data/f /cache/new')).toMatchObject({ code: 0, out: 'persisted\nnew\n' })
    expect((await t.hm.volumes.get('data')).attachments).toEqual([{ instanceId: b.id, mountPath: '/data', readonly: true }])
    await t.hm.instances.delete(b.id)
    expect(existsSync(join(t.dataDir, 'instances', b.id))).toBe(false)
    const disk = t.hm.volumes.diskPath((await t.hm.volumes.get('shared')).id)
    expect(debugfs(disk, 'cat /hello.txt')).toBe('hello from the archive\n')
    expect(debugfs(disk, 'ls /')).not.toContain('new')
  })

  it('volumes survive a close and reopen of the manager', async () => {
    await t.hm.close()
    await t.open()
    expect((await t.hm.volumes.list()).map((v) => [v.name, v.attachments.length])).toEqual([['data', 0], ['shared', 0]])
  })

  it('a create that fails after attaching releases the attachment and its overlay disk', async () => {
    const err = await t.hm.instances
      .create({ image: `${reg.open}/no-such-image:latest`, name: 'vol-fail', volumes: [{ volumeId: 'data', mountPath: '/d' }, { volumeId: 'shared', mountPath: '/s', readonly: true, overlay: true, overlaySize: '16MB' }] })
      .catch((e: unknown) => e)
    expect(err).toMatchObject({ step: 'image' })
    expect((await t.hm.volumes.get('data')).attachments).toEqual([])
    expect((await t.hm.volumes.get('shared')).attachments).toEqual([])
    expect(readdirSync(join(t.dataDir, 'instances')).filter((n) => !n.startsWith('.'))).toEqual([])
  })

  it('attach and detach on a Stopped instance take effect at its next start', async () => {
    // (Attach and detach while running: hotplug.test.ts.)
    const c = await t.hm.instances.create({ image: BUSYBOX, name: 'vol-c', cmd: ['sleep', '600'] })
    await t.hm.instances.stop(c.id)
    await expect(t.hm.instances.attachVolume(c.id, 'data', { mountPath: 'late' })).rejects.toMatchObject({ code: 'invalid_input', field: 'mountPath' })
    await expect(t.hm.instances.attachVolume(c.id, 'nope', { mountPath: '/late' })).rejects.toMatchObject({ code: 'volume_not_found', field: 'volumeId' })
    expect((await t.hm.instances.attachVolume(c.id, 'data', { mountPath: '/late' })).volumes).toMatchObject([{ mountPath: '/late', readonly: false }])
    await expect(t.hm.instances.attachVolume(c.id, 'data', { mountPath: '/other' })).rejects.toMatchObject({ field: 'volumeId' })
    await expect(t.hm.instances.attachVolume(c.id, 'shared', { mountPath: '/late' })).rejects.toMatchObject({ field: 'mountPath' })
    await t.hm.instances.attachVolume(c.id, 'shared', { mountPath: '/late/shared', readonly: true, overlay: true, overlaySize: '16MB' })
    await t.hm.instances.start(c.id)
    expect(await sh(c.id, 'cat /late/f /late/shared/hello.txt && echo w > /late/shared/w')).toMatchObject({ code: 0, out: 'persisted\nhello from the archive\n' })
    // Attached while stopped, it is a virtio-blk PCI disk, which cannot be unplugged while running.
    await expect(t.hm.instances.detachVolume(c.id, 'data')).rejects.toMatchObject({ code: 'conflict', field: 'state', message: expect.stringContaining('virtio-blk') })
    await t.hm.instances.stop(c.id)
    expect((await t.hm.instances.detachVolume(c.id, 'data')).volumes).toMatchObject([{ mountPath: '/late/shared' }])
    expect((await t.hm.volumes.get('data')).attachments).toEqual([])
    await t.hm.instances.start(c.id)
    // /late is now a plain directory of the overlay; the remaining volume moved to serial hm-vol-0 and keeps its overlay's write.
    expect(await sh(c.id, 'grep -c " /late " /proc/mounts; cat /late/shared/w')).toMatchObject({ out: '0\nw\n' })
    await t.hm.instances.delete(c.id)
    expect((await t.hm.volumes.get('shared')).attachments).toEqual([])
  })

  it('a kill -9 mid-create: the reopened manager releases the attachment', async () => {
    await t.hm.close()
    const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '../support/hypeman-child.ts'), t.dataDir, BUSYBOX, 'vol-crash', JSON.stringify([{ volumeId: 'data', mountPath: '/data' }])], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    try {
      // Killed once the VMM exists, before create returned.
      const deadline = Date.now() + 120_000
      for (;;) {
        const attached = JSON.parse(readFileSync(join(t.dataDir, 'volumes', volumeId(t.dataDir, 'data')!, 'volume.json'), 'utf8')).attachments.length
        const spawned = attached && instanceRecords(t.dataDir).some((r) => r.vmm?.pid && r.phase === 'creating')
        if (spawned) break
        if (Date.now() > deadline) throw new Error('the child never spawned a VMM')
        await new Promise((r) => setTimeout(r, 50))
      }
    } finally {
      child.kill('SIGKILL')
      await new Promise((r) => child.once('exit', r))
    }
    await t.open()
    expect(await t.hm.instances.list()).toEqual([])
    expect((await t.hm.volumes.get('data')).attachments).toEqual([])
  })
})

function volumeId(dir: string, name: string): string | undefined {
  for (const id of readdirSync(join(dir, 'volumes')).filter((n) => !n.startsWith('.'))) {
    if (JSON.parse(readFileSync(join(dir, 'volumes', id, 'volume.json'), 'utf8')).name === name) return id
  }
  return undefined
}

function instanceRecords(dir: string): { phase: string; vmm: { pid: number } | null }[] {
  const root = join(dir, 'instances')
  return readdirSync(root).filter((n) => !n.startsWith('.')).flatMap((id) => {
    try {
      return [JSON.parse(readFileSync(join(root, id, 'instance.json'), 'utf8'))]
    } catch {
      return []
    }
  })
}
