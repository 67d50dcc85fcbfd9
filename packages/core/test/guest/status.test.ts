import { appendFile, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { lastBoot, parseStatusEvents, readStatusEvents, statusMark, summarizeStatus, waitForStatusEvent } from '../../src/guest/status.js'

const boot = '{"type":"boot","version":"1","initMs":1500,"modulesMs":150,"uptimeMs":1700}\n'
const started = '{"type":"started","pid":83,"uptimeMs":1900}\n'
const exited = '{"type":"exited","code":137,"signal":9,"signalName":"SIGKILL","oom":true,"message":"killed by signal 9 (SIGKILL) - OOM","uptimeMs":2500}\n'
const failed = '{"type":"error","step":"mount_root","message":"mount image disk /dev/vda (ext4) read-only: Invalid argument","uptimeMs":1800}\n'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-status-'))
})
afterAll(() => rm(dir, { recursive: true, force: true }))
const file = (name: string) => join(dir, name)

describe('status events', () => {
  it('parses complete lines, skipping junk and a torn last line', () => {
    const events = parseStatusEvents(`${boot}not json\n{"type":"unknown"}\n${started}{"type":"exi`)
    expect(events.map((e) => e.type)).toEqual(['boot', 'started'])
  })

  it('summarizes one boot and finds the last boot in an appended file', () => {
    const events = parseStatusEvents(boot + started + exited + boot + started)
    expect(summarizeStatus(events)).toMatchObject({ booted: true, started: true, pid: 83, exit: { code: 137, oom: true } })
    expect(summarizeStatus(lastBoot(events))).toEqual({ booted: true, started: true, pid: 83 })
    expect(summarizeStatus(parseStatusEvents(boot + failed))).toMatchObject({ started: false, error: { step: 'mount_root' } })
  })

  it('reads from a mark, so an earlier boot in the same file is not mistaken for this one', async () => {
    const path = file('marked.jsonl')
    await writeFile(path, boot + started + exited)
    const mark = await statusMark(path)
    expect(await readStatusEvents(path, mark)).toEqual([])
    await appendFile(path, boot)
    expect((await readStatusEvents(path, mark)).map((e) => e.type)).toEqual(['boot'])
    expect(await statusMark(file('missing'))).toBe(0)
    expect(await readStatusEvents(file('missing'))).toEqual([])
  })

  it('waits for an event written later, by a file that does not exist yet', async () => {
    const path = file('later.jsonl')
    setTimeout(() => void writeFile(path, boot), 50)
    setTimeout(() => void appendFile(path, started), 150)
    const e = await waitForStatusEvent(path, 'started', { timeoutMs: 10_000 })
    expect(e).toMatchObject({ type: 'started', pid: 83 })
  })

  it('returns a terminal event instead of waiting out the deadline for one that will not come', async () => {
    const path = file('failed.jsonl')
    await writeFile(path, boot + failed)
    const t0 = Date.now()
    const e = await waitForStatusEvent(path, 'started', { timeoutMs: 10_000 })
    expect(e.type).toBe('error')
    expect(Date.now() - t0).toBeLessThan(5_000)
  })

  it('times out with a typed error, and stops on abort', async () => {
    const path = file('quiet.jsonl')
    await writeFile(path, boot)
    await expect(waitForStatusEvent(path, 'exited', { timeoutMs: 200, pollMs: 20 })).rejects.toMatchObject({ code: 'status_timeout' })
    const ac = new AbortController()
    setTimeout(() => ac.abort(), 50)
    await expect(waitForStatusEvent(path, 'exited', { timeoutMs: 10_000, signal: ac.signal })).rejects.toMatchObject({ code: 'aborted' })
  })
})
