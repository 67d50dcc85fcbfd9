/**
 * Runs the jobs, at most `concurrency` at a time, each in a VM of its own that is always deleted.
 * Aborting `signal` (Ctrl-C) stops everything: queued jobs are not started, running ones are
 * marked interrupted and their VMs deleted (a VM still booting has its create cancelled).
 */
import type { Hypeman } from '@hypeman-ts/core'
import type { Job } from './jobfile.js'

export type JobStatus =
  | 'queued' | 'starting' | 'running' // in progress
  | 'succeeded' | 'failed' | 'timed out' | 'error' | 'interrupted' | 'not started' // final

export interface JobResult {
  name: string
  status: JobStatus
  /** The program's exit code, once it ended by itself. */
  exitCode: number | null
  /** What ended it, in words: "exited with code 3", the error, the timeout. */
  message: string
  /** From the start of its VM's create to the end, in ms. */
  durationMs: number | null
  /** The last lines the program printed. */
  lastLines: string[]
  /** Its VM's name while it exists. */
  vm?: string
}

export interface RunOptions {
  concurrency: number
  signal: AbortSignal
  /** Called on every status change of a job (the result is updated in place). */
  onChange: (job: JobResult) => void
  /** Lines of output to keep per job. */
  tail: number
}

const BOOT_AND_EXIT_CHUNK = '5m' // waitForState waits at most 5 minutes per call
/** The tag on every VM of ours, so a later run can find those a killed one left behind. */
const TAG = { app: 'batch-jobs' }

/**
 * Deletes the VMs an earlier run left (one killed with SIGKILL, or by a power cut, had no chance
 * to). A data dir has one manager at a time, so no other run can be using them. Returns their names.
 */
export async function removeLeftovers(hm: Hypeman): Promise<string[]> {
  const left = await hm.instances.list({ tags: TAG })
  for (const inst of left) await hm.instances.delete(inst.id)
  return left.map((inst) => inst.name)
}

export async function runJobs(hm: Hypeman, jobs: Job[], opts: RunOptions): Promise<JobResult[]> {
  const results = jobs.map((j): JobResult => ({ name: j.name, status: 'queued', exitCode: null, message: '', durationMs: null, lastLines: [] }))
  const runId = Date.now().toString(36)
  let next = 0
  const worker = async () => {
    while (next < jobs.length && !opts.signal.aborted) {
      const i = next++
      await runJob(hm, jobs[i]!, results[i]!, `batch-${runId}-${i}`, opts)
    }
  }
  await Promise.all(Array.from({ length: Math.min(opts.concurrency, jobs.length) }, worker))
  for (const r of results) if (r.status === 'queued') set(r, opts, { status: 'not started', message: 'interrupted before it started' })
  return results
}

async function runJob(hm: Hypeman, job: Job, r: JobResult, vm: string, opts: RunOptions): Promise<void> {
  const started = Date.now()
  const timeout = new AbortController()
  const stop = AbortSignal.any([opts.signal, timeout.signal])
  let timer: NodeJS.Timeout | undefined
  set(r, opts, { status: 'starting', vm })
  try {
    const inst = await hm.instances.create(
      { name: vm, image: job.image, cmd: job.cmd, env: job.env, vcpus: job.vcpus, size: job.memory, overlaySize: '1GB', tags: TAG },
      { signal: stop },
    )
    // The timeout counts the program's time, not the boot (slow without KVM).
    if (job.timeoutMs) timer = setTimeout(() => timeout.abort(), job.timeoutMs)
    set(r, opts, { status: 'running' }) // the program started (a short one may have ended already)
    let state = inst.state
    while (state !== 'Stopped' && state !== 'Unknown' && !stop.aborted) {
      ;({ state } = await hm.instances.waitForState(vm, 'Stopped', { timeout: BOOT_AND_EXIT_CHUNK, signal: stop }))
    }
    clearTimeout(timer)
    r.lastLines = await lastLines(hm, vm, opts.tail)
    if (state !== 'Stopped' && state !== 'Unknown') {
      // Still running: Ctrl-C or the timeout stopped the wait (the VM is deleted below).
      if (opts.signal.aborted) return set(r, opts, { status: 'interrupted', message: 'interrupted while running', durationMs: Date.now() - started })
      return set(r, opts, { status: 'timed out', message: `still running after ${job.timeoutMs} ms`, durationMs: Date.now() - started })
    }
    const end = await hm.instances.get(vm)
    set(r, opts, {
      status: end.exitCode === 0 ? 'succeeded' : end.state === 'Stopped' ? 'failed' : 'error',
      exitCode: end.exitCode ?? null,
      message: end.exitMessage ?? end.stateError ?? end.state,
      durationMs: Date.now() - started,
    })
  } catch (err) {
    // A create cancelled by Ctrl-C rejects too: that is an interruption, not an error of the job.
    if (opts.signal.aborted) set(r, opts, { status: 'interrupted', message: 'interrupted while starting', durationMs: Date.now() - started })
    else set(r, opts, { status: 'error', message: (err as Error).message, durationMs: Date.now() - started })
  } finally {
    clearTimeout(timer)
    // Always: a VM that ran, timed out, failed to boot or was interrupted is removed with all it made.
    await hm.instances.delete(vm).catch((err: { code?: string }) => {
      if (err.code !== 'not_found') r.message += ` (deleting its VM failed: ${(err as Error).message})`
    })
    delete r.vm
  }
}

async function lastLines(hm: Hypeman, vm: string, tail: number): Promise<string[]> {
  const lines: string[] = []
  try {
    for await (const line of hm.instances.logs(vm, { tail })) lines.push(line)
  } catch {
    // No output to show is not a reason to fail the job.
  }
  return lines
}

function set(r: JobResult, opts: RunOptions, change: Partial<JobResult>): void {
  Object.assign(r, change)
  opts.onChange(r)
}
