/**
 * What every driver does when a start fails after the VMM was spawned: let a VMM that is ending
 * by itself say so, otherwise kill it, remove its runtime files (the spawn step's undo), and throw
 * one error that carries the VMM's last words from its log. One place, so QEMU and the REST VMMs
 * fail alike.
 */
import { AbortedError, errorMessage, HypemanError, TimeoutError, withDeadline, type StepsFailedError } from '@hypeman-ts/common'
import { VmmError } from './errors.js'
import { killAndWait } from './process.js'
import type { StartRun } from './start.js'
import { readTail } from './vmm-log.js'

/** The undo of the spawn: the process ends (by itself, or killed) and its runtime files go. */
export async function endFailedStart(run: StartRun): Promise<void> {
  const { label, logger } = run.plan
  const { process, watch } = run.vmm
  const err = run.failure
  // A closed control socket usually means the VMM is ending right now: let it say so before we decide.
  let exit =
    run.exited.signal.aborted || (err instanceof VmmError && err.code === 'control_closed')
      ? await withDeadline(watch.exited, 1000, `${label} to exit`, 'start.cleanup').catch(() => undefined)
      : undefined
  const byItself = exit !== undefined
  if (!byItself) {
    await killAndWait(process.pid, process.startTime).catch((e) => logger.error(`could not kill ${label} ${process.pid} after a failed start: ${errorMessage(e)}`))
    exit = await withDeadline(watch.exited, 10_000, `${label} to be reaped`, 'start.cleanup').catch(() => undefined)
  }
  watch.stop()
  await run.plan.removeRuntimeFiles().catch(() => {})
  run.end = { exit, byItself }
}

/** The error of a start that failed at `failed.step`, once the runner undid what it had done. */
export async function failStart(run: StartRun, failed: StepsFailedError): Promise<never> {
  const { step, cause: err } = failed
  const { label, opts, vmmLog } = run.plan
  if (opts.signal?.aborted) throw new AbortedError('start aborted', { step, cause: opts.signal.reason })
  // Nothing was spawned (so nothing was ended): the spawn's own error says it all.
  if (!run.end) throw err
  const tail = await readTail(vmmLog, run.logOffset)
  const details = { vmmLog, output: tail }
  const { exit, byItself } = run.end
  if (byItself) {
    const how = exit?.signal ? `was killed by ${exit.signal}` : exit?.code != null ? `exited with code ${exit.code}` : 'exited'
    throw new VmmError('vmm_start_failed', `${label} ${how} during start${tail ? `: ${tail}` : ''}`, { step, details, cause: err })
  }
  if (err instanceof TimeoutError && run.plan.isReadyTimeout(step)) {
    throw new VmmError('vmm_start_failed', `${label} was not ready within ${run.plan.readyTimeoutMs} ms (${err.message})${tail ? `: ${tail}` : ''}`, {
      step,
      details,
      cause: err,
    })
  }
  if (err instanceof HypemanError) throw err
  throw new VmmError('vmm_start_failed', `start failed at ${step}: ${errorMessage(err)}`, { step, details, cause: err })
}
