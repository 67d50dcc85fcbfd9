/**
 * Warm VMs (QemuDriver.spawnWarm, warm.ts) with real QEMU under TCG and the test guest: a QEMU
 * spawned on files of its own becomes another spec's VM, whose disk, logs and sockets it then
 * uses; what cannot be adopted is refused and leaves no process.
 */
import { existsSync } from 'node:fs'
import { readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises'
import { getPriority } from 'node:os'
import { createConnection } from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { QemuDriver, type DiskSpec, type QemuRunningVm, type VmSpec } from '../src/index.js'
import { guestSpec, prepareGuest, qemuProcessesMentioning, roundTrip, waitForText, type TestGuest } from './support/guest.js'

const MiB = 1024 * 1024
const quiet = { debug() {}, info() {}, warn() {}, error() {} }
const driver = new QemuDriver({ logger: quiet })
let guest: TestGuest
const specs: VmSpec[] = []

/** A disk of `size` bytes whose first bytes are `mark` (the guest reads them back). */
async function disk(path: string, mark: string, size = 8 * MiB): Promise<DiskSpec> {
  await writeFile(path, mark)
  await truncate(path, size)
  return { path, serial: 'hm-test' }
}

async function spec(name: string, d: DiskSpec, extra: Partial<VmSpec> = {}): Promise<VmSpec> {
  const s = await guestSpec(guest, name, { disks: [d], ...extra })
  specs.push(s)
  return s
}

/** A line on the socket port at `path`, on a connection of its own; the first reply line. */
async function ask(path: string, line: string): Promise<string> {
  const sock = createConnection(path)
  try {
    return await roundTrip(sock, line)
  } finally {
    sock.destroy()
  }
}

const echoPath = (s: VmSpec) => s.channels!.find((c) => c.name === 'test.echo')!.backend.path

let source: VmSpec
let snapshot: string

beforeAll(async () => {
  guest = await prepareGuest()
  source = await spec('source', await disk(join(guest.dir, 'source.img'), 'AAAA'))
  const vm = await driver.start(source)
  await waitForText(source.consoleLog, /HM-READY/, 60_000)
  snapshot = join(guest.dir, 'snap')
  await vm.standby(snapshot)
}, 120_000)

afterAll(async () => {
  for (const s of specs) await driver.destroy({ runtimeDir: s.runtimeDir })
  for (const s of specs) expect(await qemuProcessesMentioning(s.runtimeDir)).toEqual([])
  if (guest) await rm(guest.dir, { recursive: true, force: true })
})

describe('a warm QEMU', { timeout: 120_000 }, () => {
  it('spawned with a snapshot loaded, becomes another spec’s VM: its disk, its logs (after what they held), its sockets', async () => {
    const slot = await spec('slot', await disk(join(guest.dir, 'slot.img'), '\0\0\0\0'))
    const warm = await driver.spawnWarm({ ...slot, restoreFrom: snapshot })
    expect(existsSync(`/proc/${warm.pid}`)).toBe(true)
    // Waiting at the lowest CPU priority, every thread of it.
    const nice = async () => Promise.all((await readdir(`/proc/${warm.pid}/task`)).map((t) => getPriority(Number(t))))
    expect(new Set(await nice())).toEqual(new Set([19]))
    // Paused: the guest's tick counter does not move while it waits.
    await new Promise((r) => setTimeout(r, 1500))
    expect(await readFile(slot.consoleLog, 'utf8')).not.toMatch(/HM-TICK/)

    const target = await spec('target', await disk(join(guest.dir, 'target.img'), 'BBBB'))
    await writeFile(target.consoleLog, 'EARLIER BOOT\n')
    let recorded: string | undefined
    const vm: QemuRunningVm = (await warm.adopt({ ...target, restoreFrom: snapshot }, { onSpawn: (p) => void (recorded = p.controlSocket) })) as QemuRunningVm
    try {
      expect(vm.pid).toBe(warm.pid)
      expect(new Set(await nice())).toEqual(new Set([0]))
      expect(recorded).toBe(join(target.runtimeDir, 'qmp.sock'))
      expect(vm.persisted.spec.consoleLog).toBe(target.consoleLog)
      expect(await vm.state()).toBe('running')
      // The guest carries on from the snapshot, writing into the target's log after what it held.
      const text = (await waitForText(target.consoleLog, /HM-TICK \d+/, 20_000)).input!
      expect(text.startsWith('EARLIER BOOT\n')).toBe(true)
      expect(text).not.toMatch(/HM-BOOTED/)
      // Its disk is the target's file, its echo port the target's socket.
      expect(await ask(echoPath(target), 'read-disk hm-test')).toBe('disk:BBBB')
      expect(await ask(echoPath(target), 'hello')).toBe('echo:hello')
      expect(existsSync(echoPath(slot))).toBe(false)
      expect(existsSync(slot.runtimeDir)).toBe(false)
      const nodes = await vm.execute<{ 'node-name': string; file: string }[]>('query-named-block-nodes')
      expect(nodes.map((n) => n.file)).not.toContain(slot.disks![0]!.path)
    } finally {
      await vm.kill()
    }
    expect(await qemuProcessesMentioning(slot.runtimeDir)).toEqual([])
  })

  it('spawned empty, loads the snapshot the adopting spec names', async () => {
    const slot = await spec('slot2', await disk(join(guest.dir, 'slot2.img'), '\0\0\0\0'))
    const warm = await driver.spawnWarm(slot)
    const target = await spec('target2', await disk(join(guest.dir, 'target2.img'), 'CCCC'))
    const vm = await warm.adopt({ ...target, restoreFrom: snapshot })
    try {
      await waitForText(target.consoleLog, /HM-TICK \d+/, 20_000)
      expect(await ask(echoPath(target), 'read-disk hm-test')).toBe('disk:CCCC')
    } finally {
      await vm.kill()
    }
  })

  it('clones a paused VM by live migration: the clone goes on from its moment on its own disk, and the source goes on too', async () => {
    const src = await spec('clone-src', await disk(join(guest.dir, 'clone-src.img'), 'SSSS'))
    const running = await driver.start(src)
    await waitForText(src.consoleLog, /HM-READY/, 60_000)
    const paused = await running.pause()
    const copy = join(guest.dir, 'clone.img')
    await writeFile(copy, await readFile(src.disks![0]!.path))
    await writeFile(copy, 'KKKK', { flag: 'r+' })
    const target = await spec('clone', { path: copy, serial: 'hm-test' })
    const warm = await driver.spawnWarm(target)
    const clone = await warm.adopt(target, { migrateFrom: paused })
    try {
      const resumed = await paused.resume()
      expect(await resumed.state()).toBe('running')
      // The clone did not boot: it carries on counting from the source's moment.
      await waitForText(target.consoleLog, /HM-TICK \d+/, 20_000)
      expect(await readFile(target.consoleLog, 'utf8')).not.toMatch(/HM-BOOTED/)
      expect(await ask(echoPath(target), 'read-disk hm-test')).toBe('disk:KKKK')
      expect(await ask(echoPath(src), 'read-disk hm-test')).toBe('disk:SSSS')
      expect(existsSync(join(target.runtimeDir, 'migrate.sock'))).toBe(false)
      await resumed.kill()
    } finally {
      await clone.kill()
    }
  })

  it('refuses what it cannot adopt, and the process is gone after', async () => {
    await expect(driver.spawnWarm({ ...(await spec('slot3', await disk(join(guest.dir, 'slot3.img'), 'x'))), disks: [{ ...(await disk(join(guest.dir, 'thr.img'), 'x')), throttle: { bytesPerSec: 1_000_000 } }] })).rejects.toMatchObject({
      code: 'invalid_input',
      field: 'spec',
    })
    for (const [name, change] of [
      ['other-memory', async (s: VmSpec) => ({ ...s, memoryBytes: 512 * MiB })],
      ['other-size', async (s: VmSpec) => ({ ...s, disks: [await disk(join(guest.dir, 'small.img'), 'DDDD', 4 * MiB)] })],
      ['other-snapshot', async (s: VmSpec) => ({ ...s, restoreFrom: join(guest.dir, 'nowhere') })],
    ] as const) {
      const slot = await spec(`slot-${name}`, await disk(join(guest.dir, `slot-${name}.img`), '\0'))
      const warm = await driver.spawnWarm({ ...slot, restoreFrom: snapshot })
      const target = await spec(`target-${name}`, await disk(join(guest.dir, `target-${name}.img`), 'EEEE'))
      await expect(warm.adopt(await change({ ...target, restoreFrom: snapshot }))).rejects.toMatchObject({ code: 'invalid_state' })
      await warm.exited
      expect(existsSync(`/proc/${warm.pid}`)).toBe(false)
      expect(await qemuProcessesMentioning(slot.runtimeDir)).toEqual([])
      await expect(warm.adopt({ ...target, restoreFrom: snapshot })).rejects.toMatchObject({ code: 'invalid_state' })
    }
  })
})
