/**
 * Fork with real QEMU VMs under TCG: from Stopped (disks), Standby (disks and memory), Running
 * (standby, fork, restore); each fork its own machine, the source undisturbed; bad input leaves
 * nothing behind.
 */
import { existsSync, readFileSync } from 'node:fs'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, inject, it } from 'vitest'
import { fileManager } from '../support/manager.js'

const reg = inject('registry')
const BUSYBOX = `${reg.open}/busybox:latest`

// A program with state only in memory: a counter it prints to a file each tick.
const COUNTER = ['sh', '-c', 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done']

const t = fileManager('hm-fork-', { network: false, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB', skipKernelHeaders: true } })

const sh = async (id: string, script: string) => {
  const r = await t.hm.instances.exec(id, { argv: ['sh', '-c', script] })
  expect(r.exitCode, r.stderr.toString()).toBe(0)
  return r.stdout.toString().trim()
}

const identity = (id: string) => sh(id, 'echo "$(hostname) $(cat /etc/machine-id) $(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n")"')

/** The pid of the instance's VMM, from its record. */
function vmmPid(id: string): number {
  return JSON.parse(readFileSync(join(t.dataDir, 'instances', id, 'instance.json'), 'utf8')).vmm.pid
}

describe('fork', () => {
  it('from Stopped: copies the disks; the fork boots with them, the source keeps its own', async () => {
    const src = await t.hm.instances.create({ image: BUSYBOX, name: 'stopped-src', cmd: ['sleep', '600'] })
    await sh(src.id, 'echo from-source > /data.txt; sync')
    await t.hm.instances.stop(src.id)
    const f = await t.hm.instances.fork('stopped-src', { name: 'stopped-fork', targetState: 'Running' })
    expect(f).toMatchObject({ name: 'stopped-fork', state: 'Running' })
    expect(await sh(f.id, 'cat /data.txt')).toBe('from-source')
    await sh(f.id, 'echo from-fork > /data.txt; sync')
    const [host, machineId] = (await identity(f.id)).split(' ')
    expect(host).toBe('stopped-fork')
    expect((await t.hm.instances.get(src.id)).state).toBe('Stopped')
    await t.hm.instances.start(src.id)
    expect(await sh(src.id, 'cat /data.txt')).toBe('from-source')
    expect((await identity(src.id)).split(' ')[1]).not.toBe(machineId)
    // Default target: the source's state (Stopped).
    await t.hm.instances.stop(src.id)
    const g = await t.hm.instances.fork(src.id, { name: 'stopped-fork-2' })
    expect(g.state).toBe('Stopped')
  })

  it('from Standby: the fork goes on from the source\'s memory, as a machine of its own', async () => {
    const src = await t.hm.instances.create({ image: BUSYBOX, name: 'standby-src', cmd: COUNTER })
    await new Promise((r) => setTimeout(r, 1500))
    await t.hm.instances.standby(src.id)
    const f = await t.hm.instances.fork(src.id, { name: 'standby-fork', targetState: 'Running' })
    expect(f.state).toBe('Running')
    // The same program, carried on from the source's count (a cold boot would start from 1).
    const n1 = Number(await sh(f.id, 'cat /tmp/count'))
    await new Promise((r) => setTimeout(r, 1000))
    const n2 = Number(await sh(f.id, 'cat /tmp/count'))
    expect(n1).toBeGreaterThan(3)
    expect(n2).toBeGreaterThan(n1)
    // The source: still on standby, then restored as it was.
    expect((await t.hm.instances.get(src.id)).state).toBe('Standby')
    await t.hm.instances.restore(src.id)
    const [srcHost, srcMachine, srcRandom] = (await identity(src.id)).split(' ')
    const [forkHost, forkMachine, forkRandom] = (await identity(f.id)).split(' ')
    expect([srcHost, forkHost]).toEqual(['standby-src', 'standby-fork'])
    expect(forkMachine).toMatch(/^[0-9a-f]{32}$/)
    expect(forkMachine).not.toBe(srcMachine)
    expect(forkRandom).not.toBe(srcRandom)
    const log = await t.hm.instances.logs(f.id, { source: 'hypeman', tail: 50 })
    const lines: string[] = []
    for await (const l of log) lines.push(l)
    expect(lines.join('\n')).toMatch(/identity: reseeded/)
  })

  it('from Running with fromRunning: to Running, a live copy of the paused source (no snapshot); both run, and a delete ends the copy\'s VMM', async () => {
    const src = await t.hm.instances.create({ image: BUSYBOX, name: 'running-src', cmd: COUNTER })
    await expect(t.hm.instances.fork(src.id, { name: 'running-fork' })).rejects.toMatchObject({ code: 'conflict', field: 'state' })
    // A standby leaves a warm VMM of the machine behind for a restore: the copy takes it.
    await t.hm.instances.standby(src.id)
    await t.hm.instances.restore(src.id)
    const restoreSlots = () => Object.entries(t.hm.warm!.ready).filter(([k, n]) => k.startsWith('restore-') && n > 0).length
    for (let i = 0; i < 300 && restoreSlots() === 0; i++) await new Promise((r) => setTimeout(r, 100))
    expect(restoreSlots()).toBe(1)
    const srcPid = vmmPid(src.id)
    const f = await t.hm.instances.fork(src.id, { name: 'running-fork', fromRunning: true })
    expect(f.state).toBe('Running')
    expect((await t.hm.instances.get(src.id)).state).toBe('Running')
    // The source was never stopped: the same VMM goes on.
    expect(vmmPid(src.id)).toBe(srcPid)
    expect(await readFile(join(t.dataDir, 'instances', f.id, 'hypeman.log'), 'utf8')).toMatch(/cloned: VMM pid \d+ \(tcg, a clone, in a warm VMM\)/)
    // At once a second one: the first took the waiting VMM (the refill waits a second), so this
    // fork's claim spawns one, and the source's RAM is copied into it while it starts.
    expect(restoreSlots()).toBe(0)
    const f2 = await t.hm.instances.fork(src.id, { name: 'running-fork-2', fromRunning: true })
    expect(await readFile(join(t.dataDir, 'instances', f2.id, 'hypeman.log'), 'utf8')).toMatch(/cloned: VMM pid \d+ \(tcg, a clone, in a warm VMM\)/)
    expect(Number(await sh(f2.id, 'cat /tmp/count'))).toBeGreaterThan(0)
    const [srcHost, srcMachine] = (await identity(src.id)).split(' ')
    const [f2Host, f2Machine] = (await identity(f2.id)).split(' ')
    expect([f2Host, f2Machine]).toEqual(['running-fork-2', expect.not.stringMatching(srcMachine!)])
    expect(srcHost).toBe('running-src')
    await t.hm.instances.delete(f2.id)
    const counted = Number(await sh(f.id, 'cat /tmp/count'))
    expect(Number(await sh(src.id, 'cat /tmp/count'))).toBeGreaterThan(0)
    expect(counted).toBeGreaterThan(0)
    const forkPid = vmmPid(f.id)
    await t.hm.instances.delete(f.id)
    expect(existsSync(`/proc/${forkPid}`) && !readFileSync(`/proc/${forkPid}/status`, 'utf8').includes('zombie')).toBe(false)
    const fs = await t.hm.instances.fork(src.id, { name: 'running-fork-standby', fromRunning: true, targetState: 'Standby' })
    expect(fs.state).toBe('Standby')
  })

  it('refuses bad input with a typed error and leaves nothing behind', async () => {
    const before = (await readdir(join(t.dataDir, 'instances'))).sort()
    await expect(t.hm.instances.fork('no-such-instance', { name: 'x' })).rejects.toMatchObject({ code: 'not_found' })
    await expect(t.hm.instances.fork('stopped-src', { name: 'stopped-fork' })).rejects.toMatchObject({ code: 'conflict', field: 'name' })
    await expect(t.hm.instances.fork('stopped-src', { name: 'Bad_Name' })).rejects.toMatchObject({ code: 'invalid_input', field: 'name' })
    await expect(t.hm.instances.fork('stopped-src', { name: 'ok-name', targetState: 'Paused' as never })).rejects.toMatchObject({ field: 'targetState' })
    // A source still being created.
    const creating = t.hm.instances.create({ image: BUSYBOX, name: 'creating-src', cmd: ['sleep', '600'] })
    let refused: unknown
    for (let i = 0; i < 200 && !refused; i++) {
      refused = await t.hm.instances.fork('creating-src', { name: 'creating-fork' }).then(
        () => new Error('forked a Creating instance'),
        (e: { code?: string }) => (e.code === 'not_found' ? undefined : e),
      )
      if (!refused) await new Promise((r) => setTimeout(r, 20))
    }
    expect(refused).toMatchObject({ code: 'conflict', field: 'state' })
    const made = await creating
    await t.hm.instances.delete(made.id)
    expect((await readdir(join(t.dataDir, 'instances'))).sort()).toEqual(before)
  })
})
