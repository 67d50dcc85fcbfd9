/**
 * FirecrackerDriver end to end against our fake Firecracker (support/fake-vmm.ts), a real
 * separate process that serves specs/firecracker-swagger.yaml on the unix socket and refuses
 * what does not validate. Every call is also checked against the spec before it is sent
 * (`checkCall`). What every REST driver does is in support/rest-driver-contract.ts; this file
 * says how Firecracker says it, and tests what only it does. No real Firecracker was ever run.
 */
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { FirecrackerDriver, firecrackerDialect } from '../src/index.js'
import { describeRestDriverContract } from './support/rest-driver-contract.js'
import { restDriverSuite } from './support/rest-driver-suite.js'

const MiB = 1024 * 1024
const fc = restDriverSuite('firecracker', (opts) => new FirecrackerDriver(opts))

/** virtio-mem is asked for the hotplugged part alone; the suite's VMs boot with 256 MiB. */
const hotplug = (totalBytes: number) => ({ method: 'PATCH', path: '/hotplug/memory', body: { requested_size_mib: (totalBytes - 256 * MiB) / MiB } })

describeRestDriverContract('FirecrackerDriver', {
  suite: fc,
  dialect: firecrackerDialect,
  apiSocket: { file: 'firecracker.sock', argv: (path) => ['--api-sock', path] },
  readiness: { method: 'GET', path: '/' },
  stateQuery: { method: 'GET', path: '/' },
  bootPaths: ['/boot-source', '/drives/disk0', '/drives/disk1', '/machine-config', '/vsock', '/hotplug/memory', '/serial', '/actions'],
  calls: {
    pause: [{ method: 'PATCH', path: '/vm', body: { state: 'Paused' } }],
    resume: [{ method: 'PATCH', path: '/vm', body: { state: 'Resumed' } }],
    gracefulStop: [{ method: 'PUT', path: '/actions', body: { action_type: 'SendCtrlAltDel' } }],
    quit: [],
    snapshot: (dir) => [{ method: 'PUT', path: '/snapshot/create', body: { snapshot_type: 'Full', snapshot_path: `${dir}/vmstate`, mem_file_path: `${dir}/memory` } }],
    // One call restores and resumes.
    restore: (dir, s) => [
      {
        method: 'PUT',
        path: '/snapshot/load',
        body: {
          snapshot_path: `${dir}/vmstate`,
          mem_backend: { backend_type: 'File', backend_path: `${dir}/memory` },
          resume_vm: true,
          vsock_override: { uds_path: join(s.runtimeDir, 'vsock.sock') },
        },
      },
    ],
    resize: hotplug,
  },
  exits: {
    graceful: { reason: 'poweroff', vmmReason: 'ctrl-alt-del', code: 0, signal: null },
    // Firecracker has no quit call: after the snapshot the process is killed.
    afterStandby: { reason: 'standby', signal: 'SIGKILL' },
    forced: { reason: 'killed', signal: 'SIGKILL' },
    // Firecracker exits cleanly when the guest resets, which is how its guests stop.
    unrequested: { reason: 'reboot', vmmReason: 'guest-reset', code: 0 },
  },
  snapshot: {
    files: ['memory', 'vmstate'],
    pinnedPaths: () => ({}),
    damaged: 'vmstate',
    refusedChanges: () => [],
  },
  refusedBootCall: {
    method: 'PUT',
    path: '/machine-config',
    status: 400,
    message: 'Invalid Memory Configuration: MemorySizeTooLarge',
    step: 'firecracker.putMachineConfiguration',
  },
  refusedRestoreCall: {
    method: 'PUT',
    path: '/snapshot/load',
    status: 400,
    message: 'Load snapshot error: Failed to restore from snapshot: Cannot deserialize MicrovmState',
    step: 'firecracker.loadSnapshot',
  },
  refusedSpecs: () => [[{ vcpus: 40 }, { field: 'vcpus' }]],
})

describe('FirecrackerDriver against the fake Firecracker: what only it does', { timeout: 60_000 }, () => {
  it('grows and shrinks memory through virtio-mem, in whole blocks within the hotplug region', async () => {
    const { vm: running, sentSinceBoot } = await fc.startRunning()
    expect(await running.resizeMemory(512 * MiB)).toEqual({ memoryBytes: 512 * MiB })
    // virtio-mem gives memory back too.
    expect(await running.resizeMemory(384 * MiB)).toEqual({ memoryBytes: 384 * MiB })
    await expect(running.resizeMemory(1024 * MiB)).rejects.toMatchObject({ code: 'invalid_input', field: 'totalBytes' })
    await expect(running.resizeMemory(257 * MiB)).rejects.toMatchObject({ code: 'invalid_input', field: 'totalBytes' })
    expect(await sentSinceBoot()).toEqual([
      { method: 'PATCH', path: '/hotplug/memory', body: { requested_size_mib: 256 } },
      { method: 'PATCH', path: '/hotplug/memory', body: { requested_size_mib: 128 } },
    ])
  })
})
