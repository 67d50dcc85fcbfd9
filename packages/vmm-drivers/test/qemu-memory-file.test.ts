/**
 * Guest RAM in a shared file (`VmSpec.memoryFile`, shared), with real QEMU under TCG and the test
 * guest: a standby streams only the devices' state and copies the file into the snapshot; a
 * restore copies it back into the VM's own file; a warm VM takes the RAM by a copy into its own
 * file, which becomes the spec's; a clone copies the source's file and migrates only the devices.
 */
import { existsSync } from 'node:fs'
import { readdir, readFile, rename, rm, stat, truncate, writeFile } from 'node:fs/promises'
import { getPriority } from 'node:os'
import { createConnection } from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { QemuDriver, type DiskSpec, type QemuPausedVm, type QemuRunningVm, type RunningVm, type VmSpec, type WarmVm } from '../src/index.js'
import { guestSpec, prepareGuest, qemuProcessesMentioning, roundTrip, waitForText, type TestGuest } from './support/guest.js'

const MiB = 1024 * 1024
const quiet = { debug() {}, info() {}, warn() {}, error() {} }
const driver = new QemuDriver({ logger: quiet })
let guest: TestGuest
const specs: VmSpec[] = []

async function disk(path: string, mark: string): Promise<DiskSpec> {
  await writeFile(path, mark)
  await truncate(path, 8 * MiB)
  return { path, serial: 'hm-test' }
}

/** A spec whose RAM is the shared file `<dir>/<name>.ram`. */
async function spec(name: string, mark: string): Promise<VmSpec> {
  const s = await guestSpec(guest, name, { disks: [await disk(join(guest.dir, `${name}.img`), mark)], memoryFile: { path: join(guest.dir, `${name}.ram`), shared: true } })
  specs.push(s)
  return s
}

const echoPath = (s: VmSpec) => s.channels!.find((c) => c.name === 'test.echo')!.backend.path
const ticks = (text: string) => [...text.matchAll(/HM-TICK (\d+)/g)].map((m) => Number(m[1]))

async function ask(s: VmSpec, line: string): Promise<string> {
  const sock = createConnection(echoPath(s))
  try {
    return await roundTrip(sock, line)
  } finally {
    sock.destroy()
  }
}

/** Bytes the file takes on disk: the pages the guest touched, not its size. */
async function allocated(path: string): Promise<number> {
  return (await stat(path)).blocks * 512
}

/** A test guest started on spec `name` (its disk holding `mark`), then paused: a clone's source. */
async function pausedSource(name: string, mark: string): Promise<{ src: VmSpec; paused: QemuPausedVm }> {
  const src = await spec(name, mark)
  const running = await driver.start(src)
  await waitForText(src.consoleLog, /HM-READY/, 60_000)
  return { src, paused: await running.pause() }
}

/** The clone adopted while the source's RAM file is not at its path: a copy made now would fail. */
async function adoptWithSourceRamAway(src: VmSpec, paused: QemuPausedVm, target: VmSpec, warm: WarmVm): Promise<RunningVm> {
  const away = `${src.memoryFile!.path}.away`
  await rename(src.memoryFile!.path, away)
  try {
    return await warm.adopt(target, { migrateFrom: paused, ramFrom: src.memoryFile!.path })
  } finally {
    await rename(away, src.memoryFile!.path)
  }
}

/** Less than a MiB of RAM went over the migration; both run on, each with its own disk and RAM file; both end. */
async function checkClone(src: VmSpec, paused: QemuPausedVm, target: VmSpec, clone: RunningVm, srcMark: string, cloneMark: string): Promise<void> {
  try {
    const sent = await paused.execute<{ ram?: { transferred: number } }>('query-migrate')
    expect(sent.ram?.transferred ?? 0).toBeLessThan(1 * MiB)
    const resumed = await paused.resume()
    await waitForText(target.consoleLog, /HM-TICK \d+/, 20_000)
    expect(await readFile(target.consoleLog, 'utf8')).not.toMatch(/HM-BOOTED/)
    expect(await ask(target, 'read-disk hm-test')).toBe(`disk:${cloneMark}`)
    expect(await ask(src, 'read-disk hm-test')).toBe(`disk:${srcMark}`)
    const [a, b] = await Promise.all([stat(src.memoryFile!.path), stat(target.memoryFile!.path)])
    expect(a.ino).not.toBe(b.ino)
    await resumed.kill()
  } finally {
    await clone.kill()
  }
}

beforeAll(async () => {
  guest = await prepareGuest()
}, 120_000)

afterAll(async () => {
  for (const s of specs) await driver.destroy({ runtimeDir: s.runtimeDir })
  for (const s of specs) expect(await qemuProcessesMentioning(s.runtimeDir)).toEqual([])
  if (guest) await rm(guest.dir, { recursive: true, force: true })
})

describe('guest RAM in a shared file', { timeout: 120_000 }, () => {
  it('standby streams only the devices and copies the RAM file into the snapshot; a restore copies it back and the guest carries on', async () => {
    const s = await spec('a', 'AAAA')
    const vm = await driver.start(s)
    await waitForText(s.consoleLog, /HM-READY/, 60_000)
    expect(await allocated(s.memoryFile!.path)).toBeGreaterThan(8 * MiB)
    const dir = join(guest.dir, 'a-snap')
    const snap = await vm.standby(dir)
    // A full stream of this guest is tens of MB (qemu-vm.test.ts); the devices alone are not one.
    expect((await stat(join(dir, 'vmstate'))).size).toBeLessThan(1 * MiB)
    const meta = JSON.parse(await readFile(join(dir, 'snapshot.json'), 'utf8'))
    expect(meta.ramInFile).toBe('memory')
    expect(await driver.snapshotRamFile(dir)).toBe(join(dir, 'memory'))
    expect(await driver.snapshotRamFile(join(guest.dir, 'no-such-snapshot'))).toBeUndefined()
    expect(await allocated(join(dir, 'memory'))).toBeGreaterThan(8 * MiB)
    expect(snap.bytes).toBeGreaterThan(8 * MiB)
    const before = Math.max(...ticks(await readFile(s.consoleLog, 'utf8')))
    // The VM's own file is not the snapshot: whatever happens to it, the restore copies the RAM back.
    await rm(s.memoryFile!.path)

    // The snapshot's own RAM file, shared, would be written by the guest: refused.
    await expect(driver.start({ ...s, memoryFile: { path: join(dir, 'memory'), shared: true }, restoreFrom: dir })).rejects.toMatchObject({ code: 'invalid_input', field: 'memoryFile' })
    // A snapshot whose RAM is missing or of another size: refused before anything runs, no process left.
    await rename(join(dir, 'memory'), join(guest.dir, 'a-ram-away'))
    await expect(driver.start({ ...s, restoreFrom: dir })).rejects.toMatchObject({ code: 'restore_failed', field: 'restoreFrom' })
    await writeFile(join(dir, 'memory'), 'short')
    await expect(driver.start({ ...s, restoreFrom: dir })).rejects.toMatchObject({ code: 'restore_failed', field: 'restoreFrom' })
    expect(await qemuProcessesMentioning(s.runtimeDir)).toEqual([])
    await rename(join(guest.dir, 'a-ram-away'), join(dir, 'memory'))

    const restored = await driver.start({ ...s, restoreFrom: dir })
    try {
      await waitForText(s.consoleLog, new RegExp(`HM-TICK ${before + 2}\\b`), 20_000)
      expect((await readFile(s.consoleLog, 'utf8')).match(/HM-BOOTED/g)).toHaveLength(1)
      expect(await ask(s, 'read-disk hm-test')).toBe('disk:AAAA')
      expect(await allocated(s.memoryFile!.path)).toBeGreaterThan(8 * MiB)
    } finally {
      await restored.kill()
    }
  })

  it('a warm VM adopting a restore copies the RAM into its own file, which becomes the spec’s', async () => {
    const s = await spec('b', 'BBBB')
    const vm = await driver.start(s)
    await waitForText(s.consoleLog, /HM-READY/, 60_000)
    const dir = join(guest.dir, 'b-snap')
    await vm.standby(dir)
    const before = Math.max(...ticks(await readFile(s.consoleLog, 'utf8')))
    const slot = await spec('b-slot', '\0\0\0\0')
    const warm = await driver.spawnWarm(slot)
    const restored = (await warm.adopt({ ...s, restoreFrom: dir })) as QemuRunningVm
    try {
      await waitForText(s.consoleLog, new RegExp(`HM-TICK ${before + 2}\\b`), 20_000)
      expect((await readFile(s.consoleLog, 'utf8')).match(/HM-BOOTED/g)).toHaveLength(1)
      expect(existsSync(slot.memoryFile!.path)).toBe(false)
      // The VM maps the file at the spec's path now (the slot's inode, moved there).
      const maps = await readFile(`/proc/${restored.pid}/maps`, 'utf8')
      expect(maps).toContain(s.memoryFile!.path)
      expect(maps).not.toContain('(deleted)')
    } finally {
      await restored.kill()
    }
  })

  it('a clone copies the source’s RAM file and migrates only the devices; both go on, each on its own RAM', async () => {
    const { src, paused } = await pausedSource('c', 'SSSS')
    const target = await spec('c-clone', 'KKKK')
    // Spawned for an adoption that follows at once: at the normal priority from the start.
    const warm = await driver.spawnWarm(target, { now: true })
    expect(new Set(await Promise.all((await readdir(`/proc/${warm.pid}/task`)).map((t) => getPriority(Number(t)))))).toEqual(new Set([0]))
    const clone = await warm.adopt(target, { migrateFrom: paused, ramFrom: src.memoryFile!.path })
    await checkClone(src, paused, target, clone, 'SSSS', 'KKKK')
  })

  it('a clone spawned with ramFrom gets the source’s RAM while QEMU starts, and its adoption does not copy it again', async () => {
    const { src, paused } = await pausedSource('e', 'EEEE')
    const target = await spec('e-clone', 'FFFF')
    const warm = await driver.spawnWarm(target, { now: true, ramFrom: src.memoryFile!.path })
    expect((await readFile(target.memoryFile!.path)).equals(await readFile(src.memoryFile!.path))).toBe(true)
    expect(await allocated(target.memoryFile!.path)).toBeLessThan(src.memoryBytes)
    const clone = await adoptWithSourceRamAway(src, paused, target, warm)
    await checkClone(src, paused, target, clone, 'EEEE', 'FFFF')
  })

  it('a waiting warm VM preloads a clone source’s RAM; the adoption waits for that copy, and a failed one fails it', async () => {
    const { src, paused } = await pausedSource('g', 'GGGG')
    // A preload from a file of another size fails, and so does the adoption that counts on it.
    const bad = await spec('g-bad', '\0')
    const badWarm = await driver.spawnWarm(bad, { now: true })
    const short = join(guest.dir, 'g-short.ram')
    await writeFile(short, 'x')
    await expect(badWarm.preloadRam!(short)).rejects.toMatchObject({ code: 'restore_failed' })
    await expect(badWarm.adopt(bad, { migrateFrom: paused, ramFrom: short })).rejects.toMatchObject({ code: 'restore_failed' })
    await badWarm.exited
    const target = await spec('g-clone', 'HHHH')
    const warm = await driver.spawnWarm(target, { now: true })
    await warm.preloadRam!(src.memoryFile!.path)
    expect((await readFile(target.memoryFile!.path)).equals(await readFile(src.memoryFile!.path))).toBe(true)
    const clone = await adoptWithSourceRamAway(src, paused, target, warm)
    await checkClone(src, paused, target, clone, 'GGGG', 'HHHH')
  })

  it('refuses a spawn with ramFrom that cannot take it, naming ramFrom, and leaves no process', async () => {
    const s = await spec('h', 'IIII')
    const other = join(guest.dir, 'h-other.ram')
    await writeFile(other, 'not the guest size')
    await expect(driver.spawnWarm(s, { ramFrom: other })).rejects.toMatchObject({ code: 'invalid_input', field: 'ramFrom' })
    await expect(driver.spawnWarm(s, { ramFrom: join(guest.dir, 'missing.ram') })).rejects.toMatchObject({ field: 'ramFrom' })
    const { memoryFile: _none, ...anonymous } = s
    await truncate(other, s.memoryBytes)
    await expect(driver.spawnWarm(anonymous, { ramFrom: other })).rejects.toMatchObject({ field: 'ramFrom' })
    await expect(driver.spawnWarm({ ...s, restoreFrom: join(guest.dir, 'b-snap') }, { ramFrom: other })).rejects.toMatchObject({ field: 'ramFrom' })
    expect(await qemuProcessesMentioning(s.runtimeDir)).toEqual([])
  })

  it('refuses ramFrom without a clone source, and the warm VM is gone after', async () => {
    const s = await spec('d', 'DDDD')
    const warm = await driver.spawnWarm(s)
    await expect(warm.adopt(s, { ramFrom: s.memoryFile!.path })).rejects.toMatchObject({ code: 'invalid_state' })
    await warm.exited
    expect(await qemuProcessesMentioning(s.runtimeDir)).toEqual([])
  })
})
