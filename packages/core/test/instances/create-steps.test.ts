/**
 * Create as an ordered list of reversible steps: cancelled right after each step was recorded,
 * a create leaves nothing behind (no directory, no runtime dir, no VMM process), and the error
 * names a step at or after the one it was cancelled at.
 */
import { createHash } from 'node:crypto'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import { Hypeman } from '../../src/index.js'

const reg = inject('registry')
const BUSYBOX = `${reg.open}/busybox:latest`
const ORDER = ['instance_dir', 'image', 'overlay_disk', 'config_disk', 'vmm', 'guest_ready']
let hm: Hypeman
let dataDir: string
let runBase: string

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'hm-steps-'))
  runBase = join('/run/hypeman-ts', createHash('sha256').update(dataDir).digest('hex').slice(0, 10))
  hm = await Hypeman.open({ dataDir, network: false, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' } })
  await hm.images.pull(BUSYBOX)
})

afterAll(async () => {
  await hm.close()
  await rm(dataDir, { recursive: true, force: true })
})

const instanceDirs = () => readdirSync(join(dataDir, 'instances')).filter((n) => !n.startsWith('.'))

type Recorded = { steps: string[]; vmm: { pid: number } | null }

function recordedSteps(): Recorded | undefined {
  const [id] = instanceDirs()
  if (!id) return undefined
  try {
    return JSON.parse(readFileSync(join(dataDir, 'instances', id, 'instance.json'), 'utf8'))
  } catch {
    return undefined
  }
}

describe('a create cancelled after each step', () => {
  // `vmm` is recorded before the VMM is spawned; the interesting moment is once its pid is.
  it.each([
    ['instance_dir', (r: Recorded) => r.steps.includes('instance_dir')],
    ['overlay_disk', (r: Recorded) => r.steps.includes('overlay_disk')],
    ['config_disk', (r: Recorded) => r.steps.includes('config_disk')],
    ['vmm', (r: Recorded) => r.vmm !== null],
  ] as const)('after %s leaves nothing behind', async (after, reached) => {
    const ac = new AbortController()
    const pids = new Set<number>()
    let watching = true
    // Bounded: the create ends (and with it this loop) within the boot timeout.
    const watcher = (async () => {
      for (let i = 0; watching && i < 20_000; i++) {
        const r = recordedSteps()
        if (r?.vmm) pids.add(r.vmm.pid)
        if (r && reached(r)) ac.abort(new Error(`cancelled after ${after}`))
        await new Promise((res) => setTimeout(res, 2))
      }
    })()
    const err = await hm.instances.create({ image: BUSYBOX, name: `cancel-${after.replace('_', '-')}`, cmd: ['sleep', '600'] }, { signal: ac.signal }).catch((e) => e)
    watching = false
    await watcher
    expect(ac.signal.aborted, 'the step was recorded before the create ended').toBe(true)
    expect(err).toBeInstanceOf(Error)
    expect(ORDER.indexOf(err.step), `failed at ${err.step}`).toBeGreaterThanOrEqual(ORDER.indexOf(after))
    expect(instanceDirs()).toEqual([])
    expect(await hm.instances.list()).toEqual([])
    if (after === 'vmm') expect(pids.size).toBe(1)
    for (const pid of pids) expect(existsSync(`/proc/${pid}`), `VMM ${pid} still runs`).toBe(false)
    expect(readdirSync(runBase)).toEqual([])
  })
})
