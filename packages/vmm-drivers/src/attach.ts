/**
 * Finding a VM again from its persisted record, the same for every driver: the process is
 * watched again and the driver connects its control channel; a process that exits meanwhile is
 * `vmm_not_running` rather than whatever the connection saw.
 */
import { VmmError } from './errors.js'
import { isSameProcessAlive, ProcessWatch } from './process.js'
import type { AttachOptions, PersistedVm } from './types.js'

export interface Attaching {
  watch: ProcessWatch
  /** The caller's signal, or the process's exit, whichever comes first. */
  signal: AbortSignal
  t0: number
  deadline: number
}

/** `connect` must leave nothing open when it throws; the watch is stopped here. */
export async function attachVmm<T>(
  label: string,
  persisted: PersistedVm,
  opts: AttachOptions & { readyTimeoutMs: number },
  connect: (a: Attaching) => Promise<T>,
): Promise<T> {
  if (!isSameProcessAlive(persisted.pid, persisted.pidStartTime)) {
    throw new VmmError('vmm_not_running', `${label} process ${persisted.pid} is gone`, { step: 'attach' })
  }
  const watch = new ProcessWatch(persisted.pid, persisted.pidStartTime)
  const exited = new AbortController()
  void watch.exited.then(() => exited.abort(new Error(`${label} exited`)))
  const t0 = Date.now()
  try {
    return await connect({ watch, signal: opts.signal ? AbortSignal.any([exited.signal, opts.signal]) : exited.signal, t0, deadline: t0 + opts.readyTimeoutMs })
  } catch (err) {
    watch.stop()
    if (exited.signal.aborted) {
      throw new VmmError('vmm_not_running', `${label} process ${persisted.pid} exited while attaching`, { step: 'attach', cause: err })
    }
    throw err
  }
}
