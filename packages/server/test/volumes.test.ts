/**
 * Volumes through the official SDK against a real server: create, from an archive (a tar.gz made
 * by GNU tar, streamed as the request body), list by tags, get, an instance created with the
 * volume mounted (its file seen through the guest's stat), delete refused while attached,
 * detach/attach on a stopped instance, attach/detach on a running one (hot-plug; a volume mounted
 * at boot cannot be unplugged: invalid_state), an escaping archive refused, and every body checked
 * against the spec's Volume schema.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BadRequestError, ConflictError, NotFoundError } from '@onkernel/hypeman'
import { run } from '@hypeman-ts/common'
import { BUSYBOX, specValidator, startServer, type TestServer } from './support/server.js'

let t: TestServer
let work: string
const valid = specValidator()

beforeAll(async () => {
  t = await startServer()
  work = await mkdtemp(join(tmpdir(), 'hm-srv-vol-'))
})
afterAll(async () => {
  await t?.close()
  if (work) await rm(work, { recursive: true, force: true })
})

async function tarGz(name: string, files: Record<string, string>): Promise<Buffer> {
  const dir = join(work, name)
  for (const [path, content] of Object.entries(files)) {
    await mkdir(join(dir, path, '..'), { recursive: true })
    await writeFile(join(dir, path), content)
  }
  const out = join(work, `${name}.tar.gz`)
  await run('tar', ['-czf', out, '-C', dir, '.'])
  return readFile(out)
}

describe('volumes over the API', () => {
  it('creates, lists by tags, gets and deletes an empty volume', async () => {
    const v = await t.client.volumes.create({ name: 'scratch', size_gb: 1, tags: { team: 'vol' } })
    valid('Volume', v)
    expect(v).toMatchObject({ name: 'scratch', size_gb: 1, tags: { team: 'vol' }, attachments: [] })
    expect((await t.client.volumes.list({ tags: { team: 'vol' } })).map((x) => x.id)).toEqual([v.id])
    expect(await t.client.volumes.list({ tags: { team: 'other' } })).toEqual([])
    expect(await t.client.volumes.get('scratch')).toMatchObject({ id: v.id })
    await t.client.volumes.delete(v.id)
    await expect(t.client.volumes.get(v.id)).rejects.toBeInstanceOf(NotFoundError)
  })

  it('makes a volume from a tar.gz body, mounts it in an instance, and refuses its delete while attached', async () => {
    const archive = await tarGz('content', { 'hello.txt': 'hello from an archive\n', 'sub/deep.txt': 'deep' })
    const v = await t.client.volumes.createFromArchive(archive, { name: 'content', size_gb: 1 })
    valid('Volume', v)
    const inst = await t.client.instances.create({
      name: 'vol-user',
      image: BUSYBOX,
      cmd: ['sleep', '600'],
      network: { enabled: false },
      volumes: [{ volume_id: v.id, mount_path: '/data', readonly: true }],
    })
    valid('Instance', inst)
    expect(await t.client.instances.stat(inst.id, { path: '/data/hello.txt' })).toMatchObject({ exists: true, is_file: true, size: 22 })
    expect(await t.client.instances.stat(inst.id, { path: '/data/sub/deep.txt' })).toMatchObject({ exists: true, size: 4 })
    expect((await t.client.volumes.get(v.id)).attachments).toEqual([{ instance_id: inst.id, mount_path: '/data', readonly: true }])
    const refused = await t.client.volumes.delete(v.id).catch((e: unknown) => e)
    expect(refused).toBeInstanceOf(ConflictError)
    expect((refused as ConflictError).error).toMatchObject({ code: 'volume_in_use' })

    // Detach and attach again while stopped.
    await t.client.instances.stop(inst.id)
    const detached = await t.client.instances.volumes.detach(v.id, { id: inst.id })
    valid('Instance', detached)
    expect((await t.client.volumes.get(v.id)).attachments).toEqual([])
    const attached = await t.client.instances.volumes.attach(v.id, { id: inst.id, mount_path: '/again', readonly: true })
    valid('Instance', attached)
    await t.client.instances.start(inst.id, {})
    expect(await t.client.instances.stat(inst.id, { path: '/again/hello.txt' })).toMatchObject({ exists: true, size: 22 })

    // Running: a new volume is hot-plugged and mounted, and unplugged again.
    const hot = await t.client.volumes.create({ name: 'hot', size_gb: 1 })
    const plugged = await t.client.instances.volumes.attach(hot.id, { id: inst.id, mount_path: '/hot' })
    valid('Instance', plugged)
    expect(plugged.state).toBe('Running')
    expect(await t.client.instances.stat(inst.id, { path: '/hot/lost+found' })).toMatchObject({ exists: true })
    expect((await t.client.volumes.get(hot.id)).attachments).toEqual([{ instance_id: inst.id, mount_path: '/hot', readonly: false }])
    valid('Instance', await t.client.instances.volumes.detach(hot.id, { id: inst.id }))
    expect(await t.client.instances.stat(inst.id, { path: '/hot/lost+found' })).toMatchObject({ exists: false })
    // The volume mounted at boot is a PCI disk this machine cannot unplug: a wrong state.
    const refusedDetach = await t.client.instances.volumes.detach(v.id, { id: inst.id }).catch((e: unknown) => e)
    expect(refusedDetach).toBeInstanceOf(ConflictError)
    expect((refusedDetach as ConflictError).error).toMatchObject({ code: 'invalid_state' })
    await t.client.instances.delete(inst.id)
    await t.client.volumes.delete(v.id)
    await t.client.volumes.delete(hot.id)
  })

  it('refuses an archive that escapes the volume, and creates nothing', async () => {
    // GNU tar will not write a `..` entry: Python's tarfile will.
    const out = join(work, 'escape.tar.gz')
    await run('python3', ['-c', `import io,tarfile\nt=tarfile.open('${out}','w:gz')\ni=tarfile.TarInfo('../evil.txt'); i.size=2\nt.addfile(i, io.BytesIO(b'no')); t.close()`])
    const archive = await readFile(out)
    const err = await t.client.volumes.createFromArchive(archive, { name: 'escape', size_gb: 1 }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(BadRequestError)
    expect(await t.client.volumes.list()).toEqual([])
  })
})
