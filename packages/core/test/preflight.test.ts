/**
 * `Hypeman.open` checks what its configuration needs before it creates anything: a missing host
 * program, a kernel image that is not a kernel, a data or cache dir laid out by another version,
 * and one that cannot be written are each a typed error naming the thing, with the data dir left
 * as it was (not created, no lock file).
 */
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { findOnPath } from '@hypeman-ts/common'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { Hypeman } from '../src/index.js'
import { LAYOUT_VERSION, WRITTEN_BY } from '../src/preflight.js'

let dir: string
const savedPath = process.env.PATH
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-preflight-'))
})
afterEach(() => {
  process.env.PATH = savedPath
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

const fresh = async (name: string) => ({ dataDir: join(dir, name, 'data'), cacheDir: join(dir, name, 'cache') })
const entries = (d: string) => readdir(d).catch(() => 'absent')

describe('Hypeman.open preflight', () => {
  it('names the first missing program with its package, lists the rest, and creates nothing', async () => {
    // A PATH with the VMM and mkfs but only part of the networking tools.
    const bin = join(dir, 'partial-bin')
    await mkdir(bin)
    for (const tool of ['qemu-system-x86_64', 'mkfs.ext4', 'ip', 'tc']) await symlink(findOnPath(tool)!, join(bin, tool))
    process.env.PATH = bin
    const dirs = await fresh('tools')
    const err = await Hypeman.open({ ...dirs }).catch((e: unknown) => e)
    expect(err).toMatchObject({
      code: 'tool_missing',
      field: 'nft',
      message: expect.stringContaining('apt-get install nftables'),
      details: { missing: ['nft', 'sysctl', 'nsenter'] },
    })
    expect(await entries(dirs.dataDir)).toBe('absent')
    // Without networking, the networking tools are not needed.
    const hm = await Hypeman.open({ ...dirs, network: false })
    await hm.close()
  })

  it('refuses a kernel image that is not a kernel, naming kernel.image', async () => {
    const notKernel = join(dir, 'vmlinuz')
    await writeFile(notKernel, '#!/bin/sh\necho I am a script\n'.repeat(100))
    const dirs = await fresh('kernel')
    await expect(Hypeman.open({ ...dirs, network: false, kernel: { image: notKernel, version: '6.1.0-test' } })).rejects.toMatchObject({
      code: 'invalid_kernel',
      field: 'kernel.image',
      message: expect.stringContaining('not a kernel image'),
    })
    await expect(Hypeman.open({ ...dirs, network: false, kernel: { image: join(dir, 'nope'), version: '6.1.0-test' } })).rejects.toMatchObject({ code: 'invalid_kernel', field: 'kernel.image' })
    expect(await entries(dirs.dataDir)).toBe('absent')
  })

  it('marks a fresh data and cache dir with its layout, and opens them again', async () => {
    const dirs = await fresh('marker')
    const hm = await Hypeman.open({ ...dirs, network: false })
    await hm.close()
    for (const d of [dirs.dataDir, dirs.cacheDir]) {
      expect(JSON.parse(await readFile(join(d, 'hypeman-ts.layout.json'), 'utf8'))).toEqual({ layout: LAYOUT_VERSION, writtenBy: WRITTEN_BY })
    }
    await (await Hypeman.open({ ...dirs, network: false })).close()
  })

  it.each([
    ['dataDir', { layout: LAYOUT_VERSION + 1, writtenBy: '@hypeman-ts/core 9.0.0' }, /laid out by @hypeman-ts\/core 9\.0\.0 \(layout 2\).*upgrade @hypeman-ts\/core/],
    ['cacheDir', { layout: LAYOUT_VERSION + 1, writtenBy: '@hypeman-ts/core 9.0.0' }, /cacheDir .* upgrade/],
    ['dataDir', 'not json', /laid out by something unreadable.*remove it, or point dataDir at another directory/],
  ] as const)('refuses a %s laid out by another version (%j)', async (field, marker, message) => {
    const dirs = await fresh(`layout-${field}-${typeof marker}`)
    const target = field === 'dataDir' ? dirs.dataDir : dirs.cacheDir
    await mkdir(target, { recursive: true })
    await writeFile(join(target, 'hypeman-ts.layout.json'), typeof marker === 'string' ? marker : JSON.stringify(marker))
    await expect(Hypeman.open({ ...dirs, network: false })).rejects.toMatchObject({ code: 'incompatible_layout', field, message: expect.stringMatching(message) })
    // The refusal touched nothing: no lock, no instance or image folders.
    if (field === 'dataDir') expect(await entries(dirs.dataDir)).toEqual(['hypeman-ts.layout.json'])
    else expect(await entries(dirs.dataDir)).toBe('absent')
  })

  it('names a data dir that cannot be created', async () => {
    const file = join(dir, 'a-file')
    await writeFile(file, 'x')
    await expect(Hypeman.open({ dataDir: join(file, 'data'), cacheDir: join(dir, 'wcache'), network: false })).rejects.toMatchObject({
      code: 'dir_not_writable',
      field: 'dataDir',
      message: expect.stringContaining('run as root, or set dataDir to a directory this user owns'),
    })
  })
})
