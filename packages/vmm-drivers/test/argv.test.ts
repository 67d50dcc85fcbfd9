import { describe, expect, it } from 'vitest'
import { buildQemuArgv, composeCmdline, QEMU_MACHINE_CMDLINE, type QemuArgvContext, type VmSpec } from '../src/index.js'
import { qemuOptValue, vmmCommand } from '../src/testing.js'

const base: VmSpec = {
  kernel: '/k/vmlinux',
  vcpus: 2,
  memoryBytes: 256 * 1024 * 1024,
  consoleLog: '/i/console.log',
  runtimeDir: '/r',
}
const ctx: QemuArgvContext = { accel: 'tcg', qmpSocket: '/r/qmp.sock', pidFile: '/r/qemu.pid' }

/** The values following each occurrence of `flag`. */
function values(argv: string[], flag: string): string[] {
  return argv.flatMap((a, i) => (a === flag ? [argv[i + 1] as string] : []))
}

describe('buildQemuArgv', () => {
  it('builds the minimal machine exactly', () => {
    expect(buildQemuArgv(base, ctx)).toEqual([
      '-machine', 'q35',
      '-accel', 'tcg',
      '-smp', '2',
      '-m', 'size=256M',
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      '-bios', '/usr/share/qemu/qboot.rom',
      '-kernel', '/k/vmlinux',
      '-append', QEMU_MACHINE_CMDLINE,
      '-chardev', 'socket,id=qmp,path=/r/qmp.sock,server=on,wait=off',
      '-mon', 'chardev=qmp,mode=control',
      '-pidfile', '/r/qemu.pid',
      '-chardev', 'file,id=console,path=/i/console.log,append=on',
      '-serial', 'chardev:console',
      '-device', 'pvpanic-pci',
    ])
  })

  const cases: { name: string; spec: Partial<VmSpec>; ctx?: Partial<QemuArgvContext>; flag: string; expected: string[] }[] = [
    { name: 'kvm uses the host CPU', spec: {}, ctx: { accel: 'kvm' }, flag: '-cpu', expected: ['host'] },
    { name: 'tcg leaves the CPU model alone', spec: {}, flag: '-cpu', expected: [] },
    { name: 'kvm accel', spec: {}, ctx: { accel: 'kvm' }, flag: '-accel', expected: ['kvm'] },
    { name: 'name for ps and logs', spec: { name: 'inst-1' }, flag: '-name', expected: ['guest=inst-1,debug-threads=on'] },
    {
      name: 'memory hotplug slots and maxmem',
      spec: { hotplugMemory: { maxBytes: 2 * 1024 ** 3 } },
      flag: '-m',
      expected: ['size=256M,slots=8,maxmem=2048M'],
    },
    {
      name: 'memory hotplug with explicit slots',
      spec: { memoryBytes: 1024 ** 3, hotplugMemory: { maxBytes: 4 * 1024 ** 3, slots: 2 } },
      flag: '-m',
      expected: ['size=1024M,slots=2,maxmem=4096M'],
    },
    { name: 'initrd', spec: { initrd: '/k/initrd' }, flag: '-initrd', expected: ['/k/initrd'] },
    { name: 'caller cmdline after the machine part', spec: { cmdline: 'quiet hm.x=1' }, flag: '-append', expected: [`${QEMU_MACHINE_CMDLINE} quiet hm.x=1`] },
    { name: 'other firmware', spec: {}, ctx: { bios: '/fw/bios.bin' }, flag: '-bios', expected: ['/fw/bios.bin'] },
    { name: 'restore waits for an incoming stream', spec: {}, ctx: { incoming: true }, flag: '-incoming', expected: ['defer'] },
    { name: 'cold boot has no -incoming', spec: {}, flag: '-incoming', expected: [] },
    {
      name: 'commas in chardev paths are doubled',
      spec: { consoleLog: '/a,b/console.log' },
      ctx: { qmpSocket: '/r,x/qmp.sock' },
      flag: '-chardev',
      expected: ['socket,id=qmp,path=/r,,x/qmp.sock,server=on,wait=off', 'file,id=console,path=/a,,b/console.log,append=on'],
    },
    {
      name: 'read-only raw disk with serial',
      spec: { disks: [{ path: '/img/rootfs.ext4', serial: 'hm-rootfs', readonly: true }] },
      flag: '-blockdev',
      expected: [
        JSON.stringify({
          driver: 'raw',
          'node-name': 'disk0',
          'read-only': true,
          file: { driver: 'file', filename: '/img/rootfs.ext4', 'read-only': true },
        }),
      ],
    },
    {
      name: 'writable disk discards',
      spec: { disks: [{ path: '/i/overlay.ext4', serial: 'hm-overlay' }] },
      flag: '-blockdev',
      expected: [
        JSON.stringify({
          driver: 'raw',
          'node-name': 'disk0',
          'read-only': false,
          discard: 'unmap',
          file: { driver: 'file', filename: '/i/overlay.ext4', 'read-only': false, discard: 'unmap' },
        }),
      ],
    },
    {
      name: 'throttled disk sits under a throttle node of its own group',
      spec: { disks: [{ path: '/i/o,v.qcow2', serial: 'hm-vol-0', format: 'qcow2', throttle: { bytesPerSec: 1_000_000, iopsPerSec: 50 } }] },
      flag: '-blockdev',
      expected: [
        JSON.stringify({
          driver: 'throttle',
          'node-name': 'disk0',
          'throttle-group': 'disk0-throttle',
          'read-only': false,
          file: {
            driver: 'qcow2',
            'node-name': 'disk0-fmt',
            'read-only': false,
            discard: 'unmap',
            file: { driver: 'file', filename: '/i/o,v.qcow2', 'read-only': false, discard: 'unmap' },
          },
        }),
      ],
    },
    {
      name: 'a PCI function by its address, an mdev by its sysfs dir (commas doubled)',
      spec: {
        passthrough: [
          { sysfsPath: '/sys/bus/pci/devices/0000:01:00.0', pciAddress: '0000:01:00.0' },
          { sysfsPath: '/fake,sys/bus/mdev/devices/aa618089-8b16-4d01-a136-25a0f3c73123' },
        ],
      },
      flag: '-device',
      expected: [
        'pvpanic-pci',
        'vfio-pci,id=hostdev0,host=0000:01:00.0',
        'vfio-pci,id=hostdev1,sysfsdev=/fake,,sys/bus/mdev/devices/aa618089-8b16-4d01-a136-25a0f3c73123',
      ],
    },
    {
      name: 'throttle group object',
      spec: { disks: [{ path: '/d', serial: 's', throttle: { bytesPerSec: 1_000_000 } }] },
      flag: '-object',
      expected: [JSON.stringify({ 'qom-type': 'throttle-group', id: 'disk0-throttle', limits: { 'bps-total': 1_000_000 } })],
    },
    {
      name: 'disks in order, each with its serial',
      spec: { disks: [{ path: '/a', serial: 'hm-rootfs', readonly: true }, { path: '/b', serial: 'hm-config', readonly: true }] },
      flag: '-device',
      expected: ['pvpanic-pci', 'virtio-blk-pci,id=disk0-dev,drive=disk0,serial=hm-rootfs', 'virtio-blk-pci,id=disk1-dev,drive=disk1,serial=hm-config'],
    },
    {
      name: 'SCSI disks on the controller, named by serial and addressed by target',
      spec: {
        scsiController: true,
        disks: [
          { path: '/a', serial: 'hm-rootfs', readonly: true },
          { path: '/v', serial: 'hm-hvol-3', bus: 'scsi', scsiId: 6, readonly: true },
        ],
      },
      flag: '-device',
      expected: [
        'pvpanic-pci',
        'virtio-scsi-pci,id=scsi0',
        'virtio-blk-pci,id=disk0-dev,drive=disk0,serial=hm-rootfs',
        'scsi-hd,id=hd-hm-hvol-3-dev,bus=scsi0.0,channel=0,scsi-id=6,lun=0,drive=hd-hm-hvol-3,serial=hm-hvol-3',
      ],
    },
    {
      name: 'a throttled SCSI disk has a group of its own, named by serial',
      spec: { scsiController: true, disks: [{ path: '/v', serial: 'hm-hvol-0', bus: 'scsi', scsiId: 0, throttle: { bytesPerSec: 5 } }] },
      flag: '-object',
      expected: [JSON.stringify({ 'qom-type': 'throttle-group', id: 'hd-hm-hvol-0-throttle', limits: { 'bps-total': 5 } })],
    },
    {
      name: 'tap netdev without scripts',
      spec: { nics: [{ tap: 'hm-abc', mac: '02:AA:00:00:00:01' }] },
      flag: '-netdev',
      expected: ['tap,id=net0,ifname=hm-abc,script=no,downscript=no'],
    },
    {
      name: 'virtio-net with the MAC',
      spec: { nics: [{ tap: 'hm-abc', mac: '02:AA:00:00:00:01' }] },
      flag: '-device',
      expected: ['pvpanic-pci', 'virtio-net-pci,id=net0-dev,netdev=net0,mac=02:aa:00:00:00:01'],
    },
    {
      name: 'named ports on one virtio-serial bus',
      spec: {
        channels: [
          { name: 'hypeman.agent', backend: { kind: 'socket', path: '/i/agent.sock' } },
          { name: 'hypeman.app', backend: { kind: 'file', path: '/i/app.log' } },
        ],
      },
      flag: '-device',
      expected: [
        'pvpanic-pci',
        'virtio-serial-pci,id=vser0',
        'virtserialport,id=ch0-port,bus=vser0.0,chardev=ch0,name=hypeman.agent',
        'virtserialport,id=ch1-port,bus=vser0.0,chardev=ch1,name=hypeman.app',
      ],
    },
    {
      name: 'socket ports are servers that do not wait; file ports append',
      spec: {
        channels: [
          { name: 'hypeman.agent', backend: { kind: 'socket', path: '/i/agent.sock' } },
          { name: 'hypeman.app', backend: { kind: 'file', path: '/i/app.log' } },
        ],
      },
      flag: '-chardev',
      expected: [
        'socket,id=qmp,path=/r/qmp.sock,server=on,wait=off',
        'file,id=console,path=/i/console.log,append=on',
        'socket,id=ch0,path=/i/agent.sock,server=on,wait=off',
        'file,id=ch1,path=/i/app.log,append=on',
      ],
    },
  ]

  it.each(cases)('$name', ({ spec, ctx: extra, flag, expected }) => {
    const argv = buildQemuArgv({ ...base, ...spec }, { ...ctx, ...extra })
    expect(values(argv, flag)).toEqual(expected)
  })

  it('never asks for a reboot loop or a default device', () => {
    const argv = buildQemuArgv({ ...base, disks: [{ path: '/a', serial: 'x' }] }, ctx)
    expect(argv).toContain('-no-reboot')
    expect(argv).toContain('-nodefaults')
    expect(argv.some((a) => a.startsWith('-drive'))).toBe(false)
  })

  it('escapes option values', () => {
    expect(qemuOptValue('a,b,,c')).toBe('a,,b,,,,c')
    expect(qemuOptValue('plain')).toBe('plain')
  })
})

describe('vmmCommand', () => {
  it.each([
    ['no namespace: the VMM itself', undefined, ['qemu-system-x86_64', ['-machine', 'q35']]],
    ['a namespace: nsenter execs the VMM in it', 'tenant-a', ['nsenter', ['--net=/run/netns/tenant-a', '--', 'qemu-system-x86_64', '-machine', 'q35']]],
  ] as const)('%s', (_name, netns, expected) => {
    expect(vmmCommand('qemu-system-x86_64', ['-machine', 'q35'], netns)).toEqual(expected)
  })
})

describe('composeCmdline', () => {
  it.each([
    ['machine only', 'console=ttyS0 panic=-1', '', 'console=ttyS0 panic=-1'],
    ['caller appended', 'console=ttyS0 panic=-1', 'quiet init=/init', 'console=ttyS0 panic=-1 quiet init=/init'],
    ['caller overrides a parameter by name', 'console=ttyS0 panic=-1', 'console=hvc0', 'panic=-1 console=hvc0'],
    ['a full caller line gives no duplicates', 'console=ttyS0 panic=-1 tsc=reliable', 'console=ttyS0 panic=-1 quiet tsc=reliable', 'console=ttyS0 panic=-1 quiet tsc=reliable'],
    ['flags without values match by name', 'no_timer_check mitigations=off', 'no_timer_check', 'mitigations=off no_timer_check'],
    ['dotted module parameters are distinct keys', 'i8042.noaux i8042.nokbd', 'i8042.nokbd=0', 'i8042.noaux i8042.nokbd=0'],
    ['surrounding spaces trimmed', 'a=1', '  b=2  ', 'a=1 b=2'],
  ])('%s', (_name, machine, caller, expected) => {
    expect(composeCmdline(machine, caller)).toBe(expected)
  })
})
