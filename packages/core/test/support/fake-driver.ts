/**
 * A VMM driver that starts nothing: it keeps the VmSpec each start was given (what core asked the
 * VMM for) and pretends a VM runs until it is killed, whose guest reports its program started on
 * the status channel as the guest init does. Its standby writes a snapshot that holds nothing but
 * the marker core looks for. For tests of what core decides before the
 * VMM (devices that QEMU could not open here: these machines have no IOMMU); the QEMU command
 * line for such a spec is checked with the real argv builder.
 */
import { appendFile, mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { QEMU_CAPABILITIES, SNAPSHOT_META_FILE, type ExitInfo, type PersistedVm, type RunningVm, type VmmDriver, type VmSpec } from '@hypeman-ts/vmm-drivers'

export class FakeDriver implements VmmDriver {
  readonly name = 'qemu' as const
  // No guest runs, so none reaches a template point: boots are never template boots.
  readonly capabilities = { ...QEMU_CAPABILITIES, memoryFile: false }
  readonly machineCmdline = ''
  readonly programs: readonly string[] = []
  readonly starts: VmSpec[] = []
  /** Pids of the VMs that "run". */
  readonly running = new Set<number>()
  #next = 4_000_000

  async start(spec: VmSpec, opts: { onSpawn?: (p: PersistedVm) => void | Promise<void> } = {}): Promise<RunningVm> {
    this.starts.push(spec)
    const persisted: PersistedVm = { driver: 'qemu', version: 1, pid: this.#next++, pidStartTime: 1, controlSocket: `${spec.runtimeDir}/qmp.sock`, accel: 'tcg', spec }
    await opts.onSpawn?.(persisted)
    this.running.add(persisted.pid)
    const status = spec.channels?.find((c) => c.name === 'hypeman.status')?.backend
    if (status?.kind === 'file') await appendFile(status.path, `${JSON.stringify({ type: 'started', pid: 1, uptimeMs: 1 })}\n`)
    return this.handle(persisted)
  }

  async attach(persisted: PersistedVm): Promise<RunningVm> {
    return this.handle(persisted)
  }

  isAlive(persisted: PersistedVm): boolean {
    return this.running.has(persisted.pid)
  }

  async destroy(target: PersistedVm | { runtimeDir: string }): Promise<void> {
    if ('pid' in target) this.running.delete(target.pid)
  }

  async resolveAccel(): Promise<'tcg'> {
    return 'tcg'
  }

  private handle(persisted: PersistedVm): RunningVm {
    let end!: (e: ExitInfo) => void
    const exited = new Promise<ExitInfo>((r) => (end = r))
    const endAs = async (reason: ExitInfo['reason']): Promise<ExitInfo> => {
      this.running.delete(persisted.pid)
      const e: ExitInfo = { reason, code: null, signal: null, at: new Date().toISOString() }
      end(e)
      return e
    }
    const kill = () => endAs('killed')
    const unsupported = async (): Promise<never> => {
      throw new Error('not in the fake driver')
    }
    return {
      driver: 'qemu',
      pid: persisted.pid,
      accel: 'tcg',
      spec: persisted.spec,
      persisted,
      timings: { readyMs: 0 },
      exited,
      phase: 'running',
      state: async () => (this.running.has(persisted.pid) ? 'running' : 'exited'),
      shutdown: kill,
      kill,
      waitForExit: () => exited,
      onEvent: () => () => {},
      resizeMemory: unsupported,
      connectChannel: unsupported,
      detach: async () => {},
      pause: unsupported,
      snapshot: unsupported,
      hotplugDisk: unsupported,
      unplugDisk: unsupported,
      standby: async (dir: string) => {
        await mkdir(dir, { recursive: true })
        await writeFile(join(dir, SNAPSHOT_META_FILE), '{}')
        return { dir, bytes: 0, durationMs: 0, createdAt: new Date().toISOString(), exit: await endAs('standby') }
      },
      [Symbol.asyncDispose]: async () => {},
    }
  }
}
