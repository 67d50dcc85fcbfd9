/**
 * Sequences of lifecycle operations on a real VM (issue 11): every operation is tried in every
 * state the walk reaches; the ones that may not run there must reject at once with `conflict`
 * naming the state and leave the instance (its state, `hasSnapshot`, the snapshot on disk) as it
 * was; the ones that may run must land in the expected state. The expected table is written out
 * here, apart from the code's own (src/instances/transitions.ts).
 */
import { createHash } from 'node:crypto'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import { Hypeman, MAX_ARG_STRLEN, type InstanceState } from '../../src/index.js'

const reg = inject('registry')
const BUSYBOX = `${reg.open}/busybox:latest`
let hm: Hypeman
let dataDir: string

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'hm-states-'))
  hm = await Hypeman.open({ dataDir, network: false, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' } })
})

afterAll(async () => {
  for (const i of await hm.instances.list()) await hm.instances.delete(i.id)
  await hm.close()
  await rm(dataDir, { recursive: true, force: true })
})

type Op = 'start' | 'stop' | 'kill' | 'pause' | 'resume' | 'standby' | 'restore' | 'exec' | 'stat'
const OPS: Record<Op, (id: string) => Promise<unknown>> = {
  start: (id) => hm.instances.start(id),
  stop: (id) => hm.instances.stop(id, { timeoutMs: 3000 }),
  kill: (id) => hm.instances.kill(id),
  pause: (id) => hm.instances.pause(id),
  resume: (id) => hm.instances.resume(id),
  standby: (id) => hm.instances.standby(id),
  restore: (id) => hm.instances.restore(id),
  // A refused exec must not wait for the agent: the old code waited out this timeout.
  exec: (id) => hm.instances.exec(id, { argv: ['true'], connectTimeoutMs: 60_000 }),
  stat: (id) => hm.instances.stat(id, '/'),
}

/** What may run in each state the walk reaches. */
const MAY_RUN: Partial<Record<InstanceState, Op[]>> = {
  Running: ['stop', 'kill', 'pause', 'standby', 'exec', 'stat'],
  Paused: ['stop', 'kill', 'resume', 'standby'],
  Stopped: ['start'],
  Standby: ['start', 'restore'],
}

/** The snapshot as it is on disk: a digest of its files, or null when there is none. */
function snapshotOnDisk(id: string): string | null {
  const dir = join(dataDir, 'instances', id, 'snapshot')
  if (!existsSync(dir)) return null
  const h = createHash('sha256')
  for (const f of readdirSync(dir).sort()) h.update(f).update(readFileSync(join(dir, f)))
  return h.digest('hex')
}

async function expectRefusals(id: string): Promise<void> {
  const before = await hm.instances.get(id)
  const snapshot = snapshotOnDisk(id)
  const refused = (Object.keys(OPS) as Op[]).filter((op) => !MAY_RUN[before.state]!.includes(op))
  for (const op of refused) {
    const err = await OPS[op](id).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(err, `${op} in ${before.state}`).toMatchObject({ code: 'conflict', field: 'state', details: { operation: op, state: before.state } })
    expect((err as Error).message).toContain(before.state)
    const after = await hm.instances.get(id)
    expect({ op, state: after.state, hasSnapshot: after.hasSnapshot }).toEqual({ op, state: before.state, hasSnapshot: before.hasSnapshot })
    expect(snapshotOnDisk(id), `${op} in ${before.state} touched the snapshot`).toBe(snapshot)
  }
}

describe('every operation in every state', () => {
  it('runs where it may, refuses at once where it may not, and never touches the snapshot', async () => {
    const { id } = await hm.instances.create({ image: BUSYBOX, name: 'walk', cmd: ['sh', '-c', 'echo up; exec sleep 600'] })
    const steps: [Op, InstanceState][] = [
      ['pause', 'Paused'],
      ['resume', 'Running'],
      // The sequence: a standby after a pause/resume, then a retried standby (refused below).
      ['standby', 'Standby'],
      ['restore', 'Running'],
      ['pause', 'Paused'],
      ['standby', 'Standby'],
      ['start', 'Running'],
      ['stop', 'Stopped'],
      ['start', 'Running'],
      ['kill', 'Stopped'],
      ['start', 'Running'],
      ['pause', 'Paused'],
      ['stop', 'Stopped'],
      ['start', 'Running'],
      ['pause', 'Paused'],
      ['kill', 'Stopped'],
    ]
    const seen = new Set<string>()
    for (const [op, expected] of steps) {
      await expectRefusals(id)
      const from = (await hm.instances.get(id)).state
      if (from === 'Running') {
        expect((await hm.instances.exec(id, { argv: ['cat', '/proc/uptime'] })).exitCode).toBe(0)
        expect(await hm.instances.stat(id, '/bin')).toMatchObject({ exists: true, isDir: true })
      }
      await OPS[op](id)
      const after = await hm.instances.get(id)
      const standby = expected === 'Standby'
      expect({ step: `${op} from ${from}`, state: after.state, hasSnapshot: after.hasSnapshot }).toEqual({ step: `${op} from ${from}`, state: expected, hasSnapshot: standby })
      expect(snapshotOnDisk(id) !== null, `snapshot on disk after ${op}`).toBe(standby)
      seen.add(`${from}:${op}`)
    }
    await expectRefusals(id)
    // Every operation that may run was run from every state that allows it (exec and stat above).
    const expected = Object.entries(MAY_RUN).flatMap(([state, ops]) => ops.filter((o) => o !== 'exec' && o !== 'stat').map((o) => `${state}:${o}`))
    expect([...seen].sort()).toEqual(expected.sort())
  })

  it('a retried standby keeps the snapshot, and restore brings the same guest back', async () => {
    const { id } = await hm.instances.create({ image: BUSYBOX, name: 'retry', cmd: ['sh', '-c', 'echo up; exec sleep 600'] })
    await hm.instances.pause(id)
    await hm.instances.resume(id)
    const marker = (await hm.instances.exec(id, { argv: ['sh', '-c', 'echo $$ > /tmp/pid; cat /tmp/pid'] })).stdout.toString()
    await hm.instances.standby(id)
    const snapshot = snapshotOnDisk(id)
    expect(snapshot).not.toBeNull()
    for (const op of ['standby', 'pause', 'stop', 'exec'] as const) {
      await expect(OPS[op](id)).rejects.toMatchObject({ code: 'conflict', details: { state: 'Standby' } })
    }
    expect(snapshotOnDisk(id)).toBe(snapshot)
    expect(await hm.instances.restore(id)).toMatchObject({ state: 'Running', hasSnapshot: false })
    // The guest's memory came back: /tmp is tmpfs, lost by any reboot.
    expect((await hm.instances.exec(id, { argv: ['cat', '/tmp/pid'] })).stdout.toString()).toBe(marker)
    expect(snapshotOnDisk(id)).toBeNull()
    expect(existsSync(join(dataDir, 'instances', id, 'snapshot.new'))).toBe(false)
    await hm.instances.delete(id)
  })
})

describe('what the guest can exec', () => {
  it('takes an env entry and a whole environment at the limits the host checks, and refuses beyond', async () => {
    // Seven variables of the largest size one may have: 7 × 128 KiB is under the 1 MiB total.
    const one = (n: number) => `V${n}`
    const big = (n: number) => 'x'.repeat(MAX_ARG_STRLEN - one(n).length - 2)
    const env = Object.fromEntries([1, 2, 3, 4, 5, 6, 7].map((n) => [one(n), big(n)]))
    const inst = await hm.instances.create({ image: BUSYBOX, name: 'big-env', env, cmd: ['sh', '-c', 'echo ${#V1} ${#V7}'] })
    const waited = await hm.instances.waitForState(inst.id, 'Stopped', { timeout: '120s' })
    expect(waited.timedOut).toBe(false)
    const got = await hm.instances.get(inst.id)
    expect(got).toMatchObject({ exitCode: 0 })
    const lines: string[] = []
    for await (const l of hm.instances.logs(inst.id)) lines.push(l)
    expect(lines).toContain(`${big(1).length} ${big(7).length}`)
    await hm.instances.delete(inst.id)

    await expect(hm.instances.create({ image: BUSYBOX, name: 'env-too-big', env: { V1: big(1) + 'x' } })).rejects.toMatchObject({ code: 'invalid_input', field: 'env.V1' })
    const nine = Object.fromEntries([1, 2, 3, 4, 5, 6, 7, 8, 9].map((n) => [one(n), big(n)]))
    await expect(hm.instances.create({ image: BUSYBOX, name: 'env-too-big', env: nine })).rejects.toMatchObject({ code: 'invalid_input', field: 'env' })
    expect((await hm.instances.list()).map((i) => i.name)).not.toContain('env-too-big')
  })
})

describe('the runtime dir', () => {
  it('stays while a VMM needs it after close, and goes with the last one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'hm-rundir-'))
    const runBase = join('/run/hypeman-ts', createHash('sha256').update(dir).digest('hex').slice(0, 10))
    try {
      let m = await Hypeman.open({ dataDir: dir, network: false, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' } })
      const { id } = await m.instances.create({ image: BUSYBOX, name: 'outlives', cmd: ['sleep', '600'] })
      await m.close()
      // The VM runs on without the manager; its sockets must stay for the next open to reattach.
      expect(readdirSync(runBase)).toEqual([id])
      m = await Hypeman.open({ dataDir: dir, network: false })
      expect((await m.instances.get(id)).state).toBe('Running')
      await m.instances.delete(id)
      await m.close()
      expect(existsSync(runBase)).toBe(false)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('a restore with no room on the RAM tmpfs for a copy of the guest’s RAM', () => {
  it('maps the snapshot’s RAM copy-on-write: the guest goes on, and stands by and restores again', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'hm-noroom-'))
    const m = await Hypeman.open({ dataDir: dir, network: false, templates: false, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' } })
    const record = (id: string) => JSON.parse(readFileSync(join(dir, 'instances', id, 'instance.json'), 'utf8'))
    const pidInGuest = async (id: string) => (await m.instances.exec(id, { argv: ['cat', '/tmp/pid'] })).stdout.toString()
    let mounted: string | undefined
    try {
      const { id } = await m.instances.create({ image: BUSYBOX, name: 'no-room', cmd: ['sh', '-c', 'exec sleep 600'] })
      const marker = (await m.instances.exec(id, { argv: ['sh', '-c', 'echo $$ > /tmp/pid; cat /tmp/pid'] })).stdout.toString()
      const ramFile: string = record(id).vmm.spec.memoryFile.path
      await m.instances.standby(id)
      expect(existsSync(join(dir, 'instances', id, 'snapshot', 'memory'))).toBe(true)
      // The RAM dir full: a 16 MiB tmpfs over it, where a 256 MB guest does not fit.
      mounted = dirname(ramFile)
      await run('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'hm-test-full', mounted])
      expect(await m.instances.restore(id)).toMatchObject({ state: 'Running' })
      expect(await pidInGuest(id)).toBe(marker)
      expect(record(id).vmm.spec.memoryFile).toEqual({ path: join(dir, 'instances', id, 'snapshot', 'memory'), shared: false })
      expect(readFileSync(join(dir, 'instances', id, 'hypeman.log'), 'utf8')).toContain('mapped copy-on-write')
      // Its next standby streams the RAM; the restore of that needs no RAM file at all.
      await m.instances.standby(id)
      expect(existsSync(join(dir, 'instances', id, 'snapshot', 'memory'))).toBe(false)
      expect(await m.instances.restore(id)).toMatchObject({ state: 'Running' })
      expect(await pidInGuest(id)).toBe(marker)
      expect(record(id).vmm.spec.memoryFile).toBeUndefined()
      await m.instances.delete(id)
    } finally {
      if (mounted) await run('umount', [mounted])
      await m.close()
      await rm(dir, { recursive: true, force: true })
    }
  })
})
