/**
 * The agent's file built-ins (guest/src/files.c), run on the host through the init binary's
 * `builtin` entry point: the tar stream `read-tree` writes is read back by GNU tar and by
 * tar-stream (what copyFrom uses), long names and link targets included; `write-file` and `mkdir`
 * do what they say and fail with a message naming the path.
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { spawn, spawnSync } from 'node:child_process'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { extract } from 'tar-stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { guestInitBinary } from './helpers.js'

let dir: string
let init: string
const LONG = 'n'.repeat(150)
const big = randomBytes(1024 * 1024 + 123)

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-files-'))
  init = await guestInitBinary()
  const tree = join(dir, 'tree')
  await mkdir(join(tree, 'sub', LONG), { recursive: true })
  await writeFile(join(tree, 'a.txt'), 'hello\n', { mode: 0o640 })
  await writeFile(join(tree, 'sub', LONG, 'big.bin'), big)
  await writeFile(join(tree, 'empty'), '')
  await symlink('a.txt', join(tree, 'link'))
  await symlink('x'.repeat(120), join(tree, 'longlink'))
  spawnSync('mkfifo', [join(tree, 'fifo')])
})
afterAll(() => rm(dir, { recursive: true, force: true }))

function readTree(path: string, follow = false): { tar: Buffer; stderr: string; code: number | null } {
  const r = spawnSync(init, ['builtin', 'read-tree', path, follow ? '1' : '0'], { maxBuffer: 64 * 1024 * 1024 })
  return { tar: r.stdout, stderr: r.stderr.toString(), code: r.status }
}

async function entries(tar: Buffer): Promise<Record<string, { type: string; mode: number; size: number; link?: string; sha?: string }>> {
  const out: Record<string, { type: string; mode: number; size: number; link?: string; sha?: string }> = {}
  const x = extract()
  const done = (async () => {
    for await (const e of x) {
      const chunks: Buffer[] = []
      for await (const c of e) chunks.push(c as Buffer)
      const h = e.header
      out[h.name] = { type: h.type!, mode: h.mode!, size: h.size!, ...(h.linkname ? { link: h.linkname } : {}), ...(h.type === 'file' ? { sha: createHash('sha256').update(Buffer.concat(chunks)).digest('hex') } : {}) }
    }
  })()
  x.end(tar)
  await done
  return out
}

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex')

describe('read-tree', () => {
  it('writes a directory, files, symlinks and long names that tar-stream reads back exactly', async () => {
    const r = readTree(join(dir, 'tree'))
    expect(r.code).toBe(0)
    expect(r.stderr).toMatch(/skipped .*fifo: not a file, directory or symlink/)
    const got = await entries(r.tar)
    expect(got).toEqual({
      'tree/': { type: 'directory', mode: 0o755, size: 0 },
      'tree/a.txt': { type: 'file', mode: 0o640, size: 6, sha: sha('hello\n') },
      'tree/empty': { type: 'file', mode: 0o644, size: 0, sha: sha('') },
      'tree/link': { type: 'symlink', mode: 0o777, size: 0, link: 'a.txt' },
      'tree/longlink': { type: 'symlink', mode: 0o777, size: 0, link: 'x'.repeat(120) },
      'tree/sub/': { type: 'directory', mode: 0o755, size: 0 },
      [`tree/sub/${LONG}/`]: { type: 'directory', mode: 0o755, size: 0 },
      [`tree/sub/${LONG}/big.bin`]: { type: 'file', mode: 0o644, size: big.length, sha: sha(big) },
    })
  })

  it('is a valid archive for GNU tar too', async () => {
    const out = join(dir, 'gnu-out')
    await mkdir(out)
    const r = readTree(join(dir, 'tree'))
    const tar = spawn('tar', ['-x', '-C', out])
    tar.stdin.end(r.tar)
    expect(await new Promise((resolve) => tar.on('exit', resolve))).toBe(0)
    expect(sha(await readFile(join(out, 'tree', 'sub', LONG, 'big.bin')))).toBe(sha(big))
    expect((await stat(join(out, 'tree', 'a.txt'))).mode & 0o777).toBe(0o640)
  })

  it('names a single file by its last component, and follows a symlink only when asked', async () => {
    expect(Object.keys(await entries(readTree(join(dir, 'tree', 'a.txt')).tar))).toEqual(['a.txt'])
    expect(await entries(readTree(join(dir, 'tree', 'link')).tar)).toEqual({ link: { type: 'symlink', mode: 0o777, size: 0, link: 'a.txt' } })
    expect(await entries(readTree(join(dir, 'tree', 'link'), true).tar)).toEqual({ link: { type: 'file', mode: 0o640, size: 6, sha: sha('hello\n') } })
  })

  it('fails with exit 1 naming a missing path', () => {
    const r = readTree(join(dir, 'nope'))
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/cannot stat .*nope: No such file or directory/)
  })
})

describe('write-file and mkdir', () => {
  it('write-file creates with the mode (umask aside), truncates an existing file and prints the byte count', async () => {
    const target = join(dir, 'written')
    await writeFile(target, 'old content that is longer')
    const r = spawnSync(init, ['builtin', 'write-file', target, '4750'], { input: 'new' })
    expect(r.status).toBe(0)
    expect(r.stdout.toString()).toBe('3\n')
    expect(await readFile(target, 'utf8')).toBe('new')
    expect((await stat(target)).mode & 0o7777).toBe(0o4750)
  })

  it('write-file into a missing directory, and a bad mode, fail naming the path', () => {
    const r = spawnSync(init, ['builtin', 'write-file', join(dir, 'no', 'such', 'f'), '644'], { input: 'x' })
    expect(r.status).toBe(1)
    expect(r.stderr.toString()).toMatch(/cannot create .*no\/such\/f: No such file or directory/)
    expect(spawnSync(init, ['builtin', 'write-file', join(dir, 'f'), '99'], { input: '' }).status).toBe(2)
  })

  it('mkdir makes parents, accepts an existing directory, and refuses a file in the way', async () => {
    const d = join(dir, 'm', 'a', 'b')
    await run(init, ['builtin', 'mkdir', d, '700'])
    await run(init, ['builtin', 'mkdir', d, '700'])
    expect((await stat(d)).mode & 0o777).toBe(0o700)
    const r = spawnSync(init, ['builtin', 'mkdir', join(dir, 'written'), '755'])
    expect(r.status).toBe(1)
    expect(r.stderr.toString()).toMatch(/cannot create directory .*written: Not a directory/)
  })
})
