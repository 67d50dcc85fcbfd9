/**
 * One manager per test file over a data dir of its own: opened before the file's tests; at the
 * end its instances are deleted, it is closed and the dir removed. `open()` opens it again on
 * the same dir (after the test closed it: a restart of the host process).
 */
import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll } from 'vitest'
import { Hypeman, type HypemanOptions } from '../../src/index.js'

export interface FileManager {
  readonly hm: Hypeman
  readonly dataDir: string
  /** Opens the manager again on the same dir, with `overrides` on top of the file's options. */
  open(overrides?: Omit<HypemanOptions, 'dataDir'>): Promise<Hypeman>
  /** `sh -c script` in the instance: exit code, stdout, stderr. */
  sh(id: string, script: string): Promise<{ code: number; out: string; err: string }>
}

export function fileManager(prefix: string, opts: Omit<HypemanOptions, 'dataDir'>): FileManager {
  const t = {
    hm: undefined as unknown as Hypeman,
    dataDir: '',
    async open(overrides: Omit<HypemanOptions, 'dataDir'> = {}) {
      t.hm = await Hypeman.open({ dataDir: t.dataDir, ...opts, ...overrides })
      return t.hm
    },
    async sh(id: string, script: string) {
      const r = await t.hm.instances.exec(id, { argv: ['sh', '-c', script] })
      return { code: r.exitCode, out: r.stdout.toString(), err: r.stderr.toString() }
    },
  }
  beforeAll(async () => {
    t.dataDir = await mkdtemp(join(tmpdir(), prefix))
    await t.open()
  })
  afterAll(async () => {
    for (const i of await t.hm.instances.list().catch(() => [])) await t.hm.instances.delete(i.id).catch(() => {})
    await t.hm.close().catch(() => {})
    await rm(t.dataDir, { recursive: true, force: true })
  })
  return t
}

/** A debugfs request against an ext4 disk file (read-only): what the volume itself holds. */
export const debugfs = (disk: string, cmd: string): string => execFileSync('debugfs', ['-R', cmd, disk], { stdio: ['ignore', 'pipe', 'ignore'] }).toString()

/** Pids of the warm QEMUs of the manager of `dataDir` (their files are in its warm/). */
export function warmQemus(dataDir: string): number[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(`${dataDir}/warm/`)
      } catch {
        return false
      }
    })
    .map(Number)
}
