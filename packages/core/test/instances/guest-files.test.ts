/**
 * Copy into and out of a real guest (hypeman's cp) through the agent's built-ins: a file with its
 * mode, a streamed MiB-sized file byte for byte, directories, a tree read back with its metadata,
 * and the refusals (a missing path, a missing parent, a stopped instance, bad input).
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import { Hypeman, type GuestFileEntry } from '../../src/index.js'

const reg = inject('registry')
const BUSYBOX = `${reg.open}/busybox:latest`
let hm: Hypeman
let dataDir: string
let id: string
const big = randomBytes(3 * 1024 * 1024 + 17)
const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex')

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'hm-cp-'))
  hm = await Hypeman.open({ dataDir, network: false, defaults: { vcpus: 1, size: '256MB', overlaySize: '128MB' } })
  id = (await hm.instances.create({ image: BUSYBOX, name: 'cp', cmd: ['sleep', '600'] })).id
})

afterAll(async () => {
  for (const i of await hm.instances.list()) await hm.instances.delete(i.id)
  await hm.close()
  await rm(dataDir, { recursive: true, force: true })
})

const sh = async (script: string) => (await hm.instances.exec(id, { argv: ['sh', '-c', script] })).stdout.toString().trim()

async function readAll(path: string, opts: { followLinks?: boolean } = {}): Promise<(Omit<GuestFileEntry, 'content' | 'mtime' | 'uid' | 'gid'> & { sha?: string })[]> {
  const out = []
  for await (const e of hm.instances.copyFrom(id, path, opts)) {
    const { content, mtime, uid, gid, ...rest } = e
    const chunks: Buffer[] = []
    if (content) for await (const c of content) chunks.push(c as Buffer)
    expect(mtime).toBeInstanceOf(Date)
    out.push({ ...rest, ...(content ? { sha: sha(Buffer.concat(chunks)) } : {}) })
  }
  return out
}

describe('copy into a guest', () => {
  it('writes a file with its mode, and truncates one that exists', async () => {
    expect(await hm.instances.copyTo(id, '/tmp/hello.txt', 'hello, a longer first version\n', { mode: 0o600 })).toEqual({ bytesWritten: 30 })
    expect(await hm.instances.copyTo(id, '/tmp/hello.txt', 'hello\n', { mode: 0o640 })).toEqual({ bytesWritten: 6 })
    expect(await sh('stat -c "%a %s" /tmp/hello.txt; cat /tmp/hello.txt')).toBe('640 6\nhello')
  })

  it('streams a large file byte for byte', async () => {
    const chunks = Array.from({ length: 50 }, (_, i) => big.subarray((i * big.length) / 50, ((i + 1) * big.length) / 50))
    expect(await hm.instances.copyTo(id, '/tmp/big.bin', Readable.from(chunks))).toEqual({ bytesWritten: big.length })
    expect(await sh('sha256sum /tmp/big.bin')).toBe(`${sha(big)}  /tmp/big.bin`)
  })

  it('makes directories with their parents, and copies into them', async () => {
    await hm.instances.mkdir(id, '/data/tree/sub', { mode: 0o750 })
    await hm.instances.copyTo(id, '/data/tree/sub/x.txt', 'x')
    expect(await sh('stat -c %a /data/tree/sub; cat /data/tree/sub/x.txt')).toBe('750\nx')
  })

  it('fails naming the path when the parent does not exist, and leaves nothing', async () => {
    await expect(hm.instances.copyTo(id, '/nope/dir/f', 'x')).rejects.toMatchObject({ code: 'copy_failed', message: expect.stringMatching(/cannot write \/nope\/dir\/f: cannot create \/nope\/dir\/f: No such file or directory/) })
    await expect(hm.instances.copyTo(id, 'relative', 'x')).rejects.toMatchObject({ code: 'invalid_input', field: 'path' })
    await expect(hm.instances.copyTo(id, '/tmp/m', 'x', { mode: 0o10000 })).rejects.toMatchObject({ code: 'invalid_input', field: 'mode' })
  })
})

describe('copy out of a guest', () => {
  it('reads a tree with its types, modes, link targets and contents', async () => {
    await hm.instances.copyTo(id, '/data/tree/big.bin', big)
    await sh('ln -s sub/x.txt /data/tree/link')
    // The directory comes first, before what is in it.
    expect((await readAll('/data/tree'))[0]).toEqual({ path: 'tree', type: 'directory', mode: 0o755, size: 0 })
    const byPath = Object.fromEntries((await readAll('/data/tree')).map((e) => [e.path, e]))
    expect(byPath).toEqual({
      tree: { path: 'tree', type: 'directory', mode: 0o755, size: 0 },
      'tree/sub': { path: 'tree/sub', type: 'directory', mode: 0o750, size: 0 },
      'tree/sub/x.txt': { path: 'tree/sub/x.txt', type: 'file', mode: 0o644, size: 1, sha: sha('x') },
      'tree/big.bin': { path: 'tree/big.bin', type: 'file', mode: 0o644, size: big.length, sha: sha(big) },
      'tree/link': { path: 'tree/link', type: 'symlink', mode: 0o777, size: 0, linkTarget: 'sub/x.txt' },
    })
  })

  it('reads one file, and a symlink as itself or its target', async () => {
    expect(await readAll('/tmp/hello.txt')).toEqual([{ path: 'hello.txt', type: 'file', mode: 0o640, size: 6, sha: sha('hello\n') }])
    expect(await readAll('/data/tree/link')).toEqual([{ path: 'link', type: 'symlink', mode: 0o777, size: 0, linkTarget: 'sub/x.txt' }])
    expect(await readAll('/data/tree/link', { followLinks: true })).toEqual([{ path: 'link', type: 'file', mode: 0o644, size: 1, sha: sha('x') }])
  })

  it('a missing path is not_found', async () => {
    await expect(readAll('/no/such/path')).rejects.toMatchObject({ code: 'not_found', field: 'path' })
  })
})

describe('stats', () => {
  it('reports the VMM\'s CPU time and memory and what the instance was given', async () => {
    const s = await hm.instances.stats('cp')
    expect(s).toMatchObject({ instanceId: id, instanceName: 'cp', allocatedVcpus: 1, allocatedMemoryBytes: 256 * 1024 * 1024, networkRxBytes: 0, networkTxBytes: 0 })
    expect(s.cpuSeconds).toBeGreaterThan(0)
    expect(s.memoryRssBytes).toBeGreaterThan(10 * 1024 * 1024)
    expect(s.memoryVmsBytes).toBeGreaterThan(s.memoryRssBytes)
    expect(s.memoryUtilizationRatio).toBeCloseTo(s.memoryRssBytes / (256 * 1024 * 1024), 6)
    expect((await hm.instances.stats(id)).cpuSeconds).toBeGreaterThanOrEqual(s.cpuSeconds)
  })
})

describe('copy and the instance state', () => {
  it('is refused at once on a stopped instance; stats of a stopped one report no use', async () => {
    await hm.instances.stop(id, { timeoutMs: 3000 })
    expect(await hm.instances.stats(id)).toMatchObject({ cpuSeconds: 0, memoryRssBytes: 0, allocatedVcpus: 1 })
    await expect(hm.instances.copyTo(id, '/tmp/x', 'x')).rejects.toMatchObject({ code: 'conflict', field: 'state', details: { operation: 'copy', state: 'Stopped' } })
    await expect(readAll('/tmp')).rejects.toMatchObject({ code: 'conflict', field: 'state' })
  })
})
