/**
 * Global setup of the examples test project: packs every package once (`scripts/pack`, as the
 * examples' READMEs say) into a folder the tests install from, so no test reaches workspace sources.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { run } from '@hypeman-ts/common'
import type { TestProject } from 'vitest/node'

declare module 'vitest' {
  export interface ProvidedContext {
    /** The folder with the five `npm pack` tarballs. */
    packsDir: string
  }
}

const root = fileURLToPath(new URL('../../..', import.meta.url))
let packsDir: string | undefined

export async function setup(project: TestProject): Promise<void> {
  packsDir = await mkdtemp(join(tmpdir(), 'hm-packs-'))
  await run('bash', [join(root, 'scripts', 'pack'), packsDir], { timeoutMs: 600_000 })
  project.provide('packsDir', packsDir)
}

export async function teardown(): Promise<void> {
  if (packsDir) await rm(packsDir, { recursive: true, force: true })
}
