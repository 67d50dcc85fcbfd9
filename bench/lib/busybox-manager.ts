/**
 * What the boot benchmarks share: a work dir, a local registry with the busybox fixture, a manager
 * under TCG without a network (the bare baselines have none either), the image pulled before the
 * clock starts; and all of it removed afterwards, whatever the benchmark did.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Hypeman } from '@hypeman-ts/core'
import { pushFixtures, startRegistries } from '../../packages/core/test/support/registry.js'

export async function withBusyboxManager(name: string, bench: (hm: Hypeman, image: string, work: string) => Promise<void>): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), `bench-${name}-`))
  const registries = await startRegistries(join(work, 'registry'))
  const hm = await Hypeman.open({ dataDir: join(work, 'data'), accel: 'tcg', network: false })
  try {
    await pushFixtures(registries.open.host, ['busybox:latest'])
    const image = `${registries.open.host}/busybox:latest`
    await hm.images.pull(image)
    await bench(hm, image, work)
  } finally {
    for (const i of await hm.instances.list()) await hm.instances.delete(i.id).catch(() => {})
    await hm.close()
    await registries.stop()
    await rm(work, { recursive: true, force: true })
  }
}
