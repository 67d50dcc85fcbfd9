import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { checkSpecFiles, validateVmSpec, type VmSpec } from '../src/index.js'
import { machineFingerprint, migrateToFileUri, shellQuote } from '../src/qemu/snapshot.js'

const MiB = 1024 * 1024
const base: VmSpec = { kernel: '/k/vmlinux', vcpus: 1, memoryBytes: 256 * MiB, consoleLog: '/i/console.log', runtimeDir: '/r' }

describe('validateVmSpec', () => {
  it('accepts a full spec', () => {
    expect(() =>
      validateVmSpec({
        ...base,
        name: 'inst-1',
        initrd: '/k/initrd',
        cmdline: 'quiet',
        hotplugMemory: { maxBytes: 1024 * MiB, slots: 4 },
        disks: [
          { path: '/a', serial: 'hm-rootfs', readonly: true },
          { path: '/b', serial: 'hm-overlay', throttle: { bytesPerSec: 1000, iopsPerSec: 10 } },
        ],
        nics: [{ tap: 'hm-0123456789ab', mac: '02:00:00:00:00:01' }],
        channels: [
          { name: 'hypeman.agent', backend: { kind: 'socket', path: '/i/agent.sock' } },
          { name: 'hypeman.app', backend: { kind: 'file', path: '/i/app.log' } },
        ],
        accel: 'auto',
        restoreFrom: '/s',
      }),
    ).not.toThrow()
  })

  const long = `/${'x'.repeat(100)}/agent.sock`
  const cases: [string, Partial<VmSpec>, string][] = [
    ['relative kernel', { kernel: 'vmlinux' }, 'kernel'],
    ['kernel with newline', { kernel: '/k/a\nb' }, 'kernel'],
    ['relative initrd', { initrd: 'x' }, 'initrd'],
    ['multi-line cmdline', { cmdline: 'a\nb' }, 'cmdline'],
    ['zero vcpus', { vcpus: 0 }, 'vcpus'],
    ['fractional vcpus', { vcpus: 1.5 }, 'vcpus'],
    ['memory not whole MiB', { memoryBytes: 256 * MiB + 1 }, 'memoryBytes'],
    ['tiny memory', { memoryBytes: 8 * MiB }, 'memoryBytes'],
    ['hotplug max not above boot memory', { hotplugMemory: { maxBytes: 256 * MiB } }, 'hotplugMemory.maxBytes'],
    ['hotplug slots 0', { hotplugMemory: { maxBytes: 512 * MiB, slots: 0 } }, 'hotplugMemory.slots'],
    ['serial too long', { disks: [{ path: '/a', serial: 'x'.repeat(21) }] }, 'disks[0].serial'],
    ['serial with comma', { disks: [{ path: '/a', serial: 'a,b' }] }, 'disks[0].serial'],
    ['serial twice', { disks: [{ path: '/a', serial: 's' }, { path: '/b', serial: 's' }] }, 'disks[1].serial'],
    ['unknown disk format', { disks: [{ path: '/a', serial: 's', format: 'vmdk' as 'raw' }] }, 'disks[0].format'],
    ['zero throttle', { disks: [{ path: '/a', serial: 's', throttle: { bytesPerSec: 0 } }] }, 'disks[0].throttle.bytesPerSec'],
    ['tap name too long', { nics: [{ tap: 'x'.repeat(16), mac: '02:00:00:00:00:01' }] }, 'nics[0].tap'],
    ['tap with comma', { nics: [{ tap: 'a,b', mac: '02:00:00:00:00:01' }] }, 'nics[0].tap'],
    ['bad mac', { nics: [{ tap: 't', mac: '02:00:00:00:01' }] }, 'nics[0].mac'],
    ['multicast mac', { nics: [{ tap: 't', mac: '01:00:00:00:00:01' }] }, 'nics[0].mac'],
    ['channel name with comma', { channels: [{ name: 'a,b', backend: { kind: 'file', path: '/x' } }] }, 'channels[0].name'],
    [
      'channel name twice',
      { channels: [{ name: 'a', backend: { kind: 'file', path: '/x' } }, { name: 'a', backend: { kind: 'file', path: '/y' } }] },
      'channels[1].name',
    ],
    ['socket path too long', { channels: [{ name: 'a', backend: { kind: 'socket', path: long } }] }, 'channels[0].backend.path'],
    ['unknown backend', { channels: [{ name: 'a', backend: { kind: 'pty', path: '/x' } as never }] }, 'channels[0].backend.kind'],
    ['relative console log', { consoleLog: 'console.log' }, 'consoleLog'],
    ['runtime dir too long for the QMP socket', { runtimeDir: `/${'r'.repeat(100)}` }, 'runtimeDir'],
    ['unknown accel', { accel: 'hvf' as 'kvm' }, 'accel'],
    ['bad name', { name: 'has space' }, 'name'],
    ['netns with a slash', { netns: '../proc/1/ns' }, 'netns'],
    ['empty netns', { netns: '' }, 'netns'],
    ['passthrough address in capitals', { passthrough: [{ sysfsPath: '/s/0000:01:00.0', pciAddress: '0000:0A:00.0' }] }, 'passthrough[0].pciAddress'],
    ['passthrough function 8', { passthrough: [{ sysfsPath: '/s/x', pciAddress: '0000:01:00.8' }] }, 'passthrough[0].pciAddress'],
    ['passthrough relative path', { passthrough: [{ sysfsPath: 'sys/bus/mdev/devices/u' }] }, 'passthrough[0].sysfsPath'],
    ['passthrough path with a comma', { passthrough: [{ sysfsPath: '/s/a,b' }] }, 'passthrough[0].sysfsPath'],
    ['passthrough twice', { passthrough: [{ sysfsPath: '/s/a' }, { sysfsPath: '/s/a' }] }, 'passthrough[1].sysfsPath'],
  ]
  it.each(cases)('%s → ValidationError on %s', (_name, patch, field) => {
    expect(() => validateVmSpec({ ...base, ...patch }, ['qmp.sock'], { passthrough: true })).toThrow(expect.objectContaining({ code: 'invalid_input', field }))
  })

  it('refuses passthrough devices on a driver without VFIO, naming the field', () => {
    const spec = { ...base, passthrough: [{ sysfsPath: '/sys/bus/mdev/devices/u' }] }
    expect(() => validateVmSpec(spec, [])).toThrow(expect.objectContaining({ code: 'not_supported', field: 'passthrough' }))
    expect(() => validateVmSpec(spec, [], { passthrough: true })).not.toThrow()
  })
})

describe('checkSpecFiles', () => {
  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hm-spec-'))
    await writeFile(join(dir, 'vmlinux'), 'x')
  })
  afterAll(() => rm(dir, { recursive: true, force: true }))

  it('names the missing file', async () => {
    await expect(checkSpecFiles({ ...base, kernel: join(dir, 'nope') })).rejects.toMatchObject({ code: 'invalid_input', field: 'kernel' })
    await expect(checkSpecFiles({ ...base, kernel: join(dir, 'vmlinux'), disks: [{ path: join(dir, 'disk'), serial: 's' }] })).rejects.toMatchObject({
      field: 'disks[0].path',
    })
  })

  it('wants the TAP to exist already', async () => {
    await expect(
      checkSpecFiles({ ...base, kernel: join(dir, 'vmlinux'), nics: [{ tap: 'hm-no-such-tap', mac: '02:00:00:00:00:01' }] }),
    ).rejects.toMatchObject({ field: 'nics[0].tap', message: expect.stringContaining('must exist') })
  })

  it('wants the network namespace to exist, and looks for the TAP inside it', async () => {
    const kernel = join(dir, 'vmlinux')
    await expect(checkSpecFiles({ ...base, kernel, netns: 'hm-no-such-netns' })).rejects.toMatchObject({ code: 'invalid_input', field: 'netns' })
    const ns = `hmspec-${process.pid}`
    await run('ip', ['netns', 'add', ns])
    try {
      // inside a namespace only its own interfaces count, and one of its interfaces is not the host's
      await expect(checkSpecFiles({ ...base, kernel, netns: ns, nics: [{ tap: 'hm-no-such-tap', mac: '02:00:00:00:00:01' }] })).rejects.toMatchObject({
        field: 'nics[0].tap',
        message: expect.stringContaining(`in network namespace ${ns}`),
      })
      await run('ip', ['-n', ns, 'link', 'add', 'hmspecdev0', 'type', 'ifb'])
      await expect(checkSpecFiles({ ...base, kernel, netns: ns, nics: [{ tap: 'hmspecdev0', mac: '02:00:00:00:00:01' }] })).resolves.toBeUndefined()
      await expect(checkSpecFiles({ ...base, kernel, nics: [{ tap: 'hmspecdev0', mac: '02:00:00:00:00:01' }] })).rejects.toMatchObject({ field: 'nics[0].tap' })
    } finally {
      await run('ip', ['netns', 'del', ns])
    }
  })

  it('passes when everything is there', async () => {
    await expect(checkSpecFiles({ ...base, kernel: join(dir, 'vmlinux'), nics: [{ tap: 'lo', mac: '02:00:00:00:00:01' }] })).resolves.toBeUndefined()
  })
})

describe('snapshot helpers', () => {
  it('quotes paths for the shell that runs exec: migrations', () => {
    expect(shellQuote("/a b/it's")).toBe(`'/a b/it'\\''s'`)
    expect(migrateToFileUri('/s/vmstate')).toBe("exec:cat > '/s/vmstate'")
  })

  it('fingerprints the machine shape, not the paths', () => {
    const a: VmSpec = { ...base, disks: [{ path: '/a', serial: 'hm-rootfs', readonly: true }] }
    const moved: VmSpec = { ...a, kernel: '/elsewhere', runtimeDir: '/r2', disks: [{ path: '/b', serial: 'hm-rootfs', readonly: true }] }
    expect(machineFingerprint(moved)).toBe(machineFingerprint(a))
    expect(machineFingerprint({ ...a, memoryBytes: 512 * MiB })).not.toBe(machineFingerprint(a))
    expect(machineFingerprint({ ...a, disks: [{ path: '/a', serial: 'hm-other', readonly: true }] })).not.toBe(machineFingerprint(a))
    expect(machineFingerprint({ ...a, channels: [{ name: 'x', backend: { kind: 'file', path: '/x' } }] })).not.toBe(machineFingerprint(a))
  })

  it('matches SCSI disks by target whatever their order (hot-plug appends), and tells the controller apart', () => {
    const x = { path: '/x', serial: 'hm-hvol-0', bus: 'scsi' as const, scsiId: 0 }
    const y = { path: '/y', serial: 'hm-hvol-1', bus: 'scsi' as const, scsiId: 2, readonly: true }
    const a: VmSpec = { ...base, scsiController: true, disks: [{ path: '/a', serial: 'hm-rootfs', readonly: true }, x, y] }
    expect(machineFingerprint({ ...a, disks: [y, { path: '/a', serial: 'hm-rootfs', readonly: true }, x] })).toBe(machineFingerprint(a))
    expect(machineFingerprint({ ...a, disks: [{ path: '/a', serial: 'hm-rootfs', readonly: true }, x, { ...y, scsiId: 4 }] })).not.toBe(machineFingerprint(a))
    const plain: VmSpec = { ...base, disks: [{ path: '/a', serial: 'hm-rootfs', readonly: true }] }
    expect(machineFingerprint({ ...plain, scsiController: true })).not.toBe(machineFingerprint(plain))
  })
})

describe('SCSI disks', () => {
  it('need the controller, a target each, and a driver that has it', () => {
    const disk = { path: '/v', serial: 'hm-hvol-0', bus: 'scsi' as const, scsiId: 0 }
    expect(() => validateVmSpec({ ...base, disks: [disk] }, [], { diskHotplug: true })).toThrow(expect.objectContaining({ field: 'scsiController' }))
    expect(() => validateVmSpec({ ...base, scsiController: true, disks: [disk] })).toThrow(expect.objectContaining({ code: 'not_supported', field: 'scsiController' }))
    expect(() => validateVmSpec({ ...base, scsiController: true, disks: [disk, { ...disk, serial: 'hm-hvol-1' }] }, [], { diskHotplug: true })).toThrow(
      expect.objectContaining({ field: 'disks[1].scsiId' }),
    )
    expect(() => validateVmSpec({ ...base, scsiController: true, disks: [{ ...disk, scsiId: 256 }] }, [], { diskHotplug: true })).toThrow(expect.objectContaining({ field: 'disks[0].scsiId' }))
    expect(() => validateVmSpec({ ...base, disks: [{ path: '/v', serial: 's', scsiId: 1 }] })).toThrow(expect.objectContaining({ field: 'disks[0].scsiId' }))
    expect(() => validateVmSpec({ ...base, scsiController: true, disks: [disk] }, [], { diskHotplug: true })).not.toThrow()
  })
})
