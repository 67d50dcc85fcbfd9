/**
 * The accelerator probe with real QEMU. KVM's verdict on our machines is "unusable": some have no
 * /dev/kvm, others have one on which `-cpu host` aborts QEMU at reset ("failed to set MSR"). The
 * probe machinery itself is checked under TCG, where the trivial guest does run, and against a
 * firmware that hangs, which the deadline must catch.
 */
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Logger } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { probeAccel, QemuDriver } from '../src/index.js'
import { probeFirmware } from '../src/testing.js'
import { AccelResolver, PROBE_EXIT_CODE, probeArgv } from '../src/qemu/accel.js'

function captureLogger(): Logger & { warnings: string[] } {
  const warnings: string[] = []
  return { warnings, debug() {}, info() {}, warn: (m) => warnings.push(m), error: (m) => warnings.push(m) }
}

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-accel-'))
})
afterAll(() => rm(dir, { recursive: true, force: true }))

describe('probe firmware', () => {
  it('is 64 KiB with the code at the reset vector', () => {
    const fw = probeFirmware()
    expect(fw.length).toBe(65536)
    expect([...fw.subarray(0xfff0, 0xfff4)]).toEqual([0xb0, 0x2a, 0xe6, 0xf4])
    expect(PROBE_EXIT_CODE).toBe(85)
    expect([...probeFirmware('hang').subarray(0xfff0, 0xfff2)]).toEqual([0xeb, 0xfe])
  })

  it('runs under KVM with the CPU model our VMs use, and under TCG with the default', () => {
    const kvm = probeArgv('kvm', '/fw')
    expect(kvm.slice(kvm.indexOf('-cpu'), kvm.indexOf('-cpu') + 2)).toEqual(['-cpu', 'host'])
    expect(probeArgv('tcg', '/fw')).not.toContain('-cpu')
  })
})

describe('probeAccel', { timeout: 30_000 }, () => {
  it('sees a trivial guest signal under TCG', async () => {
    const r = await probeAccel('tcg', { qemuBinary: 'qemu-system-x86_64', deadlineMs: 10_000 })
    expect(r).toMatchObject({ accel: 'tcg', usable: true })
  })

  it('catches a guest that hangs, at the deadline', async () => {
    const r = await probeAccel('tcg', { qemuBinary: 'qemu-system-x86_64', deadlineMs: 1000, firmware: 'hang' })
    expect(r.usable).toBe(false)
    expect(r.reason).toMatch(/did not signal within 1000 ms \(hang\)/)
  })

  it('reports KVM unusable on this host, saying why', async () => {
    const r = await probeAccel('kvm', { qemuBinary: 'qemu-system-x86_64', deadlineMs: 5000 })
    expect(r.usable).toBe(false)
    expect(r.reason).toMatch(existsSync('/dev/kvm') ? /kvm/i : /\/dev\/kvm does not exist/)
  })

  it('reports a QEMU that fails as unusable with its complaint', async () => {
    const r = await probeAccel('tcg', { qemuBinary: '/bin/false', deadlineMs: 5000 })
    expect(r).toMatchObject({ usable: false, reason: expect.stringContaining('failed (exit 1)') })
  })
})

describe('resolving accel', { timeout: 30_000 }, () => {
  it("auto falls back to tcg with one warning; kvm is refused naming the field; tcg is tcg", async () => {
    const logger = captureLogger()
    const driver = new QemuDriver({ logger })
    expect(await driver.resolveAccel('auto')).toBe('tcg')
    expect(await driver.resolveAccel('auto')).toBe('tcg')
    expect(logger.warnings).toHaveLength(1)
    expect(logger.warnings[0]).toMatch(/falling back to TCG/)
    await expect(driver.resolveAccel('kvm')).rejects.toMatchObject({ code: 'accel_unavailable', field: 'accel' })
    expect(await driver.resolveAccel('tcg')).toBe('tcg')
  })

  it('remembers the verdict in a cache file keyed by boot id', async () => {
    const cacheFile = join(dir, 'accel.json')
    const resolver = new AccelResolver({ qemuBinary: 'qemu-system-x86_64', cacheFile, logger: captureLogger() })
    const verdict = await resolver.kvmVerdict()
    const cached = JSON.parse(await readFile(cacheFile, 'utf8'))
    expect(cached).toMatchObject({ qemuBinary: 'qemu-system-x86_64', kvm: verdict })
    expect(cached.bootId).toBe((await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim())
    // A fresh resolver with a binary that cannot even run trusts the file and does not probe.
    const again = new AccelResolver({ qemuBinary: 'qemu-system-x86_64', cacheFile, logger: captureLogger() })
    const { writeFile } = await import('node:fs/promises')
    await writeFile(cacheFile, JSON.stringify({ ...cached, kvm: { usable: false, reason: 'from the cache' } }))
    expect(await again.kvmVerdict()).toEqual({ usable: false, reason: 'from the cache' })
    // A verdict written by an older probe (no -cpu host) is not trusted: the probe runs again.
    await writeFile(cacheFile, JSON.stringify({ ...cached, probeVersion: 1, kvm: { usable: true } }))
    const reprobed = new AccelResolver({ qemuBinary: 'qemu-system-x86_64', cacheFile, logger: captureLogger() })
    expect(await reprobed.kvmVerdict()).toEqual(verdict)
  })
})
