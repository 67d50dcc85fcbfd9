/**
 * kill -9 of the host process, then a reopen of the manager: nothing is orphaned, running VMs are
 * found again, VMs that died meanwhile are marked Stopped.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { afterEach, describe, expect, inject, it } from 'vitest'
import { Hypeman } from '../../src/index.js'
import { warmQemus } from '../support/manager.js'

const reg = inject('registry')
const BUSYBOX = `${reg.open}/busybox:latest`
const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {})
})

function startChild(dataDir: string, name: string): ChildProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '../support/hypeman-child.ts'), dataDir, BUSYBOX, name], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  cleanups.push(async () => {
    child.kill('SIGKILL')
  })
  return child
}

/** Polls (bounded) until `check` returns a value. */
async function until<T>(what: string, check: () => T | undefined | Promise<T | undefined>, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await check()
    if (v !== undefined) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

function records(dataDir: string): { id: string; phase: string; vmm: { pid: number } | null }[] {
  const dir = join(dataDir, 'instances')
  if (!existsSync(dir)) return []
  return readdirSync(dir)
    .filter((n) => !n.startsWith('.'))
    .flatMap((id) => {
      try {
        return [JSON.parse(readFileSync(join(dir, id, 'instance.json'), 'utf8'))]
      } catch {
        return []
      }
    })
}

/** QEMU processes whose command line mentions the instance id (its runtime dir), from /proc. */
function qemuProcessesFor(id: string): string[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .flatMap((pid) => {
      try {
        const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ')
        return cmdline.includes('qemu-system') && cmdline.includes(id) ? [`${pid} ${cmdline}`] : []
      } catch {
        return []
      }
    })
}

describe('kill -9 of the host process', () => {
  it('during boot: the reopened manager removes the half-created instance and its VMM', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'hm-crash-boot-'))
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }))
    const child = startChild(dataDir, 'crash-boot')
    // Kill the host process once the VMM exists but before create returned.
    const rec = await until('a spawned VMM', () => records(dataDir).find((r) => r.vmm?.pid))
    expect(rec.phase).toBe('creating')
    child.kill('SIGKILL')
    await new Promise((r) => child.once('exit', r))
    expect(existsSync(`/proc/${rec.vmm!.pid}`)).toBe(true) // the VMM outlived its parent

    const hm = await Hypeman.open({ dataDir, network: false })
    cleanups.push(() => hm.close())
    expect(await hm.instances.list()).toEqual([])
    await until('the VMM to be gone', () => (existsSync(`/proc/${rec.vmm!.pid}`) ? undefined : true), 10_000)
    expect(qemuProcessesFor(rec.id)).toEqual([])
    expect(readdirSync(join(dataDir, 'instances')).filter((n) => !n.startsWith('.'))).toEqual([])
  })

  it('after it was running: the reopened manager reattaches; a VMM that died meanwhile becomes Stopped', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'hm-crash-run-'))
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }))
    const child = startChild(dataDir, 'crash-run')
    let out = ''
    child.stdout!.on('data', (d) => (out += d))
    await until('create to return and a warm VMM to wait', () => (out.includes('warm {"') ? true : undefined))
    const [rec] = records(dataDir)
    const warm = warmQemus(dataDir)
    expect(warm).toHaveLength(1)
    // The guest's RAM is a tmpfs file, and one no VMM runs on (a crash's leftover) must not stay.
    const ram = JSON.parse(readFileSync(join(dataDir, 'instances', rec!.id, 'instance.json'), 'utf8')).vmm.spec.memoryFile.path as string
    expect(existsSync(ram)).toBe(true)
    const orphan = join(dirname(ram), 'orphan-of-a-crash')
    writeFileSync(orphan, 'x')
    child.kill('SIGKILL')
    await new Promise((r) => child.once('exit', r))

    // Reopen: the VM still runs and is ours again; the warm VMM the crash left is ended.
    let hm = await Hypeman.open({ dataDir, network: false })
    await until('the warm VMM to be gone', () => (existsSync(`/proc/${warm[0]}`) ? undefined : true), 10_000)
    expect(existsSync(join(dataDir, 'warm'))).toBe(false)
    expect(existsSync(orphan)).toBe(false)
    expect(existsSync(ram)).toBe(true)
    const inst = await hm.instances.get('crash-run')
    expect(inst.state).toBe('Running')
    expect((await hm.instances.exec(inst.id, { argv: ['echo', 'still here'] })).stdout.toString()).toBe('still here\n')
    await hm.close()
    expect(existsSync(`/proc/${rec!.vmm!.pid}`)).toBe(true) // close() lets VMs run

    // The VMM dies while no manager watches: the next open records it as Stopped.
    process.kill(rec!.vmm!.pid, 'SIGKILL')
    await until('the VMM to die', () => (existsSync(`/proc/${rec!.vmm!.pid}`) ? undefined : true), 10_000)
    hm = await Hypeman.open({ dataDir, network: false })
    cleanups.push(() => hm.close())
    const after = await hm.instances.get('crash-run')
    expect(after.state).toBe('Stopped')
    expect(after.stoppedAt).not.toBeNull()
    expect(after.exitMessage).toMatch(/ended \(killed\)/)
    expect(existsSync(ram)).toBe(false)
    await hm.instances.delete('crash-run')
    expect(qemuProcessesFor(rec!.id)).toEqual([])
  })

  it('a second manager cannot open a data directory in use', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'hm-lock-'))
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }))
    const hm = await Hypeman.open({ dataDir, network: false })
    cleanups.push(() => hm.close())
    await expect(Hypeman.open({ dataDir, network: false })).rejects.toMatchObject({ code: 'conflict', field: 'dataDir' })
  })
})
