/**
 * A VM outlives the Node process that started it, and a fresh driver in another process finds it
 * again from what was persisted. The starting process here is a real separate Node process.
 */
import { existsSync } from 'node:fs'
import { readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { CommandError, readJsonIfExists, run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { QemuDriver, type PersistedVm, type VmSpec } from '../src/index.js'
import { guestSpec, prepareGuest, qemuProcessesMentioning, waitForText, type TestGuest } from './support/guest.js'

const repoRoot = fileURLToPath(new URL('../../..', import.meta.url))
const script = fileURLToPath(new URL('./support/start-vm.ts', import.meta.url))
const tsx = join(repoRoot, 'node_modules/.bin/tsx')

let guest: TestGuest
const specs: VmSpec[] = []
const driver = new QemuDriver()

/** Starts a VM from another Node process that then ends as `mode` says; returns what it persisted. */
async function startElsewhere(spec: VmSpec, mode: 'exit' | 'die-persisted' | 'die-unrecorded'): Promise<PersistedVm | undefined> {
  const specPath = join(guest.dir, `${spec.name}.spec.json`)
  const persistPath = join(guest.dir, `${spec.name}.vmm.json`)
  await writeFile(specPath, JSON.stringify(spec))
  try {
    await run(tsx, [script, specPath, persistPath, mode], { cwd: repoRoot, timeoutMs: 60_000 })
    expect(mode).toBe('exit')
  } catch (err) {
    if (!(err instanceof CommandError) || mode === 'exit') throw err
    expect(err.signal ?? err.exitCode).toBeTruthy()
  }
  return readJsonIfExists<PersistedVm>(persistPath)
}

beforeAll(async () => {
  guest = await prepareGuest()
})

afterAll(async () => {
  for (const spec of specs) await driver.destroy({ runtimeDir: spec.runtimeDir })
  for (const spec of specs) expect(await qemuProcessesMentioning(spec.runtimeDir)).toEqual([])
  if (guest) await rm(guest.dir, { recursive: true, force: true })
})

describe('reattach after the starting process is gone', { timeout: 120_000 }, () => {
  it('attaches with a fresh driver, talks to the guest, and observes its exit', async () => {
    const spec = await guestSpec(guest, 'elsewhere')
    specs.push(spec)
    const persisted = await startElsewhere(spec, 'exit')
    expect(persisted).toBeDefined()
    const p = persisted as PersistedVm
    expect(driver.isAlive(p)).toBe(true)

    const vm = await new QemuDriver().attach(p)
    expect(vm.phase).toBe('running')
    expect(vm.pid).toBe(p.pid)
    expect(await vm.state()).toBe('running')
    await waitForText(spec.consoleLog, /HM-READY/)
    const echo = await vm.connectChannel('test.echo')
    const reply = new Promise<string>((resolve) => echo.once('data', (d: Buffer) => resolve(d.toString().trim())))
    echo.write('hello again\n')
    expect(await reply).toBe('echo:hello again')
    echo.write('poweroff\n')
    const exit = await vm.waitForExit({ timeoutMs: 30_000 })
    echo.destroy()
    // Not our child: the reason comes from QMP, the exit code is unknowable.
    expect(exit).toMatchObject({ reason: 'poweroff', code: null, vmmReason: 'guest-shutdown' })
    expect(driver.isAlive(p)).toBe(false)
    expect(existsSync(p.controlSocket)).toBe(false)
    await expect(driver.attach(p)).rejects.toMatchObject({ code: 'vmm_not_running' })
    await driver.destroy(p)
    await driver.destroy(p)
  })

  it('attaches to a paused VM as paused after a detach, and sees a kill from outside as killed', async () => {
    const spec = await guestSpec(guest, 'pausedelse')
    specs.push(spec)
    const p = (await startElsewhere(spec, 'exit')) as PersistedVm
    const first = await driver.attach(p)
    expect(first.phase).toBe('running')
    if (first.phase !== 'running') throw new Error('unreachable')
    const paused = await first.pause()
    await paused.detach()
    await expect(paused.state()).rejects.toMatchObject({ code: 'invalid_state' })
    expect(driver.isAlive(p)).toBe(true)

    const second = await new QemuDriver().attach(p)
    expect(second.phase).toBe('paused')
    process.kill(p.pid, 'SIGKILL')
    const exit = await second.waitForExit({ timeoutMs: 10_000 })
    expect(exit).toMatchObject({ reason: 'killed', code: null })
    expect(await qemuProcessesMentioning(spec.runtimeDir)).toEqual([])
    expect(existsSync(p.controlSocket)).toBe(false)
  })

  it('ends a QEMU whose starter was killed mid-start, by its record or by its runtime dir alone', async () => {
    const recorded = await guestSpec(guest, 'diedrec')
    const unrecorded = await guestSpec(guest, 'diedunrec')
    specs.push(recorded, unrecorded)

    const p = (await startElsewhere(recorded, 'die-persisted')) as PersistedVm
    expect(p).toBeDefined()
    expect(driver.isAlive(p)).toBe(true)
    await driver.destroy(p)
    expect(driver.isAlive(p)).toBe(false)
    expect(await qemuProcessesMentioning(recorded.runtimeDir)).toEqual([])
    expect(existsSync(join(recorded.runtimeDir, 'qmp.sock'))).toBe(false)

    expect(await startElsewhere(unrecorded, 'die-unrecorded')).toBeUndefined()
    expect(await qemuProcessesMentioning(unrecorded.runtimeDir)).toHaveLength(1)
    await driver.destroy({ runtimeDir: unrecorded.runtimeDir })
    expect(await qemuProcessesMentioning(unrecorded.runtimeDir)).toEqual([])
    expect(existsSync(join(unrecorded.runtimeDir, 'qmp.sock'))).toBe(false)
    expect(await readFile(join(unrecorded.runtimeDir, 'vmm.log'), 'utf8')).toContain('start: qemu-system-x86_64')
  })
})
