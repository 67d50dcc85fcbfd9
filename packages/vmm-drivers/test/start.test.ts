/**
 * The start step list every driver runs (src/start.ts, src/start-failure.ts), with `sh` standing
 * in for a VMM: which step a failure names, what is undone and in which order, and that the
 * process is gone afterwards.
 */
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pollUntil, silentLogger, type Step } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ON_SPAWN, spawnStep, startVmm, type StartPlan, type StartRun } from '../src/start.js'
import type { StartOptions, VmSpec } from '../src/types.js'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-start-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

let n = 0
/** A plan whose "VMM" runs `script` in sh; its runtime file is `<runtimeDir>/control.sock`. */
function plan(script: string, opts: StartOptions = {}): StartPlan & { pids: number[] } {
  const runtimeDir = join(dir, `vm${++n}`)
  const control = join(runtimeDir, 'control.sock')
  const pids: number[] = []
  return {
    pids,
    driver: 'qemu',
    label: 'Fake',
    spec: { runtimeDir } as VmSpec,
    accel: 'tcg',
    controlSocket: control,
    command: 'sh',
    args: ['-c', script, control],
    vmmLog: join(dir, `vm${n}.log`),
    pidFile: join(runtimeDir, 'vmm.pid'),
    mark: control,
    removeRuntimeFiles: () => rm(control, { force: true }),
    restore: false,
    readyTimeoutMs: 5000,
    isReadyTimeout: (step) => step === 'control',
    opts: { ...opts, onSpawn: async (p) => (pids.push(p.pid), await opts.onSpawn?.(p)) },
    logger: silentLogger,
  }
}

const gone = (pid: number) => !existsSync(`/proc/${pid}`)

/** A control step that makes the runtime file, logs its undo, and then does `then`. */
function control(log: string[], then: (r: StartRun, signal: AbortSignal) => Promise<void>): Step<StartRun> {
  return {
    name: 'control',
    run: async (r, signal) => {
      await writeFile(r.plan.controlSocket, '')
      await then(r, signal)
    },
    undo: async () => void log.push('undo control'),
  }
}

describe('startVmm', () => {
  it('runs the list and hands back the process, watched, with its timings', async () => {
    const p = plan('exec sleep 30')
    const run = await startVmm(p, [spawnStep('qemu'), ON_SPAWN, control([], async (r) => r.ready())])
    expect(run.vmm.persisted).toMatchObject({ driver: 'qemu', pid: p.pids[0], controlSocket: p.controlSocket, accel: 'tcg' })
    expect(run.timings.readyMs).toBeGreaterThanOrEqual(0)
    process.kill(run.vmm.process.pid, 'SIGKILL')
    await run.vmm.watch.exited
  })

  it('a step that fails: its own name in the error, the finished steps undone newest first, the process killed', async () => {
    const p = plan('echo starting; exec sleep 30')
    const log: string[] = []
    const err = await startVmm(p, [
      spawnStep('qemu'),
      ON_SPAWN,
      // Until the fake has said something (after the log's header, which names the command), for the error to carry it.
      control(log, async (r) => {
        const said = async () => (await readFile(r.plan.vmmLog, 'utf8')).slice(r.logOffset).includes('starting') || undefined
        await pollUntil(said, { deadline: r.deadline, what: 'output', step: 'test' })
      }),
      { name: 'boot', run: async () => Promise.reject(new Error('refused')) },
    ]).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'vmm_start_failed', step: 'boot', message: 'start failed at boot: refused', details: { output: 'starting' } })
    expect(log).toEqual(['undo control'])
    expect(gone(p.pids[0]!)).toBe(true)
    expect(existsSync(p.controlSocket)).toBe(false)
  })

  it('a VMM that exits by itself is noticed at once and reported with its exit code and last words', async () => {
    const p = plan('sleep 0.2; echo bye; exit 3')
    const t0 = Date.now()
    const err = await startVmm(p, [
      spawnStep('qemu'),
      ON_SPAWN,
      // Waits for the signal only: the exit is what ends it, long before the readiness deadline.
      control([], (_r, signal) => new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }))),
    ]).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'vmm_start_failed', step: 'control', message: 'Fake exited with code 3 during start: bye' })
    expect(Date.now() - t0).toBeLessThan(3000)
  })

  it('an abort in onSpawn: AbortedError naming the step it stopped before, the process killed', async () => {
    const ac = new AbortController()
    const p = plan('exec sleep 30', { signal: ac.signal, onSpawn: () => ac.abort(new Error('caller gave up')) })
    const err = await startVmm(p, [spawnStep('qemu'), ON_SPAWN, control([], async () => {})]).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'aborted', step: 'control', cause: new Error('caller gave up') })
    expect(gone(p.pids[0]!)).toBe(true)
  })

  it('a spawn that fails throws its own error; nothing else ran', async () => {
    const notExecutable = join(dir, 'not-a-vmm')
    await writeFile(notExecutable, 'just data', { mode: 0o644 })
    const p = { ...plan('true'), command: notExecutable }
    const err = await startVmm(p, [spawnStep('qemu'), ON_SPAWN]).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'vmm_start_failed', step: 'qemu.spawn', message: expect.stringContaining('EACCES') })
    expect(p.pids).toEqual([])
  })
})
