/**
 * What differs between the REST-driven VMMs (Cloud Hypervisor, Firecracker): their command
 * line, their API calls for each lifecycle operation (pure planners: a spec in, an ordered list
 * of calls out), how they report state, and what their exits mean. The process supervision,
 * transport and handles around it are shared (driver.ts, machine.ts), so a dialect holds no IO.
 */
import { join } from 'node:path'
import type { ProcessExit } from '../process.js'
import type { DriverCapabilities, ExitReason, VmSpec, VmState } from '../types.js'
import type { ApiCall } from './client.js'

export type RestDriverName = 'cloud-hypervisor' | 'firecracker'

/** The files a REST VMM has in its runtime dir. */
export interface RestRuntime {
  apiSocket: string
  /** The host side of the guest's vsock (the VMM listens on it). */
  vsockSocket: string
  pidFile: string
}

export const REST_RUNTIME_FILES = { vsock: 'vsock.sock', pid: 'vmm.pid', vmmLog: 'vmm.log' } as const

export function restRuntime(runtimeDir: string, apiSocketName: string): RestRuntime {
  return {
    apiSocket: join(runtimeDir, apiSocketName),
    vsockSocket: join(runtimeDir, REST_RUNTIME_FILES.vsock),
    pidFile: join(runtimeDir, REST_RUNTIME_FILES.pid),
  }
}

export interface RestDialect {
  readonly name: RestDriverName
  /** For messages: `Firecracker`, `Cloud Hypervisor`. */
  readonly label: string
  /** Default binary name, looked up in PATH. */
  readonly binary: string
  readonly capabilities: DriverCapabilities
  readonly machineCmdline: string
  /** Prefix of every API path on the wire. */
  readonly basePath: string
  /** File name of the API socket in the runtime dir. */
  readonly apiSocketName: string
  /** What this VMM cannot do in a spec that passed validateVmSpec: throws naming the field. */
  checkSpec(spec: VmSpec, rt: RestRuntime): void
  /** The VMM's command line (pure). It must contain `rt.apiSocket`: that is the process's mark. */
  argv(spec: VmSpec, rt: RestRuntime): string[]
  /** The call that proves the API is up. */
  readonly readiness: ApiCall
  planBoot(spec: VmSpec, rt: RestRuntime): ApiCall[]
  /** Restore on a fresh process, ending with the guest running. */
  planRestore(spec: VmSpec, rt: RestRuntime, snapshotDir: string): ApiCall[]
  planPause(): ApiCall[]
  planResume(): ApiCall[]
  /** Writes the snapshot of a paused VM into `dir`. */
  planSnapshot(dir: string): ApiCall[]
  /** The files the VMM writes into a snapshot directory. */
  readonly snapshotFileNames: readonly string[]
  /** Ends the VMM process through its API after a snapshot or as a forced shutdown; empty when only a signal can. */
  planQuit(): ApiCall[]
  /** Asks the guest to stop. */
  planGracefulShutdown(): ApiCall[]
  /** Sets guest memory to `totalBytes` (boot plus hotplugged). */
  planResizeMemory(spec: VmSpec, totalBytes: number): ApiCall[]
  readonly stateCall: ApiCall
  parseState(body: unknown): VmState
  /** The call that tells the current memory size, and how to read it (boot plus hotplugged bytes). */
  readonly memoryCall: ApiCall
  parseMemory(body: unknown, spec: VmSpec): number
  /** The granularity of a memory resize, in bytes. */
  readonly memoryStep: number
  /** Host paths the VMM reopens from a snapshot's saved state: a restore must use the same ones. */
  pinnedPaths(spec: VmSpec, rt: RestRuntime): Record<string, string>
  /** Why the VMM ended when nobody here asked it to (known exit status or not). */
  unrequestedExit(exit: ProcessExit): { reason: ExitReason; vmmReason?: string }
}
