// Archives checked by GNU cpio (not ours): listing, modes, contents, links, device nodes.
import { mkdtemp, readFile, readlink, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { encodeCpio, type CpioEntry } from '../../src/assets/cpio.js'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-cpio-'))
})
afterAll(() => rm(dir, { recursive: true, force: true }))

const entries: CpioEntry[] = [
  { type: 'dir', path: 'bin' },
  { type: 'dir', path: '/etc/', mode: 0o700 },
  { type: 'file', path: 'init', data: Buffer.from('#!/bin/sh\necho hi\n'), mode: 0o755 },
  { type: 'file', path: 'etc/empty', data: Buffer.alloc(0) },
  { type: 'file', path: 'etc/odd-1', data: Buffer.from('x') },
  { type: 'file', path: 'etc/odd-3', data: Buffer.from('xyz') },
  { type: 'file', path: 'bin/binary', data: Buffer.from([0, 1, 2, 255, 0]) },
  { type: 'symlink', path: 'bin/sh', target: 'busybox' },
  { type: 'chardev', path: 'console', major: 5, minor: 1 },
]

describe('cpio newc writer', () => {
  it('is listed by GNU cpio with the right types, modes and sizes', async () => {
    const archive = join(dir, 'list.cpio')
    const { writeFile } = await import('node:fs/promises')
    await writeFile(archive, encodeCpio(entries))
    const { stdout } = await run('cpio', ['-itv', '--quiet', '-F', archive])
    // mode … date name; a device's size column is "major, minor", so split around the (fixed) 1970 date.
    const rows = stdout.trim().split('\n').map((l) => [l.split(/\s+/)[0], l.slice(l.indexOf(' 1970 ') + 6)])
    expect(rows).toEqual([
      ['drwxr-xr-x', 'bin'],
      ['drwx------', 'etc'],
      ['-rwxr-xr-x', 'init'],
      ['-rw-r--r--', 'etc/empty'],
      ['-rw-r--r--', 'etc/odd-1'],
      ['-rw-r--r--', 'etc/odd-3'],
      ['-rw-r--r--', 'bin/binary'],
      ['lrwxrwxrwx', 'bin/sh -> busybox'],
      ['crw-------', 'console'],
    ])
  })

  it('extracts byte for byte, with links and device numbers', async () => {
    const out = join(dir, 'x')
    const { mkdir, writeFile } = await import('node:fs/promises')
    await mkdir(out)
    await writeFile(join(dir, 'x.cpio'), encodeCpio(entries))
    await run('cpio', ['-idm', '--quiet', '-F', join(dir, 'x.cpio')], { cwd: out })
    expect(await readFile(join(out, 'init'), 'utf8')).toBe('#!/bin/sh\necho hi\n')
    expect(await readFile(join(out, 'bin/binary'))).toEqual(Buffer.from([0, 1, 2, 255, 0]))
    expect(await readFile(join(out, 'etc/odd-3'), 'utf8')).toBe('xyz')
    expect(await readlink(join(out, 'bin/sh'))).toBe('busybox')
    const dev = await stat(join(out, 'console'))
    expect(dev.isCharacterDevice()).toBe(true)
    expect([Math.floor(dev.rdev / 256), dev.rdev % 256]).toEqual([5, 1])
  })

  it('is deterministic (same entries, same bytes) and 4-byte aligned', () => {
    const a = encodeCpio(entries)
    expect(a.equals(encodeCpio(entries))).toBe(true)
    expect(a.length % 4).toBe(0)
    expect(a.includes(Buffer.from('TRAILER!!!'))).toBe(true)
  })

  it.each(['', '/', '../x', 'a/../b', 'a//b'])('refuses the path %j', (path) => {
    expect(() => encodeCpio([{ type: 'dir', path }])).toThrow(RangeError)
  })
})
