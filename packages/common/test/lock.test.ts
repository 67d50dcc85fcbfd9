import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { KeyedQueue, Lazy, readJsonIfExists, withFileLock, writeJsonAtomic } from '../src/index.js'
import { run } from '../src/run.js'

const dirs: string[] = []
/** A temporary folder, removed when the file's tests are done. */
async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  dirs.push(dir)
  return dir
}
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true })
})

describe('KeyedQueue', () => {
  it('runs one function at a time per key, in call order, and goes on after a failure', async () => {
    const q = new KeyedQueue()
    const events: string[] = []
    const step = (key: string, n: number, fail = false) =>
      q.run(key, async () => {
        events.push(`${key}${n}+`)
        await new Promise((r) => setTimeout(r, 10))
        events.push(`${key}${n}-`)
        if (fail) throw new Error(`${key}${n} failed`)
        return n
      })
    const results = await Promise.allSettled([step('a', 1, true), step('a', 2), step('b', 1), step('a', 3)])
    expect(results.map((r) => r.status)).toEqual(['rejected', 'fulfilled', 'fulfilled', 'fulfilled'])
    const a = events.filter((e) => e.startsWith('a'))
    expect(a).toEqual(['a1+', 'a1-', 'a2+', 'a2-', 'a3+', 'a3-'])
    // Another key does not wait for this one.
    expect(events.indexOf('b1+')).toBeLessThan(events.indexOf('a1-'))
  })
})

describe('withFileLock', () => {
  it('serialises critical sections in one process', async () => {
    const dir = await tempDir('lock-')
    const lock = join(dir, 'l.lock')
    const events: string[] = []
    await Promise.all(
      [1, 2, 3].map((i) =>
        withFileLock(lock, async () => {
          events.push(`in${i}`)
          await new Promise((r) => setTimeout(r, 20))
          events.push(`out${i}`)
        }),
      ),
    )
    for (let i = 0; i < events.length; i += 2) expect(events[i + 1]).toBe(events[i]!.replace('in', 'out'))
  })

  it('takes over a lock whose owner process died', async () => {
    const dir = await tempDir('lock-')
    const lock = join(dir, 'l.lock')
    const { stdout } = await run('sh', ['-c', 'sh -c "exit 0" & echo $!'])
    await writeFile(lock, stdout.trim())
    await new Promise((r) => setTimeout(r, 50))
    expect(await withFileLock(lock, async () => 'got it', { timeoutMs: 2000 })).toBe('got it')
  })

  it('waits for a live owner and times out', async () => {
    const dir = await tempDir('lock-')
    const lock = join(dir, 'l.lock')
    await writeFile(lock, '1') // pid 1 is alive
    await expect(withFileLock(lock, async () => 'x', { timeoutMs: 100 })).rejects.toMatchObject({ code: 'timeout' })
    expect(await readFile(lock, 'utf8')).toBe('1')
  })
})

describe('atomic JSON', () => {
  it('round-trips and reports missing files as undefined', async () => {
    const dir = await tempDir('json-')
    await writeJsonAtomic(join(dir, 'a.json'), { a: 1 })
    expect(await readJsonIfExists(join(dir, 'a.json'))).toEqual({ a: 1 })
    expect(await readJsonIfExists(join(dir, 'missing.json'))).toBeUndefined()
  })
})

describe('Lazy', () => {
  it('makes the value once for every caller, and tries again after a failure', async () => {
    let calls = 0
    const lazy = new Lazy(async () => {
      calls++
      if (calls === 1) throw new Error('not yet')
      return calls
    })
    expect(lazy.started).toBeUndefined()
    await expect(lazy.get()).rejects.toThrow('not yet')
    expect(lazy.started).toBeUndefined()
    expect(await Promise.all([lazy.get(), lazy.get()])).toEqual([2, 2])
    expect(await lazy.started).toBe(2)
    expect(calls).toBe(2)
  })

  it('the call that starts the making supplies its arguments; waiting callers share its failure', async () => {
    let calls = 0
    let fail = true
    const value = new Lazy(async (n: number) => {
      calls++
      await new Promise((r) => setTimeout(r, 10))
      if (fail) throw new Error(`failed ${n}`)
      return n
    })
    const failed = await Promise.allSettled([value.get(1), value.get(2)])
    expect(failed.map((r) => r.status === 'rejected' && (r.reason as Error).message)).toEqual(['failed 1', 'failed 1'])
    fail = false
    expect(await Promise.all([value.get(3), value.get(4)])).toEqual([3, 3])
    expect(await value.get(5)).toBe(3)
    expect(calls).toBe(2)
  })

  it('a maker that throws before its first await is a rejection, not a throw', async () => {
    const lazy = new Lazy<number>(() => {
      throw new Error('at once')
    })
    await expect(lazy.get()).rejects.toThrow('at once')
  })
})
