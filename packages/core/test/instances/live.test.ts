/**
 * The live-VM bookkeeping (issue 11): pause and resume hand back new handles over the same VMM,
 * and the entry must still go when that VMM ends, whichever handle is current.
 */
import { describe, expect, it } from 'vitest'
import type { ExitInfo, LiveVm } from '@hypeman-ts/vmm-drivers'
import { LiveVms } from '../../src/instances/live.js'

/** A VMM's handles as the drivers make them: views that share one `exited` promise. */
function fakeVmm(pid: number) {
  let end!: (exit: ExitInfo) => void
  const exited = new Promise<ExitInfo>((r) => (end = r))
  const handle = (phase: 'running' | 'paused'): LiveVm =>
    ({
      pid,
      phase,
      exited,
      pause: async () => handle('paused'),
      resume: async () => handle('running'),
    }) as unknown as LiveVm
  return { first: handle('running'), end: () => end({ reason: 'killed', code: null, signal: 'SIGKILL', at: new Date().toISOString() }) }
}

describe('LiveVms', () => {
  it('forgets a VMM that ended after a pause and resume, and records its end once', async () => {
    const live = new LiveVms()
    const vmm = fakeVmm(100)
    const recorded: string[] = []
    live.watch('a', vmm.first, async (exit) => void recorded.push(exit.reason))
    const paused = await (vmm.first as Extract<LiveVm, { phase: 'running' }>).pause()
    live.update('a', paused)
    live.update('a', await (paused as Extract<LiveVm, { phase: 'paused' }>).resume())
    expect(live.get('a')?.phase).toBe('running')
    vmm.end()
    await live.recorded('a')
    expect(live.get('a')).toBeUndefined()
    expect(live.size).toBe(0)
    expect(recorded).toEqual(['killed'])
  })

  it('a newer boot is not forgotten when the older one\'s end is recorded', async () => {
    const live = new LiveVms()
    const old = fakeVmm(1)
    const next = fakeVmm(2)
    let release!: () => void
    const slow = new Promise<void>((r) => (release = r))
    live.watch('a', old.first, () => slow)
    old.end()
    await new Promise((r) => setTimeout(r, 0))
    // Ended: no longer live, though its end is still being recorded.
    expect(live.get('a')).toBeUndefined()
    live.watch('a', next.first, async () => {})
    release()
    await new Promise((r) => setTimeout(r, 0))
    expect(live.get('a')?.pid).toBe(2)
  })

  it('refuses a handle of another VMM', () => {
    const live = new LiveVms()
    live.watch('a', fakeVmm(1).first, async () => {})
    expect(() => live.update('a', fakeVmm(2).first)).toThrow(/no live VM with pid 2/)
  })
})
