import { describe, expect, it } from 'vitest'
import { runSteps, StepsFailedError, undoSteps, type Step, type StepRecord } from '../src/index.js'

function recorder(): StepRecord & { persisted: string[][] } {
  const r = {
    done: [] as string[],
    persisted: [] as string[][],
    async persist() {
      r.persisted.push([...r.done])
    },
  }
  return r
}

type Log = string[]
const step = (name: string, opts: Partial<Step<Log>> & { fail?: boolean; delayMs?: number } = {}): Step<Log> => ({
  name,
  async run(log) {
    log.push(`run ${name}`)
    if (opts.delayMs) await new Promise((r) => setTimeout(r, opts.delayMs))
    if (opts.fail) throw new Error(`${name} broke`)
  },
  async undo(log) {
    log.push(`undo ${name}`)
  },
  ...(opts.recordFirst ? { recordFirst: true } : {}),
  ...(opts.durable ? { durable: true } : {}),
})

describe('runSteps', () => {
  it('runs in order, records each finished step, and persists where a step asks', async () => {
    const log: Log = []
    const rec = recorder()
    await runSteps([step('a', { durable: true }), step('b'), step('c', { recordFirst: true })], log, rec)
    expect(log).toEqual(['run a', 'run b', 'run c'])
    expect(rec.done).toEqual(['a', 'b', 'c'])
    // a after it ran; c before it ran (so a crash inside c still undoes it).
    expect(rec.persisted).toEqual([['a'], ['a', 'b', 'c']])
  })

  it('on a failure undoes the finished steps newest first and names the failed one', async () => {
    const log: Log = []
    const rec = recorder()
    const err = await runSteps([step('a'), step('b', { recordFirst: true }), step('c'), step('d', { fail: true }), step('e')], log, rec).catch((e) => e)
    expect(err).toBeInstanceOf(StepsFailedError)
    expect(err).toMatchObject({ step: 'd', cause: { message: 'd broke' } })
    expect(log).toEqual(['run a', 'run b', 'run c', 'run d', 'undo c', 'undo b', 'undo a'])
    expect(rec.done).toEqual([])
  })

  it('a recordFirst step that fails is undone too (it may have half-happened)', async () => {
    const log: Log = []
    const err = await runSteps([step('a'), step('spawn', { recordFirst: true, fail: true })], log, recorder()).catch((e) => e)
    expect(err.step).toBe('spawn')
    expect(log).toEqual(['run a', 'run spawn', 'undo spawn', 'undo a'])
  })

  it('a group runs at once; when one member fails, the others settle before anything is undone', async () => {
    const log: Log = []
    const err = await runSteps([step('a'), [step('slow', { delayMs: 30 }), step('broken', { fail: true })], step('z')], log, recorder()).catch((e) => e)
    expect(err.step).toBe('broken')
    expect(log).toEqual(['run a', 'run slow', 'run broken', 'undo slow', 'undo a'])
  })

  it('an abort between steps undoes what finished and names the step it stopped before', async () => {
    const log: Log = []
    const ac = new AbortController()
    const abortAfter: Step<Log> = { name: 'b', run: async (l) => void (l.push('run b'), ac.abort(new Error('deleted'))) }
    const err = await runSteps([step('a'), abortAfter, step('c')], log, recorder(), { signal: ac.signal }).catch((e) => e)
    expect(err).toMatchObject({ step: 'c', cause: { message: 'deleted' } })
    expect(log).toEqual(['run a', 'run b', 'undo a'])
  })
})

describe('a run that starts with steps already recorded', () => {
  it('skips them, and undoes them with the rest on a failure', async () => {
    const log: Log = []
    const rec = recorder()
    rec.done.push('reserved')
    const err = await runSteps([step('reserved'), step('b'), step('c', { fail: true })], log, rec).catch((e) => e)
    expect(err.step).toBe('c')
    expect(log).toEqual(['run b', 'run c', 'undo b', 'undo reserved'])
  })
})

describe('a list that names a step twice', () => {
  it('is refused before anything runs', async () => {
    const log: Log = []
    await expect(runSteps([step('a'), [step('b'), step('a')]], log, recorder())).rejects.toThrow(/two steps are named a/)
    expect(log).toEqual([])
  })
})

describe('undoSteps', () => {
  it('resumes from a persisted record, goes on past a failed undo, and reports it', async () => {
    const log: Log = []
    const broken: Step<Log> = { name: 'b', run: async () => {}, undo: async () => Promise.reject(new Error('busy')) }
    const rec = { done: ['a', 'b', 'c'], persist: async () => {} }
    const failures = await undoSteps([step('a'), broken, step('c'), step('never-ran')], log, rec)
    expect(log).toEqual(['undo c', 'undo a'])
    expect(failures).toMatchObject([{ step: 'b', cause: { message: 'busy' } }])
    expect(rec.done).toEqual([])
  })
})
