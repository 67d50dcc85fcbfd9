/**
 * The instance lifecycle end to end: real QEMU VMs under TCG, booting images pulled from the local
 * registry (fixtures built by umoci, not by our code).
 */
import { createHash } from 'node:crypto'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import Ajv from 'ajv/dist/2020.js'
import YAML from 'yaml'
import { run } from '@hypeman-ts/common'
import { Hypeman, instanceToWire, type Instance } from '../../src/index.js'

const reg = inject('registry')
const BUSYBOX = `${reg.open}/busybox:latest`
const LAYERS = `${reg.open}/layers:latest`
let hm: Hypeman
let dataDir: string

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'hm-lifecycle-'))
  hm = await Hypeman.open({ dataDir, network: false, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' } })
})

afterAll(async () => {
  for (const i of await hm.instances.list()) await hm.instances.delete(i.id)
  await hm.close()
  await rm(dataDir, { recursive: true, force: true })
})

async function runToEnd(params: Parameters<Hypeman['instances']['create']>[0]): Promise<{ inst: Instance; logs: string[] }> {
  const created = await hm.instances.create(params)
  const waited = await hm.instances.waitForState(created.id, 'Stopped', { timeout: '120s' })
  expect(waited.timedOut).toBe(false)
  const inst = await hm.instances.get(created.id)
  const logs: string[] = []
  for await (const line of hm.instances.logs(created.id, { tail: 1000 })) logs.push(line)
  await hm.instances.delete(created.id)
  return { inst, logs }
}

/** Waits (bounded) until the app log has `count` lines equal to `line`. */
async function waitForLog(id: string, line: string, count = 1): Promise<string[]> {
  let logs: string[] = []
  for (let i = 0; i < 300; i++) {
    logs = []
    for await (const l of hm.instances.logs(id, { tail: 1000 })) logs.push(l)
    if (logs.filter((l) => l === line).length >= count) return logs
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`app log of ${id} never had ${count}× "${line}": ${JSON.stringify(logs)}`)
}

const sha256File = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex')

describe('the program and how it ends', () => {
  it('streams its output to the app log and reports exit code 0', async () => {
    const { inst, logs } = await runToEnd({ image: BUSYBOX, name: 'out-ok', cmd: ['sh', '-c', 'echo hello out; echo hello err >&2'] })
    expect(logs).toEqual(expect.arrayContaining(['hello out', 'hello err']))
    expect(inst).toMatchObject({ state: 'Stopped', exitCode: 0, exitMessage: 'exited with code 0' })
    expect(inst.stoppedAt).not.toBeNull()
  })

  it.each([
    ['a non-zero exit', ['sh', '-c', 'exit 7'], '256MB', 7, 'exited with code 7'],
    ['death by a signal', ['sh', '-c', 'kill -9 $$'], '256MB', 137, 'killed by signal 9 (SIGKILL)'],
    ['the OOM killer', ['tail', '/dev/zero'], '160MB', 137, 'killed by signal 9 (SIGKILL) - OOM'],
  ])('reports %s', async (_what, cmd, size, code, message) => {
    const { inst } = await runToEnd({ image: BUSYBOX, name: `end-${code}-${size.toLowerCase()}`, cmd, size })
    expect(inst.exitCode).toBe(code)
    expect(inst.exitMessage).toBe(message)
  })
})

describe('entrypoint and cmd, as docker run decides them', () => {
  // The image: Entrypoint ["/bin/echo"], Cmd ["layers-default"], WorkingDir /data, User app, Env GREETING=hello.
  it.each([
    ['the image defaults', {}, ['layers-default'], 0],
    ['cmd replaces the image Cmd, keeps the Entrypoint', { cmd: ['custom', 'args'] }, ['custom args'], 0],
    ['entrypoint drops the image Cmd', { entrypoint: ['/bin/sh', '-c', 'echo "[$0]"'] }, ['[/bin/sh]'], 0],
    ['entrypoint + cmd, with the image env, workdir and user', { entrypoint: ['/bin/sh', '-c'], cmd: ['echo "$GREETING $(pwd) $(id -un) $EXTRA"'] }, ['hello /data app extra-env'], 0],
    ['a program that does not exist', { entrypoint: ['no-such-program'] }, [], 127],
  ])('%s', async (_what, overrides, expected, code) => {
    const { inst, logs } = await runToEnd({ image: LAYERS, name: `ep-${code}-${expected.length}-${Object.keys(overrides).join('-') || 'none'}`, env: { EXTRA: 'extra-env' }, ...overrides })
    expect(inst.exitCode).toBe(code)
    if (code === 127) expect(inst.exitMessage).toMatch(/command not found/)
    else expect(logs).toEqual(expected)
  })
})

describe('a long-running instance', () => {
  let a: Instance
  let b: Instance

  it('two instances run at once, each with its own overlay, and the image disk never changes', async () => {
    const { diskPath } = await hm.images.resolveReady((await hm.images.pull(BUSYBOX)).name)
    const before = sha256File(diskPath)
    const cmd = ['sh', '-c', 'cat /count 2>/dev/null; echo x >> /count; echo "$(hostname) booted"; echo changed > /etc/platform; exec sleep 600']
    ;[a, b] = await Promise.all([
      hm.instances.create({ image: BUSYBOX, name: 'long-a', cmd, tags: { group: 'long' } }),
      hm.instances.create({ image: BUSYBOX, name: 'long-b', cmd, tags: { group: 'long' }, skipGuestAgent: true }),
    ])
    expect([a.state, b.state]).toEqual(['Running', 'Running'])
    // Created concurrently, so their creation order (list's order) is either way round.
    expect((await hm.instances.list({ tags: { group: 'long' } })).map((i) => i.name).sort()).toEqual(['long-a', 'long-b'])
    await waitForLog(a.id, 'long-a booted')
    await waitForLog(b.id, 'long-b booted')
    const r = await hm.instances.exec(a.id, { argv: ['cat', '/etc/platform', '/count'] })
    expect(r.stdout.toString()).toBe('changed\nx\n')
    expect(sha256File(diskPath)).toBe(before)
  })

  it('exec passes stdin, env and cwd, and returns the exit code', async () => {
    const r = await hm.instances.exec(a.id, { argv: ['sh', '-c', 'read line; echo "got $line in $(pwd) as $FOO"; echo oops >&2; exit 5'], stdin: 'some input\n', env: { FOO: 'bar' }, cwd: '/tmp' })
    expect(r.exitCode).toBe(5)
    expect(r.stdout.toString()).toBe('got some input in /tmp as bar\n')
    expect(r.stderr.toString()).toBe('oops\n')
  })

  it('stat reports files, directories, links and missing paths', async () => {
    expect(await hm.instances.stat(a.id, '/etc/passwd')).toMatchObject({ exists: true, isFile: true, mode: 0o644 })
    expect(await hm.instances.stat(a.id, '/tmp')).toMatchObject({ exists: true, isDir: true, mode: 0o1777 })
    expect(await hm.instances.stat(a.id, '/bin/sh')).toMatchObject({ exists: true, isSymlink: true, linkTarget: '/bin/busybox' })
    expect(await hm.instances.stat(a.id, '/bin/sh', { followLinks: true })).toMatchObject({ exists: true, isFile: true })
    expect(await hm.instances.stat(a.id, '/nope')).toEqual({ exists: false })
  })

  it('exec and stat fail clearly when the guest agent was skipped', async () => {
    await expect(hm.instances.exec(b.id, { argv: ['true'] })).rejects.toMatchObject({ code: 'agent_disabled' })
    await expect(hm.instances.stat(b.id, '/')).rejects.toMatchObject({ code: 'agent_disabled' })
  })

  it('refuses a second instance with the same name', async () => {
    await expect(hm.instances.create({ image: BUSYBOX, name: 'long-a' })).rejects.toMatchObject({ code: 'conflict', field: 'name' })
  })

  it('stop sends SIGTERM, then start boots again on the same overlay', async () => {
    const stopped = await hm.instances.stop(a.id, { timeoutMs: 5000 })
    expect(stopped).toMatchObject({ state: 'Stopped', exitCode: 143, exitMessage: 'killed by signal 15 (SIGTERM)' })
    const started = await hm.instances.start(a.id)
    expect(started.state).toBe('Running')
    expect(started.exitCode).toBeNull()
    const logs = await waitForLog(a.id, 'long-a booted', 2)
    expect(logs).toEqual(['long-a booted', 'x', 'long-a booted'])
    const r = await hm.instances.exec(a.id, { argv: ['cat', '/count'] })
    expect(r.stdout.toString()).toBe('x\nx\n')
  })

  it('pause, standby and restore keep the guest where it was', async () => {
    expect((await hm.instances.pause(a.id)).state).toBe('Paused')
    expect((await hm.instances.resume(a.id)).state).toBe('Running')
    const before = Number((await hm.instances.exec(a.id, { argv: ['cut', '-d.', '-f1', '/proc/uptime'] })).stdout.toString())
    const standby = await hm.instances.standby(a.id)
    expect(standby).toMatchObject({ state: 'Standby', hasSnapshot: true })
    const restored = await hm.instances.restore(a.id)
    expect(restored).toMatchObject({ state: 'Running', hasSnapshot: false })
    const after = Number((await hm.instances.exec(a.id, { argv: ['cut', '-d.', '-f1', '/proc/uptime'] })).stdout.toString())
    expect(after).toBeGreaterThanOrEqual(before) // no reboot: uptime carried on
    expect(after - before).toBeLessThan(60)
  })

  it('gives the spec\'s Instance JSON', () => {
    const spec = YAML.parse(readFileSync(new URL('../../../../specs/hypeman-openapi.yaml', import.meta.url), 'utf8'))
    const ajv = new Ajv({ strict: false })
    ajv.addFormat('date-time', true)
    ajv.addFormat('int64', true)
    ajv.addSchema({ $id: 'spec', components: spec.components }, 'spec')
    const validate = ajv.compile({ $ref: 'spec#/components/schemas/Instance' })
    return hm.instances.get(a.id).then((inst) => {
      const wire = instanceToWire(inst)
      expect(validate(wire), JSON.stringify(validate.errors)).toBe(true)
      expect(wire).toMatchObject({ id: a.id, name: 'long-a', state: 'Running', vcpus: 1, size: '256MB', overlay_size: '64MB', hypervisor: 'qemu' })
      expect(wire.id).toMatch(/^[a-z0-9]{24}$/)
    })
  })

  it('delete removes the VMM, its sockets and every file', async () => {
    const pidOf = async (id: string) => JSON.parse(readFileSync(join(dataDir, 'instances', id, 'instance.json'), 'utf8')).vmm?.pid as number
    const pids = [await pidOf(a.id), await pidOf(b.id)]
    const ramOf = (id: string) => JSON.parse(readFileSync(join(dataDir, 'instances', id, 'instance.json'), 'utf8')).vmm?.spec.memoryFile?.path as string
    const rams = [ramOf(a.id), ramOf(b.id)]
    for (const ram of rams) expect(existsSync(ram)).toBe(true)
    await hm.instances.delete(a.id)
    await hm.instances.delete(b.id)
    await expect(hm.instances.get(a.id)).rejects.toMatchObject({ code: 'not_found' })
    expect(readdirSync(join(dataDir, 'instances')).filter((n) => !n.startsWith('.'))).toEqual([])
    for (const pid of pids) expect(existsSync(`/proc/${pid}`)).toBe(false)
    for (const ram of rams) expect(existsSync(ram)).toBe(false)
    const runDirs = (await run('sh', ['-c', 'ls /run/hypeman-ts/*/ 2>/dev/null || true'])).stdout
    expect(runDirs).not.toContain(a.id)
    expect(runDirs).not.toContain(b.id)
    await expect(hm.instances.delete(a.id)).rejects.toMatchObject({ code: 'not_found' })
  })
})

describe('resource limits', () => {
  it('diskIoBps throttles the disks the guest writes to', async () => {
    // Timed by the guest's own clock: with a 1MB/s limit, 3 MB of direct writes cannot go faster.
    const { inst, logs } = await runToEnd({
      image: BUSYBOX,
      name: 'disk-io',
      diskIoBps: '1MB/s',
      cmd: ['sh', '-c', 'a=$(cut -d" " -f1 /proc/uptime); dd if=/dev/zero of=/big bs=1M count=3 oflag=direct 2>/dev/null; sync; b=$(cut -d" " -f1 /proc/uptime); echo "took $a $b"'],
    })
    expect(inst).toMatchObject({ exitCode: 0, diskIoBps: '1MB/s' })
    const m = /took ([\d.]+) ([\d.]+)/.exec(logs.join('\n'))
    expect(m, logs.join('\n')).not.toBeNull()
    expect(Number(m![2]) - Number(m![1])).toBeGreaterThan(2) // 3 MB at ≤ 1 MB/s (QEMU allows a small burst)
  })
})

describe('failures leave nothing behind', () => {
  it('an image that cannot be pulled fails the create at step image, naming it', async () => {
    const err = await hm.instances.create({ image: `${reg.open}/does-not-exist:latest`, name: 'no-image' }).catch((e) => e)
    expect(err).toMatchObject({ code: 'image_not_found', step: 'image' })
    expect((await hm.instances.list()).map((i) => i.name)).not.toContain('no-image')
    expect(readdirSync(join(dataDir, 'instances')).filter((n) => !n.startsWith('.'))).toEqual([])
  })

  it('bad input creates nothing', async () => {
    await expect(hm.instances.create({ image: BUSYBOX, name: 'Bad_Name' })).rejects.toMatchObject({ code: 'invalid_input', field: 'name' })
    await expect(hm.instances.create({ image: BUSYBOX, name: 'net', network: { enabled: true } })).rejects.toMatchObject({ code: 'not_supported', field: 'network.enabled' })
    expect(readdirSync(join(dataDir, 'instances')).filter((n) => !n.startsWith('.'))).toEqual([])
  })
})
