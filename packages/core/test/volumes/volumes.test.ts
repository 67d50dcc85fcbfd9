import { execFileSync } from 'node:child_process'
import { createWriteStream, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createGzip } from 'node:zlib'
import { pack } from 'tar-stream'
import { afterAll, describe, expect, it } from 'vitest'
import { VolumeManager, volumeToWire } from '../../src/volumes/index.js'

const root = mkdtempSync(join(tmpdir(), 'hm-vol-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))

type Entry = { name: string; type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device'; body?: string; linkname?: string }

function tgz(entries: Entry[]): Readable {
  const p = pack()
  for (const e of entries) p.entry({ name: e.name, type: e.type ?? 'file', ...(e.linkname ? { linkname: e.linkname } : {}), ...(e.type === 'character-device' ? { devmajor: 1, devminor: 3 } : {}) }, e.body ?? '')
  p.finalize()
  return p.pipe(createGzip())
}

/** A file of an ext4 image, read without mounting it. */
const debugfsCat = (disk: string, path: string) => execFileSync('debugfs', ['-R', `cat ${path}`, disk], { stdio: ['ignore', 'pipe', 'ignore'] }).toString()
const debugfsLs = (disk: string, path: string) => execFileSync('debugfs', ['-R', `ls -l ${path}`, disk], { stdio: ['ignore', 'pipe', 'ignore'] }).toString()

const mount = (volumeId: string, mountPath: string, readonly = false) => ({ volumeId, mountPath, readonly, overlay: false, overlaySize: null, overlayBytes: null })

describe('hm.volumes', () => {
  const hm = new VolumeManager({ dir: join(root, 'volumes') })

  it('creates a sparse ext4 volume, finds it by id and name, lists it by tags', async () => {
    await hm.init()
    const v = await hm.create({ name: 'data', size: '64MB', tags: { team: 'a' } })
    expect(v).toMatchObject({ name: 'data', sizeBytes: 64 * 1024 * 1024, attachments: [] })
    const disk = hm.diskPath(v.id)
    expect(execFileSync('blkid', ['-o', 'value', '-s', 'TYPE', disk]).toString().trim()).toBe('ext4')
    expect(Number(execFileSync('du', ['-k', disk]).toString().split('\t')[0])).toBeLessThan(64 * 1024) // sparse
    expect((await hm.get('data')).id).toBe(v.id)
    expect((await hm.get(v.id)).name).toBe('data')
    await hm.create({ name: 'other', size: '16MB', id: 'vol-other' })
    expect((await hm.list({ tags: { team: 'a' } })).map((x) => x.name)).toEqual(['data'])
    expect((await hm.list()).map((x) => x.name).slice(0, 2)).toEqual(['data', 'other'])
    expect(volumeToWire(await hm.get('vol-other'))).toMatchObject({ id: 'vol-other', name: 'other', size_gb: 1, attachments: [], tags: {} })
  })

  it('refuses bad input and taken names with typed errors naming the field', async () => {
    await expect(hm.create({ name: 'data', size: '16MB' })).rejects.toMatchObject({ code: 'volume_exists', field: 'name' })
    await expect(hm.create({ name: 'x', size: '16MB', id: 'vol-other' })).rejects.toMatchObject({ code: 'volume_exists', field: 'id' })
    await expect(hm.create({ name: 'Bad Name', size: '16MB' })).rejects.toMatchObject({ code: 'invalid_input', field: 'name' })
    await expect(hm.create({ name: 'y', size: '1KB' })).rejects.toMatchObject({ code: 'invalid_input', field: 'size' })
    await expect(hm.create({ name: 'y', size: '16MB', id: '../x' })).rejects.toMatchObject({ field: 'id' })
    await expect(hm.get('nope')).rejects.toMatchObject({ code: 'volume_not_found' })
    expect(readdirSync(join(root, 'volumes')).filter((n) => n.startsWith('.build'))).toEqual([])
  })

  it('makes a volume from a tar.gz', async () => {
    const v = await hm.createFromArchive({ name: 'arch', sizeLimit: '32MB' }, tgz([
      { name: 'dir/', type: 'directory' },
      { name: 'dir/hello.txt', body: 'hello volume\n' },
      { name: 'link', type: 'symlink', linkname: 'dir/hello.txt' },
      { name: 'null', type: 'character-device' },
    ]))
    expect(debugfsCat(hm.diskPath(v.id), '/dir/hello.txt')).toBe('hello volume\n')
    expect(debugfsLs(hm.diskPath(v.id), '/')).not.toContain('null') // no device nodes
  })

  it('refuses archives that would escape, leaving the host and the data dir untouched', async () => {
    const victim = join(root, 'victim')
    const cases: [string, Entry[]][] = [
      ['dotdot', [{ name: '../victim', body: 'x' }]],
      ['dotdot-deep', [{ name: 'a/../../victim', body: 'x' }]],
      ['absolute', [{ name: `${victim}`, body: 'x' }]],
      // A symlink to outside, then a write through it: the unpacker resolves inside the root.
      ['symlink', [{ name: 'esc', type: 'symlink', linkname: root }, { name: 'esc/victim', body: 'x' }]],
      ['hardlink-abs', [{ name: 'h', type: 'link', linkname: '/etc/passwd' }]],
    ]
    for (const [name, entries] of cases) {
      const r = hm.createFromArchive({ name: `bad-${name}`, sizeLimit: '16MB' }, tgz(entries))
      if (name === 'symlink') {
        // Followed inside the volume (the guest would do the same): it lands in the volume, never the host.
        const v = await r
        expect(debugfsCat(hm.diskPath(v.id), `${root}/victim`)).toBe('x')
      } else {
        await expect(r, name).rejects.toMatchObject({ code: 'unsafe_archive' })
        await expect(hm.get(`bad-${name}`)).rejects.toMatchObject({ code: 'volume_not_found' })
      }
      expect(existsSync(victim), name).toBe(false)
    }
    expect(readdirSync(join(root, 'volumes')).filter((n) => n.startsWith('.build'))).toEqual([])
  })

  it('takes the archive from a path; a missing one is refused naming the field', async () => {
    const path = join(root, 'a.tar.gz')
    await pipeline(tgz([{ name: 'from-path', body: 'p' }]), createWriteStream(path))
    const v = await hm.createFromArchive({ name: 'from-path', sizeLimit: '16MB' }, path)
    expect(debugfsCat(hm.diskPath(v.id), '/from-path')).toBe('p')
    await expect(hm.createFromArchive({ name: 'missing', sizeLimit: '16MB' }, join(root, 'nope.tar.gz'))).rejects.toMatchObject({ code: 'invalid_input', field: 'archive' })
  })

  it('stops an archive larger than sizeLimit', async () => {
    await expect(hm.createFromArchive({ name: 'big', sizeLimit: '16MB' }, tgz([{ name: 'big', body: 'x'.repeat(17 * 1024 * 1024) }]))).rejects.toMatchObject({
      code: 'archive_too_large',
      field: 'sizeLimit',
    })
    await expect(hm.get('big')).rejects.toMatchObject({ code: 'volume_not_found' })
  })

  it('attaches read-write alone, read-only to many; refuses delete while attached', async () => {
    const [rw] = await hm.attach('inst-a', [mount('data', '/data')])
    expect(rw!.volumeId).toBe((await hm.get('data')).id)
    await expect(hm.attach('inst-b', [mount('data', '/data')])).rejects.toMatchObject({ code: 'volume_in_use', field: 'volumes[0].volumeId' })
    await expect(hm.attach('inst-b', [mount('other', '/o'), mount('data', '/data', true)])).rejects.toMatchObject({ code: 'volume_in_use', field: 'volumes[1].volumeId' })
    expect((await hm.get('other')).attachments).toEqual([]) // all or nothing
    await expect(hm.attach('inst-b', [mount('nope', '/n')])).rejects.toMatchObject({ code: 'volume_not_found', field: 'volumes[0].volumeId' })
    await expect(hm.delete('data')).rejects.toMatchObject({ code: 'volume_in_use' })
    await hm.release('inst-a')
    await hm.attach('inst-b', [mount('data', '/d', true)])
    await hm.attach('inst-c', [mount('data', '/d', true)])
    await expect(hm.attach('inst-d', [mount('data', '/d')])).rejects.toMatchObject({ code: 'volume_in_use' })
    expect(volumeToWire(await hm.get('data')).attachments).toEqual([
      { instance_id: 'inst-b', mount_path: '/d', readonly: true },
      { instance_id: 'inst-c', mount_path: '/d', readonly: true },
    ])
    await hm.release('inst-b')
    await hm.release('inst-c')
    await hm.delete('data')
    await expect(hm.get('data')).rejects.toMatchObject({ code: 'volume_not_found' })
  })

  it('refuses one volume twice by id and name; releases attachments of instances that are gone', async () => {
    const other = await hm.get('other')
    await expect(hm.attach('inst-x', [mount('other', '/a'), mount(other.id, '/b', true)])).rejects.toMatchObject({ code: 'invalid_input', field: 'volumes[1].volumeId' })
    await hm.attach('inst-gone', [mount('other', '/a', true)])
    await hm.attach('inst-alive', [mount('other', '/a', true)])
    expect(await hm.releaseOrphans(async (id) => id === 'inst-alive')).toEqual(['inst-gone'])
    expect((await hm.get('other')).attachments.map((a) => a.instanceId)).toEqual(['inst-alive'])
    await hm.release('inst-alive', other.id)
    expect((await hm.get('other')).attachments).toEqual([])
  })

  it('survives a reopen', async () => {
    const again = new VolumeManager({ dir: join(root, 'volumes') })
    await again.init()
    expect((await again.list()).map((v) => v.name)).toContain('other')
  })
})
