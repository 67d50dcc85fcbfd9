/**
 * Layer application, including crafted layers that try to write outside the root. Each attack
 * runs against a root inside a sandbox directory that also holds "host" files; the test proves
 * the host files are untouched and nothing appeared outside the root.
 */
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { gzipSync } from 'node:zlib'
import { pack, type Header } from 'tar-stream'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { run } from '@hypeman-ts/common'
import { decompress, entryComponents, LayerApplier } from '../../src/images/unpack.js'

type Entry = Partial<Header> & { name: string; body?: string }

async function tarOf(entries: Entry[]): Promise<Buffer> {
  const p = pack()
  for (const { body, ...h } of entries) {
    await new Promise<void>((resolve, reject) => p.entry({ mode: h.type === 'directory' ? 0o755 : 0o644, ...h }, body ?? '', (err) => (err ? reject(err) : resolve())))
  }
  p.finalize()
  const chunks: Buffer[] = []
  for await (const c of p) chunks.push(Buffer.from(c as Uint8Array))
  return Buffer.concat(chunks)
}

let sandbox: string
let root: string
let host: string

/** Everything under the sandbox except the root, as relative path → content or link target. */
function hostSnapshot(): Record<string, string> {
  const out: Record<string, string> = {}
  const walk = (d: string, rel: string): void => {
    for (const n of readdirSync(d)) {
      const p = join(d, n)
      const r = rel ? `${rel}/${n}` : n
      if (p === root) continue
      const st = lstatSync(p)
      if (st.isSymbolicLink()) out[r] = `-> ${readlinkSync(p)}`
      else if (st.isDirectory()) {
        out[r] = `dir ${st.mode.toString(8)}`
        walk(p, r)
      } else out[r] = `${readFileSync(p, 'utf8')} nlink=${st.nlink} mode=${st.mode.toString(8)}`
    }
  }
  walk(sandbox, '')
  return out
}

async function apply(entries: Entry[], applier = new LayerApplier(root)) {
  return applier.apply(Readable.from(await tarOf(entries)))
}

afterEach(() => rmSync(sandbox, { recursive: true, force: true }))

beforeEach(() => {
  sandbox = mkdtempSync(join(tmpdir(), 'unpack-'))
  root = join(sandbox, 'root')
  host = join(sandbox, 'host')
  mkdirSync(root)
  mkdirSync(host)
  writeFileSync(join(host, 'secret'), 'host secret')
  mkdirSync(join(host, 'dir'))
  writeFileSync(join(host, 'dir', 'keep'), 'keep me')
})

describe('crafted layers never write outside the root', () => {
  const attacks: [string, () => Entry[], RegExp | null][] = [
    ['a ".." entry', () => [{ name: '../host/secret', body: 'pwned' }], /contains "\.\."/],
    ['a ".." buried in the path', () => [{ name: 'a/b/../../../host/secret', body: 'pwned' }], /contains "\.\."/],
    ['an absolute path naming a host file', () => [{ name: `${host}/secret`, body: 'pwned' }], null],
    ['a symlink to an absolute host dir, then a file through it', () => [
      { name: 'evil', type: 'symlink', linkname: host },
      { name: 'evil/secret', body: 'pwned' },
      { name: 'evil/dir/new', body: 'pwned' },
    ], null],
    ['a relative symlink climbing out, then a file through it', () => [
      { name: 'evil', type: 'symlink', linkname: '../../../../../../..' + host },
      { name: 'evil/secret', body: 'pwned' },
    ], null],
    ['a symlink at the final component, then a file with that name', () => [
      { name: 'link', type: 'symlink', linkname: join(host, 'secret') },
      { name: 'link', body: 'pwned' },
    ], null],
    ['a symlink, then a directory entry with that name and a file in it', () => [
      { name: 'd', type: 'symlink', linkname: join(host, 'dir') },
      { name: 'd', type: 'directory' },
      { name: 'd/keep', body: 'pwned' },
    ], null],
    ['a hardlink climbing out with ..', () => [{ name: 'hl', type: 'link', linkname: '../host/secret' }], /contains "\.\."/],
    ['a hardlink to an absolute host path', () => [{ name: 'hl', type: 'link', linkname: join(host, 'secret') }], /does not exist in the image/],
    ['a hardlink through a symlinked directory', () => [
      { name: 'd', type: 'symlink', linkname: host },
      { name: 'hl', type: 'link', linkname: 'd/secret' },
    ], /does not exist in the image/],
    ['a whiteout through a symlinked directory', () => [
      { name: 'd', type: 'symlink', linkname: host },
      { name: 'd/.wh.secret', body: '' },
      { name: 'd/dir/.wh..wh..opq', body: '' },
    ], null],
    ['a whiteout of ".."', () => [{ name: 'x/.wh...', body: '' }], /contains "\.\."|invalid whiteout/],
    ['a character device', () => [{ name: 'dev/evil', type: 'character-device', devmajor: 1, devminor: 3 }], null],
    ['a block device', () => [{ name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0 }], null],
    ['a symlink loop, then a file through it', () => [
      { name: 'a', type: 'symlink', linkname: 'b' },
      { name: 'b', type: 'symlink', linkname: 'a' },
      { name: 'a/file', body: 'x' },
    ], /too many levels of symbolic links/],
  ]

  it.each(attacks)('%s', async (_name, entries, rejects) => {
    const before = hostSnapshot()
    const result = apply(entries())
    if (rejects) await expect(result).rejects.toMatchObject({ code: 'unsafe_layer', message: expect.stringMatching(rejects) })
    else await result
    expect(hostSnapshot()).toEqual(before)
    // Nothing was created next to the sandbox either (a `..` escape from the root's parent).
    expect(existsSync(join(sandbox, 'secret'))).toBe(false)
  })

  it('follows symlinks inside the root the way the guest would', async () => {
    await apply([
      { name: 'evil', type: 'symlink', linkname: host },
      { name: 'evil/secret', body: 'inside' },
    ])
    expect(readFileSync(join(root, host, 'secret'), 'utf8')).toBe('inside')
    expect(readlinkSync(join(root, 'evil'))).toBe(host) // the link itself is kept verbatim for the guest
  })

  it('never creates device nodes', async () => {
    const stats = await apply([{ name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3 }, { name: 'ok', body: 'x' }])
    expect(existsSync(join(root, 'dev/null'))).toBe(false)
    expect(stats.skipped).toEqual({ 'character-device': 1 })
    expect(stats.files).toBe(1)
  })

  it('refuses a layer bigger than the limit', async () => {
    const layer = await tarOf([{ name: 'big', body: 'x'.repeat(5000) }])
    await expect(new LayerApplier(root).apply(Readable.from(layer), { maxBytes: 1000 })).rejects.toMatchObject({ code: 'unsafe_layer' })
  })

  it('reports a malformed layer as unsafe', async () => {
    const junk = Buffer.alloc(2048, 0x41)
    await expect(new LayerApplier(root).apply(Readable.from(junk))).rejects.toMatchObject({ code: 'unsafe_layer' })
  })

  it('rejects ".." in entry names but takes absolute and ./ names as relative', () => {
    expect(entryComponents('./a/b/')).toEqual(['a', 'b'])
    expect(entryComponents('/etc//passwd')).toEqual(['etc', 'passwd'])
    expect(() => entryComponents('a/../b')).toThrow(/\.\./)
  })
})

describe('layer semantics', () => {
  it('keeps modes, owners, times, setuid, links', async () => {
    const mtime = new Date('2001-02-03T04:05:06Z')
    await apply([
      { name: 'bin', type: 'directory', mode: 0o755 },
      { name: 'bin/tool', body: '#!/bin/sh\n', mode: 0o4755, uid: 0, gid: 0 },
      { name: 'home/app/file', body: 'mine', mode: 0o640, uid: 1000, gid: 50, mtime },
      { name: 'bin/hard', type: 'link', linkname: 'bin/tool' },
      { name: 'lib', type: 'symlink', linkname: 'usr/lib', uid: 7, gid: 8 },
    ])
    const tool = statSync(join(root, 'bin/tool'))
    expect(tool.mode & 0o7777).toBe(0o4755)
    const file = statSync(join(root, 'home/app/file'))
    expect([file.uid, file.gid, file.mode & 0o777]).toEqual([1000, 50, 0o640])
    expect(file.mtime.toISOString()).toBe(mtime.toISOString())
    expect(statSync(join(root, 'bin/hard')).ino).toBe(tool.ino)
    const lib = lstatSync(join(root, 'lib'))
    expect([lib.isSymbolicLink(), lib.uid, lib.gid, readlinkSync(join(root, 'lib'))]).toEqual([true, 7, 8, 'usr/lib'])
  })

  it('applies whiteouts and opaque whiteouts across layers', async () => {
    const applier = new LayerApplier(root)
    await apply([
      { name: 'data/a', body: 'a' },
      { name: 'data/gone', body: 'gone' },
      { name: 'data/dir/f', body: 'f' },
      { name: 'opq/old', body: 'old' },
      { name: 'opq/sub/old2', body: 'old2' },
    ], applier)
    await apply([
      { name: 'data/.wh.gone', body: '' },
      { name: 'data/.wh.dir', body: '' },
      { name: 'opq/new', body: 'new' }, // before the marker, same layer: must survive
      { name: 'opq/.wh..wh..opq', body: '' },
      { name: 'opq/newer', body: 'newer' },
    ], applier)
    expect(readdirSync(join(root, 'data')).sort()).toEqual(['a'])
    expect(readdirSync(join(root, 'opq')).sort()).toEqual(['new', 'newer'])
    expect(existsSync(join(root, 'data/.wh.gone'))).toBe(false)
  })

  it('replaces a directory with a file and a file with a directory', async () => {
    const applier = new LayerApplier(root)
    await apply([{ name: 'x/inner', body: 'i' }, { name: 'y', body: 'file' }], applier)
    await apply([{ name: 'x', body: 'now a file' }, { name: 'y', type: 'directory' }, { name: 'y/z', body: 'z' }], applier)
    expect(readFileSync(join(root, 'x'), 'utf8')).toBe('now a file')
    expect(readFileSync(join(root, 'y/z'), 'utf8')).toBe('z')
  })

  it('decompresses gzip and zstd layers', async () => {
    const tar = await tarOf([{ name: 'hello', body: 'world' }])
    const g = join(sandbox, 'l.tar.gz')
    writeFileSync(g, gzipSync(tar))
    const z = join(sandbox, 'l.tar')
    writeFileSync(z, tar)
    await run('zstd', ['-q', '-f', z, '-o', `${z}.zst`])
    for (const [file, c] of [[g, 'gzip'], [`${z}.zst`, 'zstd']] as const) {
      const r = join(sandbox, `r-${c}`)
      mkdirSync(r)
      await new LayerApplier(r).apply(decompress(Readable.from(readFileSync(file)), c))
      expect(readFileSync(join(r, 'hello'), 'utf8')).toBe('world')
    }
  })

  it('fails on a corrupt zstd stream instead of applying a truncated layer', async () => {
    const bad = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(100, 7)])
    await expect(new LayerApplier(root).apply(decompress(Readable.from(bad), 'zstd'))).rejects.toThrow(/zstd/)
  })
})
