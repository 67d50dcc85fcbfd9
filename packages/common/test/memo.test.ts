import { describe, expect, it } from 'vitest'
import { memoAsync } from '../src/index.js'

describe('memoAsync', () => {
  it('computes once for every caller, and again after a failure', async () => {
    let calls = 0
    let fail = true
    const value = memoAsync(async (n: number) => {
      calls++
      await new Promise((r) => setTimeout(r, 10))
      if (fail) throw new Error(`failed ${n}`)
      return n
    })
    // Both callers share the first computation and its failure.
    const failed = await Promise.allSettled([value(1), value(2)])
    expect(failed.map((r) => r.status === 'rejected' && (r.reason as Error).message)).toEqual(['failed 1', 'failed 1'])
    fail = false
    expect(await Promise.all([value(3), value(4)])).toEqual([3, 3])
    expect(await value(5)).toBe(3)
    expect(calls).toBe(2)
  })
})
