/**
 * The images API end to end against real registries (Debian's docker-registry on loopback, started
 * by the global setup) and fixture images built by umoci/skopeo/debootstrap, not by our code.
 */
import { spawn } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import Ajv from 'ajv/dist/2020.js'
import YAML from 'yaml'
import { ImageManager, imageToWire, type ImageManagerOptions } from '../../src/index.js'
import { ext4Stat, extractDisk } from '../support/disk-tree.js'
import { startRecorder } from '../support/recorder.js'
import { BASIC_PASS, BASIC_USER, FIXTURES, TOKEN_PASS, TOKEN_USER } from '../support/registry.js'

const reg = inject('registry')
const dirs: string[] = []
const managers: ImageManager[] = []

async function manager(opts: Partial<ImageManagerOptions> = {}): Promise<ImageManager> {
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'images-')))
  dirs.push(dir)
  const m = new ImageManager({ dir, ...opts })
  await m.init()
  managers.push(m)
  return m
}

afterAll(async () => {
  await Promise.all(managers.map((m) => m.close()))
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })))
})

describe('pull from an anonymous registry', () => {
  let m: ImageManager
  beforeAll(async () => {
    m = await manager()
  })

  it.each([
    ['busybox:latest', 'OCI manifest, gzip layer'],
    ['busybox-v2s2:latest', 'Docker schema-2 manifest'],
    ['busybox-zstd:latest', 'zstd layer'],
    ['busybox-plain:latest', 'uncompressed layer'],
  ])('%s (%s) becomes a bootable disk with the image content', async (name) => {
    const img = await m.pull(`${reg.open}/${name}`)
    expect(img.status).toBe('ready')
    expect(img.digest).toMatch(/^sha256:[a-f0-9]{64}$/)
    expect(img.platform).toBe('linux/amd64')
    expect(img.cmd).toEqual(['sh'])
    expect(img.env.PATH).toContain('/bin')
    const { diskPath } = await m.resolveReady(img.name)
    const tree = await extractDisk(diskPath, 'ext4')
    expect(readFileSync(join(tree, 'etc/platform'), 'utf8').trim()).toBe('amd64')
    expect(statSync(join(tree, 'bin/busybox')).mode & 0o111).not.toBe(0)
    await rm(tree, { recursive: true, force: true })
  })

  it('applies layers in order: whiteouts, opaque dirs, links, owners, modes, times', async () => {
    const img = await m.pull(`${reg.open}/layers:latest`)
    expect(img).toMatchObject({ entrypoint: ['/bin/echo'], cmd: ['layers-default'], workingDir: '/data' })
    expect(img.env).toMatchObject({ GREETING: 'hello' })
    const { record, diskPath } = await m.resolveReady(img.name)
    expect(record.config.user).toBe('app')
    const tree = await extractDisk(diskPath, 'ext4')
    const data = join(tree, 'data')
    expect(readdirSync(data).sort()).toEqual(['abs-link', 'hard-a', 'hard-b', 'keep', 'lower.txt', 'opaque', 'owned', 'rel-link', 'suid'])
    expect(readFileSync(join(data, 'lower.txt'), 'utf8')).toBe('upper\n')
    expect(readdirSync(join(data, 'opaque'))).toEqual(['new.txt'])
    // rdump copies hardlinks as separate files and drops setuid: ask the filesystem itself.
    expect((await ext4Stat(diskPath, '/data/hard-a')).inode).toBe((await ext4Stat(diskPath, '/data/hard-b')).inode)
    expect((await ext4Stat(diskPath, '/data/suid')).mode).toBe(0o4755)
    const owned = statSync(join(data, 'owned'))
    expect([owned.uid, owned.gid, owned.mode & 0o777]).toEqual([1000, 50, 0o640])
    expect(owned.mtime.toISOString()).toBe('2001-02-03T04:05:06.000Z')
    await rm(tree, { recursive: true, force: true })
  })

  it('selects the platform from an image index', async () => {
    const amd = await m.pull(`${reg.open}/multi:latest`)
    const arm = await (await manager()).pull({ name: `${reg.open}/multi:latest`, platform: 'linux/arm64' })
    expect(amd.platform).toBe('linux/amd64')
    expect(arm.platform).toBe('linux/arm64')
    expect(arm.digest).not.toBe(amd.digest)
    expect(amd.digest).toBe((await m.get(`${reg.open}/busybox:latest`)).digest) // same manifest as the single-arch push
  })

  it('refuses unknown and unsupported platforms', async () => {
    await expect(m.pull({ name: `${reg.open}/multi:latest`, platform: 'linux/arm' })).rejects.toMatchObject({ code: 'invalid_platform' })
    await expect(m.pull({ name: `${reg.open}/multi:latest`, platform: 'linux/arm64/v7' })).rejects.toMatchObject({ code: 'image_not_found' })
    await expect(m.pull({ name: `${reg.open}/busybox:latest`, platform: 'bogus' })).rejects.toMatchObject({ code: 'invalid_input', field: 'platform' })
  })

  it('reports a missing image as image_not_found and keeps it as failed', async () => {
    await expect(m.pull(`${reg.open}/nope:latest`)).rejects.toMatchObject({ code: 'image_not_found' })
    expect(await m.get(`${reg.open}/nope:latest`)).toMatchObject({ status: 'failed', error: expect.stringContaining('not found') })
  })

  it('validates names and tags, naming the field', async () => {
    await expect(m.pull('Bad/Name')).rejects.toMatchObject({ code: 'invalid_input', field: 'name' })
    await expect(m.pull({ name: `${reg.open}/busybox:latest`, tags: { 'bad key!': 'x' } })).rejects.toMatchObject({ field: 'tags.bad key!' })
  })

  it('gives the spec\'s Image JSON', async () => {
    const spec = YAML.parse(readFileSync(new URL('../../../../specs/hypeman-openapi.yaml', import.meta.url), 'utf8'))
    const ajv = new Ajv({ strict: false })
    ajv.addFormat('date-time', true)
    ajv.addFormat('int64', true)
    ajv.addSchema({ $id: 'spec', components: spec.components }, 'spec')
    const validate = ajv.compile({ $ref: 'spec#/components/schemas/Image' })
    const wire = imageToWire(await m.pull({ name: `${reg.open}/busybox:latest`, tags: { team: 'core' } }))
    expect(validate(wire), JSON.stringify(validate.errors)).toBe(true)
    expect(wire).toMatchObject({ status: 'ready', tags: { team: 'core' }, working_dir: '/', queue_position: null })
  })
})

describe('authentication', () => {
  it('uses Basic credentials on an htpasswd registry and refuses without them', async () => {
    const anon = await manager()
    await expect(anon.pull(`${reg.basic}/busybox:latest`)).rejects.toMatchObject({ code: 'registry_unauthorized' })
    const wrong = await manager({ credentials: { [reg.basic]: { username: BASIC_USER, password: 'wrong' } } })
    await expect(wrong.pull(`${reg.basic}/busybox:latest`)).rejects.toMatchObject({ code: 'registry_unauthorized' })
    const ok = await manager({ credentials: { [reg.basic]: { username: BASIC_USER, password: BASIC_PASS } } })
    expect((await ok.pull(`${reg.basic}/busybox:latest`)).status).toBe('ready')
  })

  it('gets an anonymous bearer token for public repositories', async () => {
    const m = await manager()
    expect((await m.pull(`${reg.token}/busybox:latest`)).status).toBe('ready')
  })

  it('needs credentials for the token server to grant a private repository', async () => {
    const m = await manager()
    await expect(m.pull(`${reg.token}/private/busybox:latest`)).rejects.toMatchObject({ code: 'registry_unauthorized' })
    await expect(
      m.pull({ name: `${reg.token}/private/busybox:latest`, credentials: { username: TOKEN_USER, password: 'wrong' } }),
    ).rejects.toMatchObject({ code: 'registry_unauthorized' })
    const img = await m.pull({ name: `${reg.token}/private/busybox:latest`, credentials: { username: TOKEN_USER, password: TOKEN_PASS } })
    expect(img.status).toBe('ready')
    // Borrowed credentials are never persisted.
    const stored = readdirSync(join(m.store.dir, 'refs')).map((f) => readFileSync(join(m.store.dir, 'refs', f), 'utf8')).join('')
    expect(stored).not.toContain(TOKEN_PASS)
  })
})

describe('cache', () => {
  it('a second pull of the same digest downloads nothing', async () => {
    const rec = await startRecorder(reg.open)
    try {
      const m = await manager({})
      await m.pull(`${rec.host}/debian:bookworm`)
      const first = rec.requests.filter((r) => r.includes('/blobs/'))
      expect(first.length).toBeGreaterThanOrEqual(2) // config + layer
      rec.requests.length = 0
      const again = await m.pull(`${rec.host}/debian:bookworm`)
      expect(again.status).toBe('ready')
      expect(rec.requests.filter((r) => r.includes('/blobs/'))).toEqual([])
      expect(rec.requests.filter((r) => r.startsWith('GET'))).toEqual([]) // only a HEAD of the tag
      rec.requests.length = 0
      await m.pull(`${rec.host}/debian@${again.digest}`)
      expect(rec.requests).toEqual([]) // by digest: nothing at all
    } finally {
      await rec.close()
    }
  })

  it('two concurrent pulls of one reference do the work once', async () => {
    const rec = await startRecorder(reg.open)
    try {
      const m = await manager()
      const [a, b] = await Promise.all([m.pull(`${rec.host}/layers:latest`), m.pull(`${rec.host}/layers:latest`)])
      expect(a.digest).toBe(b.digest)
      const blobGets = rec.requests.filter((r) => r.startsWith('GET') && r.includes('/blobs/'))
      expect(new Set(blobGets).size).toBe(blobGets.length) // no blob fetched twice
      expect(readdirSync(join(m.store.dir, 'disks'))).toHaveLength(1)
    } finally {
      await rec.close()
    }
  })

  it('two names for one digest share one disk; delete removes only what no other image uses', async () => {
    const m = await manager()
    const a = await m.pull(`${reg.open}/busybox:latest`)
    const b = await m.pull(`${reg.open}/private/busybox:latest`)
    const c = await m.pull(`${reg.open}/busybox-v2s2:latest`) // same layer blob, another manifest
    expect(a.digest).toBe(b.digest)
    expect(c.digest).not.toBe(a.digest)
    const disks = () => readdirSync(join(m.store.dir, 'disks')).sort()
    const blobs = () => readdirSync(join(m.store.dir, 'blobs/sha256')).sort()
    expect(disks()).toHaveLength(2)
    const layer = (await m.resolveReady(a.name)).record.layers[0]!.digest.slice(7)

    await m.delete(a.name)
    expect(disks()).toHaveLength(2) // b still names it
    await m.delete(b.name)
    expect(disks()).toEqual([c.digest.slice(7)])
    expect(blobs()).toContain(layer) // c uses the same compressed layer
    await expect(m.get(a.name)).rejects.toMatchObject({ code: 'not_found' })

    await m.delete(c.name)
    expect(disks()).toEqual([])
    expect(blobs()).toEqual([])
    await expect(m.delete(c.name)).rejects.toMatchObject({ code: 'not_found' })
  })

  it('refuses to delete an image an instance uses', async () => {
    const m = await manager()
    const img = await m.pull(`${reg.open}/busybox:latest`)
    const guarded = new ImageManager({ dir: m.store.dir, inUse: async () => new Set([img.digest]) })
    await expect(guarded.delete(img.name)).rejects.toMatchObject({ code: 'image_in_use' })
    expect((await m.get(img.name)).status).toBe('ready')
  })

  it('a pull killed with SIGKILL leaves nothing that looks ready, and the next open cleans up', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'images-crash-'))
    dirs.push(dir)
    // tsx as a loader, so the pull runs in the very process we kill.
    const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '../support/pull-child.ts'), dir, `${reg.open}/debian:bookworm`], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    const phase = await new Promise<string>((resolve, reject) => {
      let out = ''
      child.stdout.on('data', (d) => {
        out += d
        if (out.includes('unpacking')) resolve('unpacking')
      })
      child.on('exit', () => reject(new Error(`child exited before unpacking: ${out}`)))
    })
    expect(phase).toBe('unpacking')
    child.kill('SIGKILL')
    await new Promise((r) => child.once('exit', r))
    expect(readdirSync(join(dir, 'tmp')).length).toBeGreaterThan(0) // the crashed work is there...

    const m = await manager({ dir })
    expect(readdirSync(join(dir, 'tmp'))).toEqual([]) // ...and reopening reaps it
    expect(await m.list()).toEqual([])
    expect(readdirSync(join(dir, 'disks'))).toEqual([])
    expect((await m.pull(`${reg.open}/debian:bookworm`)).status).toBe('ready')
  })
})

describe('statuses', () => {
  it('create returns at once; get and list follow the pull to ready', async () => {
    const m = await manager()
    const started = await m.create({ name: `${reg.open}/debian:bookworm`, tags: { kind: 'distro' } })
    expect(['pending', 'pulling']).toContain(started.status)
    const seen = new Set<string>([started.status])
    for (let i = 0; i < 600; i++) {
      const img = await m.get(started.name)
      seen.add(img.status)
      if (img.status === 'ready' || img.status === 'failed') break
      await new Promise((r) => setTimeout(r, 50))
    }
    expect(seen.has('ready')).toBe(true)
    expect(seen.has('converting')).toBe(true)
    expect((await m.list({ tags: { kind: 'distro' } })).map((i) => i.name)).toEqual([started.name])
    expect(await m.list({ tags: { kind: 'other' } })).toEqual([])
  })

  it('tells onPullSettled listeners how each pull ended; a listener that throws harms no one', async () => {
    const m = await manager()
    const settled: { name: string; status: string; error?: string }[] = []
    m.onPullSettled(() => {
      throw new Error('a careless listener')
    })
    const stop = m.onPullSettled((e) => settled.push(e))
    await m.pull(`${reg.open}/busybox:latest`)
    await m.pull(`${reg.open}/nothing-here:latest`).catch(() => undefined)
    expect(settled).toEqual([
      { name: `${reg.open}/busybox:latest`, status: 'ready' },
      { name: `${reg.open}/nothing-here:latest`, status: 'failed', error: expect.stringMatching(/not found|image_not_found|unknown/i) },
    ])
    stop()
    await m.pull(`${reg.open}/layers:latest`)
    expect(settled).toHaveLength(2)
  })

  it('queues builds beyond the limit and reports the queue position', async () => {
    const m = await manager({ maxConcurrentBuilds: 1 })
    const first = await m.create({ name: `${reg.open}/debian:bookworm` })
    for (let i = 0; i < 400 && (await m.get(first.name)).status !== 'converting'; i++) await new Promise((r) => setTimeout(r, 10))
    const second = await m.create({ name: `${reg.open}/layers:latest` })
    let position: number | null = null
    for (let i = 0; i < 400 && position === null; i++) {
      const img = await m.get(second.name)
      if (img.status === 'ready') break
      position = img.queuePosition
      await new Promise((r) => setTimeout(r, 10))
    }
    expect(position).toBe(1)
    await m.pull(`${reg.open}/layers:latest`)
    expect((await m.get(`${reg.open}/layers:latest`)).queuePosition).toBeNull()
  })
})

describe('other sources and formats', () => {
  it('pulls from a local OCI image layout (offline)', async () => {
    const m = await manager()
    const img = await m.pull(`oci:${FIXTURES}/small:busybox-amd64`)
    expect(img).toMatchObject({ status: 'ready', name: `oci:${FIXTURES}/small:busybox-amd64`, cmd: ['sh'] })
    await expect(m.pull(`oci:${FIXTURES}/small:missing`)).rejects.toMatchObject({ code: 'image_not_found' })
  })

  it('builds erofs disks', async () => {
    const m = await manager({ diskFormat: 'erofs' })
    const img = await m.pull(`${reg.open}/layers:latest`)
    const { diskPath } = await m.resolveReady(img.name)
    expect(diskPath.endsWith('.erofs')).toBe(true)
    const tree = await extractDisk(diskPath, 'erofs')
    expect(readFileSync(join(tree, 'data/lower.txt'), 'utf8')).toBe('upper\n')
    expect(existsSync(join(tree, 'data/removed.txt'))).toBe(false)
    await rm(tree, { recursive: true, force: true })
  })
})
