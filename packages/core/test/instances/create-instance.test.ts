/**
 * `createInstance(params, opts)`, the one-call form over a default manager: it opens the manager
 * on first use, and an open that failed is tried again by the next call rather than kept.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { expect, inject, it } from 'vitest'
import { createInstance, defaultHypeman, Hypeman } from '../../src/index.js'

const reg = inject('registry')
const BUSYBOX = `${reg.open}/busybox:latest`

it('opens the default manager on first use, and a failed open is not kept', async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'hm-default-'))
  const opts = { dataDir, network: false as const, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' } }
  const holder = await Hypeman.open(opts)
  try {
    // Another manager holds the data dir: the default manager cannot open it yet.
    await expect(createInstance({ image: BUSYBOX, name: 'one-call' }, opts)).rejects.toMatchObject({ code: 'conflict', field: 'dataDir' })
  } finally {
    await holder.close()
  }
  const inst = await createInstance({ image: BUSYBOX, name: 'one-call', cmd: ['sleep', '600'] }, opts)
  expect(inst).toMatchObject({ name: 'one-call', state: 'Running' })
  const hm = await defaultHypeman()
  expect(hm.dataDir).toBe(dataDir)
  expect((await hm.instances.list()).map((i) => i.id)).toEqual([inst.id])
  await hm.instances.delete(inst.id)
  await hm.close()
  await rm(dataDir, { recursive: true, force: true })
})
