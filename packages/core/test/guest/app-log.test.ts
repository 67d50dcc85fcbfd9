import { appendFile, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { followLog, tailLines } from '../../src/guest/app-log.js'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-applog-'))
})
afterAll(() => rm(dir, { recursive: true, force: true }))

describe('app log', () => {
  it('tails the last lines, across read chunks, with or without a final newline', async () => {
    const path = join(dir, 'big.log')
    const lines = Array.from({ length: 20_000 }, (_, i) => `line ${i} ${'x'.repeat(i % 50)}`)
    await writeFile(path, `${lines.join('\n')}\n`)
    expect(await tailLines(path, 3)).toEqual(lines.slice(-3))
    expect(await tailLines(path, 5000)).toEqual(lines.slice(-5000))
    await appendFile(path, 'partial')
    expect(await tailLines(path, 2)).toEqual([lines.at(-1), 'partial'])
    expect(await tailLines(path, 0)).toEqual([])
    expect(await tailLines(join(dir, 'missing.log'), 5)).toEqual([])
    const short = join(dir, 'short.log')
    await writeFile(short, 'a\nb\n')
    expect(await tailLines(short, 10)).toEqual(['a', 'b'])
  })

  it('follows new lines as they are written, joining lines split across writes', async () => {
    const path = join(dir, 'follow.log')
    await writeFile(path, 'old 1\nold 2\n')
    const ac = new AbortController()
    const seen: string[] = []
    const done = (async () => {
      for await (const line of followLog(path, { signal: ac.signal, tail: 1, pollMs: 20 })) {
        seen.push(line)
        if (seen.length === 4) ac.abort()
      }
    })()
    await new Promise((r) => setTimeout(r, 100))
    await appendFile(path, 'new 1\nnew ')
    await new Promise((r) => setTimeout(r, 100))
    await appendFile(path, '2\nnew 3\n')
    await done
    expect(seen).toEqual(['old 2', 'new 1', 'new 2', 'new 3'])
  })

  it('follows a file that does not exist yet and ends when aborted', async () => {
    const path = join(dir, 'later.log')
    const ac = new AbortController()
    const seen: string[] = []
    const done = (async () => {
      for await (const line of followLog(path, { signal: ac.signal, pollMs: 20 })) seen.push(line)
    })()
    await new Promise((r) => setTimeout(r, 60))
    await writeFile(path, 'hello\n')
    for (let i = 0; i < 100 && seen.length === 0; i++) await new Promise((r) => setTimeout(r, 20))
    ac.abort()
    await done
    expect(seen).toEqual(['hello'])
  })
})
