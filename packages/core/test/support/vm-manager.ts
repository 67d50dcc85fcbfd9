/**
 * The manager a VM test file works with: opened over a fresh data dir before its tests, and after
 * them its instances deleted, the manager closed and the dir removed. `reopen` is for tests that
 * close it on purpose (a crash, a restart of the host process).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll } from 'vitest'
import { Hypeman, type HypemanOptions } from '../../src/index.js'

export interface VmManager {
  hm: Hypeman
  dataDir: string
  reopen(): Promise<Hypeman>
}

export function useVmManager(name: string, opts: Omit<HypemanOptions, 'dataDir'>): VmManager {
  const t = {
    async reopen() {
      t.hm = await Hypeman.open({ dataDir: t.dataDir, ...opts })
      return t.hm
    },
  } as VmManager
  beforeAll(async () => {
    t.dataDir = await mkdtemp(join(tmpdir(), `hm-${name}-`))
    await t.reopen()
  })
  afterAll(async () => {
    for (const i of await t.hm.instances.list().catch(() => [])) await t.hm.instances.delete(i.id).catch(() => {})
    await t.hm.close().catch(() => {})
    await rm(t.dataDir, { recursive: true, force: true })
  })
  return t
}
