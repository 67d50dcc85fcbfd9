import { describe, expect, it } from 'vitest'
import { Listeners } from '../src/index.js'

describe('Listeners', () => {
  it('tells every listener, hands a throw to onThrow without stopping the rest, and removes on request', () => {
    const thrown: [string, number][] = []
    const l = new Listeners<number>((err, e) => thrown.push([(err as Error).message, e]))
    const seen: number[] = []
    l.add(() => {
      throw new Error('careless')
    })
    const remove = l.add((e) => seen.push(e))
    l.emit(1)
    remove()
    l.emit(2)
    expect(seen).toEqual([1])
    expect(thrown).toEqual([
      ['careless', 1],
      ['careless', 2],
    ])
  })
})
