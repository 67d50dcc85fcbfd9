/**
 * `VmSpec.netns`: a real VM whose QEMU runs inside a network namespace this test creates, on a
 * TAP that exists only there. The guest configures its NIC and pings the TAP's address, so the
 * NIC really is wired to the namespace; the process is QEMU itself (nsenter exec'd in place), so
 * pid-based supervision, attach from another driver and destroy by runtime dir all still hold.
 */
import { randomBytes } from 'node:crypto'
import { readlink, rm, stat } from 'node:fs/promises'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { QemuDriver, type PersistedVm, type VmSpec } from '../src/index.js'
import { guestSpec, prepareGuest, qemuProcessesMentioning, waitForText, type TestGuest } from './support/guest.js'

let guest: TestGuest
const ns = `hmvm-${randomBytes(3).toString('hex')}`
const tap = `hmt${randomBytes(6).toString('hex')}`
const driver = new QemuDriver()
let spec: VmSpec

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error('this test needs root (network namespaces, TAPs)')
  guest = await prepareGuest()
  await run('ip', ['netns', 'add', ns])
  await run('ip', ['-n', ns, '-batch', '-'], {
    input: [`tuntap add dev ${tap} mode tap vnet_hdr`, `addr add 10.55.0.1/24 dev ${tap}`, `link set dev ${tap} up`].join('\n') + '\n',
  })
  spec = await guestSpec(guest, 'netns', {
    netns: ns,
    nics: [{ tap, mac: '02:00:0a:37:00:02' }],
    cmdline: 'quiet hm.ip=10.55.0.2/24 hm.ping=10.55.0.1',
  })
})

afterAll(async () => {
  if (spec) await driver.destroy({ runtimeDir: spec.runtimeDir })
  if (spec) expect(await qemuProcessesMentioning(spec.runtimeDir)).toEqual([])
  await run('ip', ['netns', 'del', ns]).catch(() => {})
  if (guest) await rm(guest.dir, { recursive: true, force: true })
})

describe('a VM in a network namespace', { timeout: 120_000 }, () => {
  let pid: number
  let persisted: PersistedVm

  it('runs QEMU itself in the namespace, its NIC on the namespace\'s TAP', async () => {
    const vm = await driver.start(spec)
    pid = vm.pid
    persisted = vm.persisted
    expect(await readlink(`/proc/${pid}/ns/net`)).toBe(`net:[${(await stat(`/run/netns/${ns}`)).ino}]`)
    expect(await readlink(`/proc/${pid}/ns/net`)).not.toBe(await readlink('/proc/self/ns/net'))
    expect(await readlink(`/proc/${pid}/exe`)).toMatch(/qemu-system-x86_64$/)
    await waitForText(spec.consoleLog, /HM-NIC eth0 02:00:0a:37:00:02/)
    // the guest reaches the namespace's side of the TAP
    const m = await waitForText(spec.consoleLog, /HM-PING-(OK|FAILED)/, 90_000)
    expect(m[0]).toBe('HM-PING-OK')
    // and the namespace sees the guest's MAC on its TAP
    const neigh = JSON.parse((await run('ip', ['-n', ns, '-j', 'neigh', 'show', 'dev', tap])).stdout) as { dst: string; lladdr?: string }[]
    expect(neigh).toContainEqual(expect.objectContaining({ dst: '10.55.0.2', lladdr: '02:00:0a:37:00:02' }))
    await vm.detach()
  })

  it('is found again by a fresh driver from its persisted record', async () => {
    const other = new QemuDriver()
    expect(persisted.spec.netns).toBe(ns)
    expect(other.isAlive(persisted)).toBe(true)
    const vm = await other.attach(persisted)
    expect(vm.pid).toBe(pid)
    expect(await vm.state()).toBe('running')
    await vm.detach()
  })

  it('is ended by destroy with only its runtime dir, and nothing is left', async () => {
    await driver.destroy({ runtimeDir: spec.runtimeDir })
    expect(await qemuProcessesMentioning(spec.runtimeDir)).toEqual([])
  })

  it('a missing namespace is a ValidationError before anything starts', async () => {
    const bad = { ...spec, name: 'netns-missing', netns: 'hm-no-such-netns' }
    await expect(driver.start(bad)).rejects.toMatchObject({ code: 'invalid_input', field: 'netns' })
    expect(await qemuProcessesMentioning(spec.runtimeDir)).toEqual([])
  })
})
