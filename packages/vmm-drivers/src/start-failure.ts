/**
 * What every driver does when a start fails after the VMM was spawned: let a VMM that is ending
 * by itself say so, otherwise kill it, remove its runtime files, and throw one error that carries
 * the VMM's last words from its log. One place, so QEMU and the REST VMMs fail alike.
 */
import { AbortedError, errorMessage, HypemanError, TimeoutError, withDeadline, type Logger } from '@hypeman-ts/common'
import { VmmError } from './errors.js'
import { killAndWait, type ProcessWatch, type SpawnedProcess } from './process.js'
import { readTail } from './vmm-log.js'

export interface FailedStart {
  /** The VMM's name in messages ("QEMU", "Firecracker"). */
  label: string
  err: unknown
  /** The step that failed. */
  step: string
  spawned: SpawnedProcess
  watch: ProcessWatch
  /** Aborted once the process was seen to exit. */
  exited: AbortSignal
  removeRuntimeFiles: () => Promise<void>
  vmmLog: string
  /** Where the log stood before this start. */
  logOffset: number
  readyTimeoutMs: number
  /** Whether `err` is the readiness deadline passing (the VMM never served its control socket). */
  isReadyTimeout: (err: unknown) => boolean
  signal?: AbortSignal
  logger: Logger
}

export async function failStart(f: FailedStart): Promise<never> {
  const { label, err, step } = f
  // A closed control socket usually means the VMM is ending right now: let it say so before we decide.
  let exit =
    f.exited.aborted || (err instanceof VmmError && err.code === 'control_closed')
      ? await withDeadline(f.watch.exited, 1000, `${label} to exit`, step).catch(() => undefined)
      : undefined
  const diedByItself = exit !== undefined
  if (!diedByItself) {
    await killAndWait(f.spawned.pid, f.spawned.startTime).catch((e) =>
      f.logger.error(`could not kill ${label} ${f.spawned.pid} after a failed start: ${errorMessage(e)}`),
    )
    exit = await withDeadline(f.watch.exited, 10_000, `${label} to be reaped`, 'start.cleanup').catch(() => undefined)
  }
  f.watch.stop()
  await f.removeRuntimeFiles().catch(() => {})
  const tail = await readTail(f.vmmLog, f.logOffset)
  const details = { vmmLog: f.vmmLog, output: tail }
  if (f.signal?.aborted) throw new AbortedError('start aborted', { step, cause: f.signal.reason })
  if (diedByItself) {
    const how = exit?.signal ? `was killed by ${exit.signal}` : exit?.code != null ? `exited with code ${exit.code}` : 'exited'
    throw new VmmError('vmm_start_failed', `${label} ${how} during start${tail ? `: ${tail}` : ''}`, { step, details, cause: err })
  }
  if (err instanceof TimeoutError && f.isReadyTimeout(err)) {
    throw new VmmError('vmm_start_failed', `${label} was not ready within ${f.readyTimeoutMs} ms (${err.message})${tail ? `: ${tail}` : ''}`, {
      step,
      details,
      cause: err,
    })
  }
  if (err instanceof HypemanError) throw err
  throw new VmmError('vmm_start_failed', `start failed at ${step}: ${errorMessage(err)}`, { step, details, cause: err })
}
