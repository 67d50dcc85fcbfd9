/**
 * Host preflight: on this machine (set up by scripts/setup, root) everything required is there;
 * on a PATH without the tools, each one is reported missing with the package to install, the
 * CLI exits 1, and a run-time call of a missing tool is the same typed `tool_missing` error.
 */
import { mkdir, mkdtemp, rm, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Hypeman } from '../src/index.js'

const cli = fileURLToPath(new URL('../src/cli.ts', import.meta.url))
let dir: string

/** A PATH that holds node and nothing else: every host tool is missing. */
let bareEnv: NodeJS.ProcessEnv

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-doctor-'))
  await mkdir(join(dir, 'bin'))
  await symlink(process.execPath, join(dir, 'bin', 'node'))
  bareEnv = { ...process.env, PATH: join(dir, 'bin') }
})

afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('doctor', () => {
  it('finds everything required on this host', async () => {
    const report = await Hypeman.doctor({ dataDir: join(dir, 'data'), cacheDir: process.env.HYPEMAN_TS_CACHE ?? '/var/cache/hypeman-ts' })
    expect(report.checks.filter((c) => c.required && c.status !== 'ok')).toEqual([])
    expect(report.ok).toBe(true)
    const names = report.checks.map((c) => c.name)
    for (const n of ['node', 'qemu-system-x86_64', 'kvm', 'mkfs.ext4', 'cp', 'dd', 'busybox (static)', 'guest kernel', 'guest init', 'data dir', 'cache dir', 'privileges', 'nft', 'tc', 'ip']) expect(names).toContain(n)
    // scripts/setup made the headers disk of the cached kernel.
    expect(report.checks.find((c) => c.name === 'kernel headers')).toMatchObject({ status: 'ok', required: false, detail: expect.stringMatching(/^disk cached for /) })
  })

  it('names each missing tool and its package, and the CLI exits 1', async () => {
    const env = bareEnv
    const res = await run(process.execPath, ['--import', 'tsx', cli, 'doctor', '--json', '--data-dir', join(dir, 'data'), '--cache-dir', join(dir, 'cache')], { env, okCodes: [1] })
    const report = JSON.parse(res.stdout)
    expect(report.ok).toBe(false)
    const by = Object.fromEntries(report.checks.map((c: { name: string }) => [c.name, c]))
    expect(by['qemu-system-x86_64']).toMatchObject({ status: 'missing', required: true, fix: expect.stringContaining('apt-get install qemu-system-x86') })
    expect(by['nft']).toMatchObject({ status: 'missing', fix: expect.stringContaining('nftables') })
    expect(by['mkfs.ext4']).toMatchObject({ status: 'missing', fix: expect.stringContaining('e2fsprogs') })
    expect(by['cp']).toMatchObject({ status: 'missing', fix: expect.stringContaining('coreutils') })
    // A fresh cache and no apt: the kernel has to be given.
    expect(by['guest kernel']).toMatchObject({ status: 'missing', fix: expect.stringContaining('kernel: { image') })
    expect(by['kernel headers']).toMatchObject({ status: 'warn', required: false, fix: expect.stringContaining('skipKernelHeaders: true') })
    expect(by['data dir']).toMatchObject({ status: 'ok' })
  })

  it('takes busybox\'s cp and dd for missing: the sparse copies need GNU\'s options', async () => {
    const bin = join(dir, 'bbbin')
    await mkdir(bin)
    await symlink(process.execPath, join(bin, 'node'))
    for (const tool of ['cp', 'dd']) await symlink('/bin/busybox', join(bin, tool))
    const res = await run(process.execPath, ['--import', 'tsx', cli, 'doctor', '--json', '--no-network', '--data-dir', join(dir, 'data'), '--cache-dir', join(dir, 'cache')], { env: { ...process.env, PATH: bin }, okCodes: [1] })
    const by = Object.fromEntries(JSON.parse(res.stdout).checks.map((c: { name: string }) => [c.name, c]))
    for (const tool of ['cp', 'dd']) expect(by[tool]).toMatchObject({ status: 'missing', detail: expect.stringContaining('needs GNU coreutils'), fix: expect.stringContaining('coreutils') })
  })

  it('the text report marks what is missing and says how to fix it', async () => {
    const env = bareEnv
    const res = await run(process.execPath, ['--import', 'tsx', cli, 'doctor', '--no-network', '--data-dir', join(dir, 'data'), '--cache-dir', join(dir, 'cache')], { env, okCodes: [1] })
    expect(res.stdout).toMatch(/^MISSING qemu-system-x86_64 +not found on PATH\n +→ Debian\/Ubuntu: apt-get install qemu-system-x86; Fedora: dnf install qemu-system-x86-core/m)
    expect(res.stdout).not.toMatch(/^\S+ +nft /m)
    expect(res.stdout).toMatch(/something required is missing/)
  })

  it('a bad command is usage, exit 2', async () => {
    const res = await run(process.execPath, ['--import', 'tsx', cli, 'frobnicate'], { okCodes: [2] })
    expect(res.stderr).toMatch(/^usage: hypeman-ts doctor/)
  })
})
