/**
 * What the boot benchmarks share: a work dir, a local registry with the busybox fixture, a manager
 * under TCG without a network (the bare baselines have none either) that boots cold (no
 * templates: the benchmarks measure boots), the image pulled before the clock starts; `open`
 * gives more managers on the same image (their own data dirs); and all of it removed afterwards,
 * whatever the benchmark did.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Hypeman, type HypemanOptions } from '@hypeman-ts/core'
import { pushFixtures, startRegistries } from '../../packages/core/test/support/registry.js'

type OpenManager = (dataDir: string, opts?: Partial<HypemanOptions>) => Promise<Hypeman>

export async function withBusyboxManager(name: string, bench: (hm: Hypeman, image: string, work: string, open: OpenManager) => Promise<void>): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), `bench-${name}-`))
  const registries = await startRegistries(join(work, 'registry'))
  const managers: Hypeman[] = []
  const image = `${registries.open.host}/busybox:latest`
  const open: OpenManager = async (dataDir, opts = {}) => {
    const m = await Hypeman.open({ dataDir: join(work, dataDir), accel: 'tcg', network: false, templates: false, ...opts })
    managers.push(m)
    await m.images.pull(image)
    return m
  }
  try {
    await pushFixtures(registries.open.host, ['busybox:latest'])
    await bench(await open('data'), image, work, open)
  } finally {
    for (const m of managers) {
      for (const i of await m.instances.list()) await m.instances.delete(i.id).catch(() => {})
      await m.close()
    }
    await registries.stop()
    await rm(work, { recursive: true, force: true })
  }
}
