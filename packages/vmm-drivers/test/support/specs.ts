/** VmSpecs shared by the REST drivers' plan and fake-VMM tests. */
import type { VmSpec } from '../../src/index.js'

export const MiB = 1024 * 1024

export const minimalSpec: VmSpec = {
  kernel: '/k/vmlinux',
  vcpus: 1,
  memoryBytes: 128 * MiB,
  consoleLog: '/i/console.log',
  runtimeDir: '/r/a',
}

export const fullSpec: VmSpec = {
  name: 'inst_full.1',
  kernel: '/k/vmlinux',
  initrd: '/k/initrd.cpio',
  cmdline: 'console=hvc0 quiet hm.x="a b"',
  vcpus: 2,
  memoryBytes: 512 * MiB,
  hotplugMemory: { maxBytes: 1024 * MiB },
  disks: [
    { path: '/d/rootfs.ext4', serial: 'hm-rootfs', readonly: true },
    { path: '/d/overlay.ext4', serial: 'hm-overlay', throttle: { bytesPerSec: 100_000_000 } },
    { path: '/d/config.ext4', serial: 'hm-config', readonly: true, throttle: { bytesPerSec: 1_000_000, iopsPerSec: 500 } },
  ],
  nics: [
    { tap: 'hm-abc', mac: '02:00:0A:00:00:05' },
    { tap: 'hm-def', mac: '02:00:0a:00:00:06' },
  ],
  vsock: { cid: 42, ports: { 'hypeman.agent': 1024, 'hypeman.exec': 1025 } },
  consoleLog: '/i/console.log',
  runtimeDir: '/r/full',
}

/** A table of specs every planner must turn into calls that validate. */
export const specTable: [string, VmSpec][] = [
  ['minimal', minimalSpec],
  ['full', fullSpec],
  ['vsock without ports, default cid', { ...minimalSpec, vsock: {} }],
  ['one writable disk, iops only', { ...minimalSpec, disks: [{ path: '/d/a', serial: 's', throttle: { iopsPerSec: 10 } }] }],
  ['many vcpus and big memory', { ...minimalSpec, vcpus: 32, memoryBytes: 64 * 1024 * MiB }],
  ['hotplug with slots', { ...minimalSpec, hotplugMemory: { maxBytes: 128 * MiB + 1024 * MiB, slots: 4 } }],
  ['initrd only, empty cmdline', { ...minimalSpec, initrd: '/k/i', cmdline: '' }],
]
