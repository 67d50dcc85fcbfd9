/**
 * As a user installs us: every package packed with `npm pack`, the tarballs installed into a
 * project of its own outside the repository (no workspace links), and a VM booted through the
 * installed `@hypeman-ts/core` with a fresh asset cache, on a PATH where `make` and the C
 * compilers fail, so the guest init can only come from the tarball's prebuilt binary.
 */
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
// Only the encoder comes from the sources; the binaries under test come from the installed tarball.
import { encodeGuestConfig } from '../../packages/core/src/guest/config-disk.js'

const root = fileURLToPath(new URL('../..', import.meta.url))
// The published packages (scripts/pack packs them, in this order).
const PACKAGES = ['common', 'vmm-drivers', 'netsetup', 'egress-proxy', 'core', 'server']
const cache = process.env.HYPEMAN_TS_CACHE ?? '/var/cache/hypeman-ts'
let work: string
let project: string

const BOOT = `
import { Hypeman } from '@hypeman-ts/core'
const [dataDir, cacheDir, image] = process.argv.slice(2)
const hm = await Hypeman.open({ dataDir, cacheDir, network: false })
try {
  const inst = await hm.instances.create({ image, name: 'packed', vcpus: 1, size: '256MB', overlaySize: '64MB', cmd: ['sh', '-c', 'echo hello from a packed install'] })
  const done = await hm.instances.waitForState(inst.id, 'Stopped', { timeout: '120s' })
  const lines = []
  for await (const l of hm.instances.logs(inst.id)) lines.push(l)
  const final = await hm.instances.get(inst.id)
  console.log(JSON.stringify({ state: done.state, exitCode: final.exitCode, lines }))
  await hm.instances.delete(inst.id)
} finally {
  await hm.close()
}
`

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'hm-packed-'))
  const packs = inject('packsDir')
  project = join(work, 'app')
  await mkdir(project)
  await writeFile(join(project, 'package.json'), JSON.stringify({ name: 'my-service', private: true, type: 'module' }))
  const tarballs = (await readdir(packs)).map((f) => join(packs, f))
  await run('npm', ['install', '--no-audit', '--no-fund', ...tarballs], { cwd: project, timeoutMs: 170_000 })
}, 600_000)

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true })
})

/** The packages a package's sources import (bare specifiers, node: builtins left out). */
function importsOf(pkg: string): Set<string> {
  const { stdout } = spawnSync('grep', ['-rhoE', "from '[^.'][^']*'", join(root, 'packages', pkg, 'src'), '--include=*.ts'], { encoding: 'utf8' })
  const names = stdout
    .split('\n')
    .map((l) => /from '([^']+)'/.exec(l)?.[1])
    .filter((s): s is string => !!s && !s.startsWith('node:'))
    .map((s) => (s.startsWith('@') ? s.split('/').slice(0, 2).join('/') : s.split('/')[0]!))
  return new Set(names)
}

describe('each package.json', () => {
  it.each(PACKAGES)('%s: depends on exactly what its sources import', (pkg) => {
    const deps = Object.keys(JSON.parse(readFileSync(join(root, 'packages', pkg, 'package.json'), 'utf8')).dependencies ?? {}).sort()
    expect(deps).toEqual([...importsOf(pkg)].sort())
  })
})

describe('the packed packages in a project of their own', () => {
  it('install as real directories, not links into this repository', async () => {
    const core = join(project, 'node_modules', '@hypeman-ts', 'core')
    const { stdout } = await run('find', [join(project, 'node_modules', '@hypeman-ts'), '-maxdepth', '1', '-type', 'l'])
    expect(stdout.trim()).toBe('')
    expect(await readdir(join(core, 'guest', 'prebuilt', 'x86_64'))).toEqual(['hypeman-init', 'source-hash'])
    expect(JSON.parse(readFileSync(join(core, 'package.json'), 'utf8')).engines.node).toBeDefined()
  })

  it('carry a prebuilt aarch64 init too, from the same sources, that parses a config as the x86_64 one does', async () => {
    const prebuilt = join(project, 'node_modules', '@hypeman-ts', 'core', 'guest', 'prebuilt')
    const hash = (arch: string) => readFileSync(join(prebuilt, arch, 'source-hash'), 'utf8')
    expect(hash('aarch64')).toBe(hash('x86_64'))
    const { stdout: kind } = await run('file', ['-b', join(prebuilt, 'aarch64', 'hypeman-init')])
    expect(kind).toMatch(/^ELF 64-bit LSB executable, ARM aarch64, .*statically linked/)
    // Run under qemu-user: the cross-built binary really executes and agrees with the native one.
    const config = join(work, 'config.img')
    await writeFile(config, encodeGuestConfig({ argv: ['/bin/sh', '-c', 'echo ü'], env: { A: 'b=c' }, workdir: '/srv', user: 'app', hostname: 'h1' }))
    const native = await run(join(prebuilt, 'x86_64', 'hypeman-init'), ['parse-config', config])
    const arm = await run('qemu-aarch64', [join(prebuilt, 'aarch64', 'hypeman-init'), 'parse-config', config])
    expect(native.stdout).toMatch(/^argv=\/bin\/sh$/m)
    expect(arm.stdout).toBe(native.stdout)
  })

  it('put the CLIs on the project\'s bin path: the proxy, and the host preflight', async () => {
    const { stdout } = await run(join(project, 'node_modules', '.bin', 'hypeman-egress-proxy'), ['--help'], { cwd: project })
    expect(stdout).toMatch(/^usage: hypeman-egress-proxy --config/)
    const doctor = await run(join(project, 'node_modules', '.bin', 'hypeman-ts'), ['doctor', '--data-dir', join(work, 'data'), '--cache-dir', join(work, 'asset-cache')], { cwd: project })
    expect(doctor.stdout).toMatch(/^ok +guest init +prebuilt for x86_64 in the package$/m)
    expect(doctor.stdout).toMatch(/this host can run hypeman-ts/)
    // hypeman's HTTP API: its own bin, and `hypeman-ts serve` runs it when the server package is installed too.
    const serve = await run(join(project, 'node_modules', '.bin', 'hypeman-ts'), ['serve', '--help'], { cwd: project })
    expect(serve.stdout).toMatch(/^usage: hypeman-ts-server serve/)
    const own = await run(join(project, 'node_modules', '.bin', 'hypeman-ts-server'), ['--help'], { cwd: project })
    expect(own.stdout).toBe(serve.stdout)
  })

  it('boot a VM with a fresh asset cache and no C toolchain on the PATH', async () => {
    const shims = join(work, 'no-toolchain')
    await mkdir(shims)
    for (const tool of ['make', 'cc', 'gcc']) {
      await writeFile(join(shims, tool), `#!/bin/sh\necho "${tool} must not be needed by a packed install" >&2\nexit 127\n`)
      await chmod(join(shims, tool), 0o755)
    }
    await writeFile(join(project, 'boot.mjs'), BOOT)
    const { stdout } = await run(
      process.execPath,
      ['boot.mjs', join(work, 'data'), join(work, 'asset-cache'), `oci:${cache}/fixtures/small:busybox-amd64`],
      { cwd: project, env: { ...process.env, PATH: `${shims}:${process.env.PATH}` }, timeoutMs: 170_000 },
    )
    const result = JSON.parse(stdout.trim().split('\n').pop()!)
    expect(result).toEqual({ state: 'Stopped', exitCode: 0, lines: ['hello from a packed install'] })
  })
})
