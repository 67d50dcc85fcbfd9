/**
 * Global setup of the core test project: starts the local registries (anonymous, Basic, token)
 * and pushes the fixture images, then hands their addresses to the tests through `inject`.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TestProject } from 'vitest/node'
import { pushFixtures, startRegistries, type Registries } from './registry.js'

declare module 'vitest' {
  export interface ProvidedContext {
    registry: { open: string; basic: string; token: string; tokenRealm: string }
  }
}

let registries: Registries | undefined
let workDir: string | undefined

export async function setup(project: TestProject): Promise<void> {
  workDir = await mkdtemp(join(tmpdir(), 'hypeman-registry-'))
  registries = await startRegistries(workDir)
  await pushFixtures(registries.open.host)
  project.provide('registry', {
    open: registries.open.host,
    basic: registries.basic.host,
    token: registries.token.host,
    tokenRealm: registries.tokenServer.realm,
  })
}

export async function teardown(): Promise<void> {
  await registries?.stop()
  if (workDir) await rm(workDir, { recursive: true, force: true })
}
