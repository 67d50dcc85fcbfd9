import { describe, expect, it } from 'vitest'
import { AbortedError, pollUntil, TimeoutError, withDeadline } from '../src/index.js'

const opts = { what: 'the thing', step: 'test.wait' }

describe('pollUntil', () => {
  it('returns the first value an attempt yields, pausing longer each time up to the cap', async () => {
    const at: number[] = []
    const value = await pollUntil(
      () => {
        at.push(Date.now())
        return at.length === 4 ? 'ready' : undefined
      },
      { ...opts, deadline: Date.now() + 5000, intervalMs: 20, maxIntervalMs: 40 },
    )
    expect(value).toBe('ready')
    const gaps = at.slice(1).map((t, i) => t - at[i]!)
    expect(gaps[0]).toBeGreaterThanOrEqual(15)
    expect(gaps[2]).toBeGreaterThanOrEqual(35)
    expect(gaps[2]).toBeLessThan(200)
  })

  it('gives up at the deadline with a TimeoutError naming what and the step', async () => {
    const t0 = Date.now()
    const err = await pollUntil(() => undefined, { ...opts, deadline: t0 + 150 }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(TimeoutError)
    expect(err).toMatchObject({ code: 'timeout', step: 'test.wait', message: 'timed out waiting for the thing' })
    // The last pause is cut to the deadline rather than overshooting it by an interval.
    expect(Date.now() - t0).toBeLessThan(400)
  })

  it('lets an attempt error through, and stops at once when the signal fires', async () => {
    await expect(pollUntil(() => Promise.reject(new Error('broken')), { ...opts, deadline: Date.now() + 1000 })).rejects.toThrow('broken')
    const ac = new AbortController()
    setTimeout(() => ac.abort(new Error('gone')), 50)
    const t0 = Date.now()
    const err = await pollUntil(() => undefined, { ...opts, deadline: t0 + 10_000, intervalMs: 5000, signal: ac.signal }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(AbortedError)
    expect(err).toMatchObject({ code: 'aborted', step: 'test.wait', cause: new Error('gone') })
    expect(Date.now() - t0).toBeLessThan(1000)
  })

  it('pauses with `wait` when given one, never longer than the time left', async () => {
    const asked: number[] = []
    let n = 0
    await pollUntil(() => (++n === 3 ? true : undefined), {
      ...opts,
      deadline: Date.now() + 60_000,
      intervalMs: 100,
      maxIntervalMs: 100,
      wait: async (ms) => void asked.push(ms),
    })
    expect(asked).toEqual([100, 100])
  })
})

describe('withDeadline', () => {
  it('resolves with the promise, or a TimeoutError or AbortedError naming the step', async () => {
    expect(await withDeadline(Promise.resolve(7), 1000, 'seven', 'test.race')).toBe(7)
    await expect(withDeadline(new Promise(() => {}), 30, 'never', 'test.race')).rejects.toMatchObject({
      code: 'timeout',
      step: 'test.race',
      message: 'timed out after 30 ms waiting for never',
    })
    const ac = new AbortController()
    ac.abort(new Error('stop'))
    await expect(withDeadline(new Promise(() => {}), 10_000, 'never', 'test.race', ac.signal)).rejects.toMatchObject({ code: 'aborted', step: 'test.race' })
  })
})
