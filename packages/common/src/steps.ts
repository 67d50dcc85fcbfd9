/**
 * A lifecycle as an ordered list of named, reversible steps, in the shape of firecracker-go-sdk's
 * handler lists with their cleanup stack and hypeman's create.go with an undo next to each step.
 * Each step that finished is recorded (and persisted when the step says so); on a failure or an
 * abort the recorded steps are undone, newest first. The record outlives the process, so a
 * reconcile after a crash, or a delete, undoes the same steps through the same undos
 * (`undoSteps`). Undos are idempotent: a crash in the middle of one is finished by running them
 * all again.
 */
import { errorMessage } from './errors.js'

export interface Step<C> {
  readonly name: string
  run(ctx: C, signal: AbortSignal): Promise<void>
  /** Reverses the step; idempotent, and must cope with a half-done `run` when `recordFirst`. */
  undo?(ctx: C): Promise<void>
  /**
   * Record (and persist) the step before it runs: for a step that a crash could leave half-done
   * (a spawned process, links half made), so that its undo runs whatever happened.
   */
  recordFirst?: boolean
  /** Persist the record once the step finished. */
  durable?: boolean
}

/** A list of steps; an inner array is a group whose steps run at the same time. */
export type StepList<C> = readonly (Step<C> | readonly Step<C>[])[]

/** Where a run records its steps: the names, oldest first, and how to write them durably. */
export interface StepRecord {
  readonly done: string[]
  persist(): Promise<void>
}

/** A run of steps failed: `step` names the one that did, `cause` is its error. */
export interface StepFailure {
  step: string
  cause: unknown
}

export interface RunStepsOptions {
  signal?: AbortSignal
  /** Called for each undo that failed while unwinding; the other undos still run. */
  onUndoError?: (failure: StepFailure) => void
}

/** The list without the named steps (a variant edits the list by name rather than flag steps). */
export function withoutSteps<C>(steps: StepList<C>, names: Iterable<string>): StepList<C> {
  const drop = new Set(names)
  return steps
    .map((s) => (Array.isArray(s) ? (s as readonly Step<C>[]).filter((x) => !drop.has(x.name)) : s))
    .filter((s) => (Array.isArray(s) ? s.length > 0 : !drop.has((s as Step<C>).name)))
}

function flatten<C>(steps: StepList<C>): Step<C>[] {
  return steps.flatMap((s) => (Array.isArray(s) ? [...(s as readonly Step<C>[])] : [s as Step<C>]))
}

/**
 * Runs the steps in order, but those already in the record (a caller that did the first step
 * itself, under a lock of its own, records it before the run). On a failure (or an abort of `signal`) it undoes every recorded step,
 * newest first, and throws `{ step, cause }` as a StepFailure-carrying error: callers wrap it in
 * their own typed error naming the step.
 */
export async function runSteps<C>(steps: StepList<C>, ctx: C, record: StepRecord, opts: RunStepsOptions = {}): Promise<void> {
  // Steps are recorded by name: a second step of the same name would be taken as done.
  const names = flatten(steps).map((s) => s.name)
  const twice = names.find((n, i) => names.indexOf(n) !== i)
  if (twice !== undefined) throw new Error(`internal: two steps are named ${twice}`)
  const signal = opts.signal ?? new AbortController().signal
  let current = ''
  const runOne = async (step: Step<C>): Promise<void> => {
    if (record.done.includes(step.name)) return
    if (step.recordFirst) {
      record.done.push(step.name)
      await record.persist()
    }
    signal.throwIfAborted()
    await step.run(ctx, signal)
    if (!step.recordFirst) record.done.push(step.name)
    if (step.durable) await record.persist()
  }
  try {
    for (const entry of steps) {
      const group = Array.isArray(entry) ? (entry as readonly Step<C>[]) : undefined
      current = group ? group[0]!.name : (entry as Step<C>).name
      signal.throwIfAborted()
      if (!group) {
        await runOne(entry as Step<C>)
        continue
      }
      // Every member of a group settles before anything is undone, so no undo races a run.
      const settled = await Promise.allSettled(group.map(runOne))
      const failed = settled.findIndex((s) => s.status === 'rejected')
      if (failed >= 0) {
        current = group[failed]!.name
        throw (settled[failed] as PromiseRejectedResult).reason
      }
    }
  } catch (cause) {
    await undoSteps(steps, ctx, record, opts.onUndoError)
    throw new StepsFailedError({ step: current, cause })
  }
}

/**
 * Undoes the recorded steps, newest first, removing each from `record.done` as it goes. A failed
 * undo is reported and the rest still run; the record is not persisted here (the caller decides:
 * often the last undo removes the very place the record lives).
 */
export async function undoSteps<C>(steps: StepList<C>, ctx: C, record: StepRecord, onError?: (failure: StepFailure) => void): Promise<StepFailure[]> {
  const byName = new Map(flatten(steps).map((s) => [s.name, s]))
  const failures: StepFailure[] = []
  while (record.done.length > 0) {
    const name = record.done[record.done.length - 1]!
    try {
      await byName.get(name)?.undo?.(ctx)
    } catch (cause) {
      const failure = { step: name, cause }
      failures.push(failure)
      onError?.(failure)
    }
    record.done.pop()
  }
  return failures
}

/** What `runSteps` throws: the failed step and its error, for the caller to wrap in its own type. */
export class StepsFailedError extends Error implements StepFailure {
  readonly step: string
  override readonly cause: unknown
  constructor(failure: StepFailure) {
    super(`step ${failure.step} failed: ${errorMessage(failure.cause)}`)
    this.name = 'StepsFailedError'
    this.step = failure.step
    this.cause = failure.cause
  }
}
