import { describe, expect, it } from 'vitest'
import { mapBounded } from '../src/index.js'

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('mapBounded', () => {
  it('keeps the order of the items and never runs more than the limit at once', async () => {
    let running = 0
    let most = 0
    const out = await mapBounded([50, 10, 30, 0, 20, 5, 40], 3, async (ms, i) => {
      most = Math.max(most, ++running)
      await tick(ms)
      running--
      return `${i}:${ms}`
    })
    expect(out).toEqual(['0:50', '1:10', '2:30', '3:0', '4:20', '5:5', '6:40'])
    expect(most).toBe(3)
  })

  it('handles no items', async () => {
    expect(await mapBounded([], 16, async () => 1)).toEqual([])
  })

  it('rejects with the first failure and starts nothing after it', async () => {
    const started: number[] = []
    const run = mapBounded([1, 2, 3, 4, 5, 6], 2, async (n) => {
      started.push(n)
      await tick(n === 1 ? 20 : 5)
      if (n === 2) throw new Error('two failed')
      return n
    })
    await expect(run).rejects.toThrow('two failed')
    await tick(30)
    expect(started).toEqual([1, 2])
  })
})
