/**
 * How an instance reference resolves (id, name, unique id prefix; hypeman's rule) and list over
 * many instances, on records written straight to a data directory: no VMs, nothing booted.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { isHypemanError } from '@hypeman-ts/common'
import { InstanceLookupError } from '../../src/errors.js'
import { InstanceContext, type InstanceManagerOptions } from '../../src/instances/context.js'
import { InstanceManager } from '../../src/instances/manager.js'
import type { InstanceSpec } from '../../src/instances/params.js'
import { InstanceFiles, newRecord, type InstanceRecord } from '../../src/instances/record.js'

let dir: string
let files: InstanceFiles
let cx: InstanceContext
let manager: InstanceManager

/** A stopped instance that never booted: all list and find need of a record. */
function record(id: string, name: string, extra: Partial<InstanceRecord> = {}): InstanceRecord {
  const spec = { name, image: 'busybox', env: {}, credentials: {}, tags: { n: name }, network: { enabled: false }, vcpus: 1, size: '256MB', overlaySize: '64MB' } as unknown as InstanceSpec
  const createdAt = new Date(Date.UTC(2026, 0, 1, 0, 0, Number(id.replace(/\D/g, '')) % 60)).toISOString()
  return { ...newRecord(id, spec, createdAt), phase: 'ready', ...extra }
}

async function put(r: InstanceRecord): Promise<void> {
  await mkdir(files.paths(r.id).dir, { recursive: true })
  await files.write(r)
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-find-'))
  files = new InstanceFiles(dir, join(dir, 'run'), join(dir, 'ram'))
  await files.init()
  for (const r of [
    record('abc111', 'one'),
    record('abc222', 'two'),
    record('xyz333', 'three'),
    // A name that is also a prefix of another instance's id: the name wins.
    record('def444', 'xyz'),
    record('gone555', 'gone', { phase: 'deleting' }),
    record('gone666', 'also-gone'),
  ]) {
    await put(r)
  }
  const opts = { files } as unknown as InstanceManagerOptions
  cx = new InstanceContext(opts)
  manager = new InstanceManager(opts)
})

afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

const refusal = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => e)

describe('InstanceContext.find', () => {
  it('takes a full id, a name, or a prefix of exactly one id', async () => {
    expect((await cx.find('abc111')).name).toBe('one')
    expect((await cx.find('three')).id).toBe('xyz333')
    expect((await cx.find('abc2')).id).toBe('abc222')
    expect((await cx.find('de')).id).toBe('def444')
  })

  it('prefers a name to a prefix', async () => {
    expect((await cx.find('xyz')).id).toBe('def444')
    expect((await cx.find('xy')).id).toBe('xyz333')
  })

  it('refuses an ambiguous prefix with ambiguous naming the field, never a guess', async () => {
    const err = await refusal(cx.find('abc'))
    expect(err).toBeInstanceOf(InstanceLookupError)
    expect(err).toMatchObject({ code: 'ambiguous', field: 'id', message: expect.stringContaining('prefix of 2 instance ids') })
  })

  it('answers not_found for an unknown reference, and for one being deleted (by id, name or prefix)', async () => {
    for (const ref of ['q', 'gone555', 'gone5', 'ABC', 'abc1111']) {
      expect(isHypemanError(await refusal(cx.find(ref)), 'not_found'), ref).toBe(true)
    }
    // "gone" names the one being deleted and prefixes both ids: only the other one is left to find.
    expect((await cx.find('gone')).id).toBe('gone666')
  })

  it('refuses an empty reference as invalid input', async () => {
    expect(await refusal(cx.find(''))).toMatchObject({ code: 'invalid_input', field: 'id' })
  })
})

describe('InstanceManager', () => {
  it('gets by prefix too', async () => {
    expect((await manager.get('xyz3')).name).toBe('three')
  })

  it('lists many instances, oldest first, filtered by tags, skipping those being deleted', async () => {
    const many = Array.from({ length: 40 }, (_, i) => record(`many${String(i).padStart(3, '0')}x`, `many-${i}`))
    for (const r of many) await put(r)
    const all = await manager.list()
    expect(all).toHaveLength(5 + 40)
    expect(all.map((i) => i.createdAt)).toEqual([...all.map((i) => i.createdAt)].sort())
    expect(all.every((i) => i.state === 'Stopped')).toBe(true)
    expect((await manager.list({ tags: { n: 'many-7' } })).map((i) => i.id)).toEqual(['many007x'])
  })
})
