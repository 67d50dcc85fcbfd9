/** The template store on its own (no VM): complete-or-absent, one maker per key, LRU under a size cap. */
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { TemplateStore, templateKey } from '../../src/templates/store.js'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-tplstore-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

/** Makes a template of `bytes` through the store, as a boot does: claim, snapshot into staging, commit. */
async function make(store: TemplateStore, name: string, bytes: number) {
  const key = templateKey({ name })
  const claim = store.beginMaking(key)!
  await mkdir(claim.snapshotDir, { recursive: true })
  await writeFile(join(claim.snapshotDir, 'vmstate'), Buffer.alloc(bytes, 1))
  await writeFile(join(claim.snapshotDir, 'snapshot.json'), '{}')
  return store.commit(key, { shape: { name }, mac: null })
}

describe('TemplateStore', () => {
  it('keys differ with any part of the shape and are stable for the same one', () => {
    expect(templateKey({ a: 1, b: [1, 2] })).toBe(templateKey({ a: 1, b: [1, 2] }))
    expect(templateKey({ a: 1, b: [1, 2] })).not.toBe(templateKey({ a: 1, b: [2, 1] }))
    expect(templateKey({ a: 1 })).toMatch(/^[0-9a-f]{32}$/)
  })

  it('lets one boot make a key at a time, and a made template is found by its key', async () => {
    const store = new TemplateStore({ dir, maxBytes: 1 << 30 })
    await store.init()
    const key = templateKey({ name: 'x' })
    expect(store.beginMaking(key)).toBeDefined()
    expect(store.beginMaking(key)).toBeUndefined()
    await store.abandon(key)
    expect(await store.get(key)).toBeUndefined()
    const t = await make(store, 'x', 8192)
    expect(t.key).toBe(key)
    expect(t.bytes).toBeGreaterThanOrEqual(8192)
    expect((await store.get(key))?.snapshotDir).toBe(join(dir, key, 'snapshot'))
    expect(await readdir(dir)).toEqual([key])
  })

  it('drops the least recently used templates past the size cap, never the one just made', async () => {
    const store = new TemplateStore({ dir, maxBytes: 3 * 65536 })
    await store.init()
    const a = await make(store, 'a', 65536)
    await new Promise((r) => setTimeout(r, 5))
    const b = await make(store, 'b', 65536)
    await new Promise((r) => setTimeout(r, 5))
    await store.touch(a) // a is now more recent than b
    await new Promise((r) => setTimeout(r, 5))
    const c = await make(store, 'c', 65536 + 4096)
    const keys = (await store.list()).map((t) => t.key).sort()
    expect(keys).toEqual([a.key, c.key].sort())
    expect(await store.get(b.key)).toBeUndefined()
    // A template larger than the cap on its own is still kept (the cap would otherwise make none).
    const small = new TemplateStore({ dir, maxBytes: 1 })
    const d = await make(small, 'd', 4096)
    expect((await small.list()).map((t) => t.key)).toEqual([d.key])
  })

  it('removes at init what a crash left: staging dirs, incomplete templates, strangers', async () => {
    const store = new TemplateStore({ dir, maxBytes: 1 << 30 })
    await store.init()
    const kept = await make(store, 'kept', 4096)
    const key = templateKey({ name: 'half' })
    await mkdir(join(dir, `${key}.staging`, 'snapshot'), { recursive: true })
    await mkdir(join(dir, templateKey({ name: 'no-meta' }), 'snapshot'), { recursive: true })
    await mkdir(join(dir, 'junk'))
    await new TemplateStore({ dir, maxBytes: 1 << 30 }).init()
    expect(await readdir(dir)).toEqual([kept.key])
  })
})
