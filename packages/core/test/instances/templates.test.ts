/**
 * Boot templates with real QEMU VMs under TCG: the first boot of a shape makes one, the next ones
 * restore it, and each restored guest is its own machine (entropy, machine-id, hostname, env,
 * clock); a broken or outdated template never fails a create.
 */
import { existsSync, readFileSync, statSync } from 'node:fs'
import { mkdtemp, readFile, rm, truncate, utimes } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, inject, it } from 'vitest'
import { Hypeman, type Instance } from '../../src/index.js'
import { fileManager, warmQemus } from '../support/manager.js'

const reg = inject('registry')
const BUSYBOX = `${reg.open}/busybox:latest`

// What makes each guest itself: printed by the program, one `key=value` per line.
const IDENTITY = [
  'sh',
  '-c',
  'echo "random=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n")"; echo "machineid=$(cat /etc/machine-id)"; ' +
    'echo "hostname=$(hostname)"; echo "foo=$FOO"; echo "clock=$(date +%s)"; exit 3',
]

const t = fileManager('hm-templates-', { network: false, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' } })

interface Ran {
  inst: Instance
  out: Record<string, string>
  /** The instance's own log: how it booted. */
  hypemanLog: string
}

async function runToEnd(name: string, env: Record<string, string> = {}): Promise<Ran> {
  const created = await t.hm.instances.create({ image: BUSYBOX, name, cmd: IDENTITY, env })
  const waited = await t.hm.instances.waitForState(created.id, 'Stopped', { timeout: '120s' })
  expect(waited.timedOut).toBe(false)
  const inst = await t.hm.instances.get(created.id)
  const out: Record<string, string> = {}
  for await (const line of t.hm.instances.logs(created.id, { tail: 100 })) {
    const eq = line.indexOf('=')
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1)
  }
  const hypemanLog = await readFile(join(t.dataDir, 'instances', created.id, 'hypeman.log'), 'utf8')
  await t.hm.instances.delete(created.id)
  return { inst, out, hypemanLog }
}

describe('boot templates', () => {
  let first: Ran
  const restored: Ran[] = []

  it('the first boot of a shape makes a template and runs its program as a cold boot does', async () => {
    first = await runToEnd('tpl-first', { FOO: 'first' })
    expect(first.hypemanLog).toMatch(/template [0-9a-f]{32} made/)
    // The instance that made it runs restored from it, as every later one.
    expect(first.hypemanLog).toMatch(/restored from template [0-9a-f]{32}/)
    expect(first.inst).toMatchObject({ state: 'Stopped', exitCode: 3 })
    expect(first.out.foo).toBe('first')
    const templates = await t.hm.templates!.list()
    expect(templates).toHaveLength(1)
    expect(templates[0]!.bytes).toBeGreaterThan(1024 * 1024)
  })

  it('later boots restore it, each a machine of its own', async () => {
    for (const n of [1, 2]) restored.push(await runToEnd(`tpl-copy-${n}`, { FOO: `copy-${n}` }))
    const all = [first, ...restored]
    for (const r of restored) {
      expect(r.hypemanLog).toMatch(/restored from template [0-9a-f]{32}/)
      expect(r.hypemanLog).not.toMatch(/template [0-9a-f]{32} made/)
      expect(r.hypemanLog).not.toMatch(/booted: VMM/)
      // The program's exit code and output come back as after a cold boot.
      expect(r.inst).toMatchObject({ state: 'Stopped', exitCode: 3, exitMessage: 'exited with code 3' })
    }
    for (const key of ['random', 'machineid', 'hostname', 'foo']) {
      const values = all.map((r) => r.out[key])
      expect(values.every((v) => v && v.length > 0), `${key}: ${JSON.stringify(values)}`).toBe(true)
      expect(new Set(values).size, `${key} is shared: ${JSON.stringify(values)}`).toBe(all.length)
    }
    expect(restored.map((r) => r.out.hostname)).toEqual(['tpl-copy-1', 'tpl-copy-2'])
    expect(restored.map((r) => r.out.foo)).toEqual(['copy-1', 'copy-2'])
    for (const r of all) expect(r.out.machineid).toMatch(/^[0-9a-f]{32}$/)
    // The clock is the host's, not the template's moment.
    for (const r of restored) expect(Math.abs(Number(r.out.clock) - Date.now() / 1000)).toBeLessThan(60)
  })

  it('a warm VMM waits for the shape once a template boot ran, and the next create adopts it', async () => {
    const deadline = Date.now() + 60_000
    while (!Object.values(t.hm.warm!.ready).some((n) => n > 0)) {
      expect(Date.now() < deadline, 'no warm VMM within 60 s').toBe(true)
      await new Promise((r) => setTimeout(r, 100))
    }
    const waiting = warmQemus(t.dataDir)
    expect(waiting).toHaveLength(1)
    const r = await runToEnd('tpl-warm', { FOO: 'warm' })
    expect(r.hypemanLog).toMatch(/restored: VMM pid \d+ \(tcg, a warm VMM\)/)
    expect(r.hypemanLog).toContain(`VMM pid ${waiting[0]} `)
    expect(r.inst).toMatchObject({ state: 'Stopped', exitCode: 3 })
    expect(r.out.foo).toBe('warm')
    expect(r.out.hostname).toBe('tpl-warm')
  })

  it('the power button stops an instance restored from a template (the template opened it, and loaded its driver)', async () => {
    const created = await t.hm.instances.create({
      image: BUSYBOX,
      name: 'tpl-button',
      cmd: ['sh', '-c', 'trap "echo stopped by power button; exit 3" TERM; echo ready; while :; do sleep 1 & wait $!; done'],
    })
    // The trap is set once the program said so.
    for await (const line of t.hm.instances.logs(created.id, { follow: true, signal: AbortSignal.timeout(30_000) })) if (line === 'ready') break
    expect(await readFile(join(t.dataDir, 'instances', created.id, 'hypeman.log'), 'utf8')).toMatch(/restored from template/)
    // No control port: the stop falls back to the ACPI power button.
    const record = JSON.parse(await readFile(join(t.dataDir, 'instances', created.id, 'instance.json'), 'utf8'))
    await rm(record.vmm.spec.channels.find((c: { name: string }) => c.name === 'hypeman.control').backend.path)
    const stopped = await t.hm.instances.stop(created.id, { timeoutMs: 20_000 })
    expect(stopped).toMatchObject({ state: 'Stopped', exitCode: 3 })
    const lines: string[] = []
    for await (const line of t.hm.instances.logs(created.id, { tail: 10 })) lines.push(line)
    expect(lines).toContain('stopped by power button')
    await t.hm.instances.delete(created.id)
  })

  it('a started-again instance boots cold on its own overlay (a template holds a root on another disk)', async () => {
    const created = await t.hm.instances.create({ image: BUSYBOX, name: 'tpl-restart', cmd: ['sh', '-c', 'sleep 600'] })
    expect((await t.sh(created.id, 'echo kept > /kept && sync')).code).toBe(0)
    await t.hm.instances.stop(created.id)
    await t.hm.instances.start(created.id)
    expect((await t.sh(created.id, 'cat /kept')).out).toBe('kept\n')
    const log = await readFile(join(t.dataDir, 'instances', created.id, 'hypeman.log'), 'utf8')
    expect(log.match(/restored from template/g)).toHaveLength(1)
    expect(log).toMatch(/booted: VMM/)
    await t.hm.instances.delete(created.id)
  })

  it('an instance runs on a tmpfs RAM file of its own, a copy of the template’s: standby streams only the devices and keeps a copy, restore reads it back', async () => {
    const created = await t.hm.instances.create({ image: BUSYBOX, name: 'tpl-standby', cmd: ['sh', '-c', 'sleep 600'] })
    const dir = join(t.dataDir, 'instances', created.id)
    const ram = () => JSON.parse(readFileSync(join(dir, 'instance.json'), 'utf8')).vmm.spec.memoryFile.path as string
    const running = ram()
    expect(running.startsWith('/dev/shm/hypeman-ts/')).toBe(true)
    expect(statSync(running).blocks * 512).toBeGreaterThan(8 * 1024 * 1024)
    // State that lives only in guest RAM: a tmpfs file and a process.
    expect((await t.sh(created.id, 'mkdir -p /mnt/ram && mount -t tmpfs none /mnt/ram && echo in-ram > /mnt/ram/x')).code).toBe(0)
    const pid = (await t.sh(created.id, 'pidof sleep')).out
    await t.hm.instances.standby(created.id)
    expect(statSync(join(dir, 'snapshot', 'vmstate')).size).toBeLessThan(1024 * 1024)
    expect(statSync(join(dir, 'snapshot', 'memory')).blocks * 512).toBeGreaterThan(8 * 1024 * 1024)
    expect(existsSync(running)).toBe(false)
    await t.hm.instances.restore(created.id)
    expect((await t.sh(created.id, 'cat /mnt/ram/x')).out).toBe('in-ram\n')
    expect((await t.sh(created.id, 'pidof sleep')).out).toBe(pid)
    expect(ram()).toBe(running)
    // Powered off, the RAM is nobody's state: the file goes.
    await t.hm.instances.stop(created.id)
    expect(existsSync(running)).toBe(false)
    await t.hm.instances.delete(created.id)
  })

  it.each([
    ['a truncated stream', 'vmstate'],
    ['a truncated RAM file', 'memory'],
  ])('a corrupted template (%s) falls back to a cold boot, is dropped, and a new one is made', async (_what, file) => {
    const [before] = await t.hm.templates!.list()
    await truncate(join(before!.snapshotDir, file), 100)
    const r = await runToEnd(`tpl-after-corrupt-${file}`, { FOO: 'recovered' })
    expect(r.inst).toMatchObject({ state: 'Stopped', exitCode: 3 })
    expect(r.out.foo).toBe('recovered')
    // Dropped, made anew by this boot (its instance then restored from the new one).
    expect(r.hypemanLog).toMatch(/template [0-9a-f]{32} made/)
    const after = await t.hm.templates!.list()
    expect(after).toHaveLength(1)
    expect(after[0]!.createdAt > before!.createdAt).toBe(true)
    expect(statSync(join(after[0]!.snapshotDir, file)).size).toBeGreaterThan(100)
  })

  it('a template made for another init or kernel is not used', async () => {
    const [before] = await t.hm.templates!.list()
    // A rebuilt initrd (it carries the init) has another identity: the same shape otherwise.
    const initrd = (before!.shape.initrd as [string, number, number])[0]
    const now = new Date()
    await utimes(initrd, now, now)
    const r = await runToEnd('tpl-new-initrd')
    expect(r.hypemanLog).not.toMatch(new RegExp(`restored from template ${before!.key}`))
    expect(r.hypemanLog).toMatch(/template [0-9a-f]{32} made/)
    const keys = (await t.hm.templates!.list()).map((t) => t.key)
    expect(keys).toContain(before!.key)
    expect(keys).toHaveLength(2)
  })

  it('hm.images.prepare makes a shape\'s template ahead of time: its first create restores it', async () => {
    const shape = { vcpus: 1, size: '192MB', overlaySize: '64MB' }
    const made = await t.hm.images.prepare(BUSYBOX, shape)
    expect(made.key).toMatch(/^[0-9a-f]{32}$/)
    expect((await t.hm.instances.list()).filter((i) => i.name.startsWith('template-'))).toEqual([])
    const created = await t.hm.instances.create({ image: BUSYBOX, name: 'tpl-prepared', cmd: ['true'], ...shape })
    await t.hm.instances.waitForState(created.id, 'Stopped', { timeout: '120s' })
    const log = await readFile(join(t.dataDir, 'instances', created.id, 'hypeman.log'), 'utf8')
    expect(log).toContain(`restored from template ${made.key}`)
    expect(log).not.toMatch(/template [0-9a-f]{32} made/)
    await t.hm.instances.delete(created.id)
    // A shape that boots cold has no template to make.
    await expect(t.hm.images.prepare(BUSYBOX, { ...shape, hotplugSize: '256MB' } as never)).rejects.toMatchObject({ code: 'not_supported' })
  })

  it('deleting an image drops its templates and their warm VMMs; other images keep theirs', async () => {
    const image = `${reg.open}/busybox-plain:latest`
    const pulled = await t.hm.images.pull(image)
    const busybox = await t.hm.images.pull(BUSYBOX)
    expect(pulled.digest).not.toBe(busybox.digest)
    const kept = await t.hm.images.prepare(BUSYBOX, { vcpus: 1, size: '192MB', overlaySize: '64MB' })
    const made = await t.hm.images.prepare(image, { vcpus: 1, size: '160MB', overlaySize: '64MB' })
    expect(made.shape.imageDigest).toBe(pulled.digest)
    const deadline = Date.now() + 60_000
    while (!(t.hm.warm!.ready[made.key]! > 0)) {
      expect(Date.now() < deadline, 'no warm VMM for the new template within 60 s').toBe(true)
      await new Promise((r) => setTimeout(r, 100))
    }
    const before = warmQemus(t.dataDir)
    const othersBefore = (await t.hm.templates!.list()).filter((x) => x.key !== made.key).map((x) => x.key).sort()
    expect(othersBefore).toContain(kept.key)
    await t.hm.images.delete(image)
    expect((await t.hm.templates!.list()).map((x) => x.key).sort()).toEqual(othersBefore)
    expect(existsSync(made.dir)).toBe(false)
    expect(t.hm.warm!.ready[made.key]).toBeUndefined()
    expect(warmQemus(t.dataDir)).toHaveLength(before.length - 1)
  })

  it('a shape with volumes boots cold', async () => {
    const vol = await t.hm.volumes.create({ name: 'tpl-vol', size: '16MB' })
    const created = await t.hm.instances.create({ image: BUSYBOX, name: 'tpl-vol-user', cmd: ['true'], volumes: [{ volumeId: vol.id, mountPath: '/data' }] })
    await t.hm.instances.waitForState(created.id, 'Stopped', { timeout: '120s' })
    const log = await readFile(join(t.dataDir, 'instances', created.id, 'hypeman.log'), 'utf8')
    expect(log).not.toMatch(/template/)
    await t.hm.instances.delete(created.id)
    await t.hm.volumes.delete(vol.id)
  })
})

describe('templates off', () => {
  it('boots every instance cold', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'hm-templates-off-'))
    const off = await Hypeman.open({ dataDir: dir, network: false, templates: false, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' } })
    try {
      expect(off.templates).toBeUndefined()
      const created = await off.instances.create({ image: BUSYBOX, name: 'cold', cmd: ['true'] })
      await off.instances.waitForState(created.id, 'Stopped', { timeout: '120s' })
      const log = await readFile(join(dir, 'instances', created.id, 'hypeman.log'), 'utf8')
      expect(log).not.toMatch(/template/)
      await off.instances.delete(created.id)
    } finally {
      await off.close()
      await rm(dir, { recursive: true, force: true })
    }
  })
})
