/**
 * An example app installed as its README says (`npm install` in its folder, after `npm run pack`),
 * but in a copy outside the repository: its `file:` dependencies on `../../.packs/` are pointed at
 * the tarballs this test run packed, so nothing resolves to workspace sources.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { run } from '@hypeman-ts/common'

const examples = fileURLToPath(new URL('../..', import.meta.url))

export interface InstalledExample {
  /** The installed copy: run its scripts with `cwd: dir`. */
  dir: string
  remove(): Promise<void>
}

export async function installExample(name: string, packsDir: string): Promise<InstalledExample> {
  const work = await mkdtemp(join(tmpdir(), `hm-example-${name}-`))
  const dir = join(work, name)
  await cp(join(examples, name), dir, { recursive: true, filter: (src) => !['node_modules', 'package-lock.json'].includes(basename(src)) })
  const manifestPath = join(dir, 'package.json')
  const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as { dependencies?: Record<string, string> }
  for (const [dep, spec] of Object.entries(manifest.dependencies ?? {})) {
    const m = /^file:\.\.\/\.\.\/\.packs\/(.+\.tgz)$/.exec(spec)
    if (m) manifest.dependencies![dep] = `file:${join(packsDir, m[1]!)}`
  }
  await writeFile(manifestPath, JSON.stringify(manifest, null, 2))
  await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'], { cwd: dir, timeoutMs: 300_000 })
  return { dir, remove: () => rm(work, { recursive: true, force: true }) }
}
