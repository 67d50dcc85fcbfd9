/** The QMP client against a real QEMU, started with -S so no guest code ever runs. */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { QmpClient } from '../src/index.js'
import { type QmpEvent } from '../src/testing.js'

let dir: string
let qemu: ChildProcess | undefined
let socket: string

function startQemu(path: string): ChildProcess {
  return spawn(
    'qemu-system-x86_64',
    ['-machine', 'q35', '-accel', 'tcg', '-nodefaults', '-no-user-config', '-display', 'none', '-m', '16', '-S',
      '-chardev', `socket,id=qmp,path=${path},server=on,wait=off`, '-mon', 'chardev=qmp,mode=control'],
    { stdio: 'ignore' },
  )
}

async function stopQemu(): Promise<void> {
  if (qemu && qemu.exitCode === null && qemu.signalCode === null) {
    const exited = new Promise((r) => qemu?.once('exit', r))
    qemu.kill('SIGKILL')
    await exited
  }
  qemu = undefined
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-qmp-'))
})
afterEach(stopQemu)
afterAll(() => rm(dir, { recursive: true, force: true }))

describe('QmpClient against QEMU', { timeout: 30_000 }, () => {
  it('connects (waiting for the socket to appear), negotiates, and runs commands', async () => {
    socket = join(dir, 'a.sock')
    qemu = startQemu(socket)
    const qmp = await QmpClient.connect(socket, { deadline: Date.now() + 10_000 })
    expect(qmp.greeting.version.qemu.major).toBeGreaterThanOrEqual(7)
    expect(await qmp.execute('query-status')).toMatchObject({ status: 'prelaunch', running: false })
    // Replies are matched by id even when commands overlap.
    const [status, version, kvm] = await Promise.all([
      qmp.execute<{ status: string }>('query-status'),
      qmp.execute<{ qemu: { major: number } }>('query-version'),
      qmp.execute<{ enabled: boolean }>('query-kvm'),
    ])
    expect(status.status).toBe('prelaunch')
    expect(version.qemu.major).toBe(qmp.greeting.version.qemu.major)
    expect(kvm.enabled).toBe(false)
    await qmp.close()
    expect(qmp.isClosed).toBe(true)
  })

  it('turns a QMP error into a typed error and keeps the connection usable', async () => {
    socket = join(dir, 'b.sock')
    qemu = startQemu(socket)
    const qmp = await QmpClient.connect(socket, { deadline: Date.now() + 10_000 })
    await expect(qmp.execute('no-such-command')).rejects.toMatchObject({ code: 'qmp_error', qmpClass: 'CommandNotFound', command: 'no-such-command' })
    await expect(qmp.execute('qom-get', { path: '/nope', property: 'x' })).rejects.toMatchObject({ code: 'qmp_error', qmpClass: 'DeviceNotFound' })
    expect(await qmp.execute('query-status')).toMatchObject({ status: 'prelaunch' })
    qmp.destroy()
  })

  it('delivers events', async () => {
    socket = join(dir, 'c.sock')
    qemu = startQemu(socket)
    const qmp = await QmpClient.connect(socket, { deadline: Date.now() + 10_000 })
    const events: QmpEvent[] = []
    const off = qmp.onEvent((e) => events.push(e))
    await qmp.execute('cont')
    await qmp.execute('stop')
    // Events come before the reply that caused them or right after; one more round trip settles it.
    await qmp.execute('query-status')
    expect(events.map((e) => e.name)).toEqual(['RESUME', 'STOP'])
    expect(events[0]?.timestampMs).toBeGreaterThan(Date.parse('2020-01-01'))
    off()
    await qmp.execute('cont')
    await qmp.execute('query-status')
    expect(events).toHaveLength(2)
    qmp.destroy()
  })

  it('rejects what is pending when QEMU goes away, and everything after', async () => {
    socket = join(dir, 'd.sock')
    qemu = startQemu(socket)
    const qmp = await QmpClient.connect(socket, { deadline: Date.now() + 10_000 })
    const quit = qmp.execute('quit').catch((e: unknown) => e)
    await qmp.closed
    const outcome = await quit
    // QEMU may answer quit before it closes, or close first.
    const answered = JSON.stringify(outcome) === '{}'
    expect(answered || (outcome as { code: string }).code === 'control_closed').toBe(true)
    await expect(qmp.execute('query-status')).rejects.toMatchObject({ code: 'control_closed' })
  })

  it('says another client holds the socket when no greeting comes', async () => {
    socket = join(dir, 'e.sock')
    qemu = startQemu(socket)
    const first = await QmpClient.connect(socket, { deadline: Date.now() + 10_000 })
    await expect(QmpClient.connect(socket, { deadline: Date.now() + 500 })).rejects.toMatchObject({
      code: 'timeout',
      message: expect.stringContaining('another client'),
    })
    // The first client is unharmed.
    expect(await first.execute('query-status')).toMatchObject({ status: 'prelaunch' })
    first.destroy()
  })

  it('gives up at the deadline when the socket never appears', async () => {
    const started = Date.now()
    await expect(QmpClient.connect(join(dir, 'never.sock'), { deadline: Date.now() + 300 })).rejects.toMatchObject({ code: 'timeout', step: 'qmp.connect' })
    expect(Date.now() - started).toBeLessThan(5000)
  })

  it('gives up at once when its signal fires (the process died), long before the deadline', async () => {
    const ac = new AbortController()
    setTimeout(() => ac.abort(new Error('QEMU exited')), 200)
    const started = Date.now()
    await expect(
      QmpClient.connect(join(dir, 'never2.sock'), { deadline: Date.now() + 20_000, signal: ac.signal }),
    ).rejects.toMatchObject({ code: 'aborted' })
    expect(Date.now() - started).toBeLessThan(5000)
  })
})
