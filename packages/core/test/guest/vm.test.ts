/**
 * The guest init and agent in real VMs (QEMU under TCG through the vmm-drivers QEMU driver), booted
 * from the cached kernel and the initrd ensureGuestAssets builds, with a busybox image disk made
 * here. One VM at a time; each boot checks several things where that keeps the story clear.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { defaultCacheDir, ensureGuestAssets, type GuestAssets } from '../../src/assets/ensure.js'
import { listCachedKernels } from '../../src/assets/kernel.js'
import { GuestAgentClient } from '../../src/guest/agent-client.js'
import { tailLines } from '../../src/guest/app-log.js'
import type { GuestConfig } from '../../src/guest/config-disk.js'
import { pingGuestControl, requestGuestStop } from '../../src/guest/control.js'
import { buildGuestEnv } from '../../src/guest/program.js'
import { readStatusEvents, waitForStatusEvent, type GuestStatusEvent } from '../../src/guest/status.js'
import { appLog, GuestBooter, sha256, waitForLog, type Booted } from './helpers.js'
import { makeBusyboxTree, makeErofs, makeExt4 } from './rootfs.js'

const MiB = 1024 * 1024

let assets: GuestAssets
let work: string
let ext4: string
let erofs: string
let booter: GuestBooter
const boot = (name: string, config: GuestConfig, opts: { rootfs?: string; memoryMiB?: number } = {}): Promise<Booted> =>
  booter.boot(name, config, { rootfs: opts.rootfs ?? ext4, ...(opts.memoryMiB ? { memoryMiB: opts.memoryMiB } : {}) })






beforeAll(async () => {
  // The cached kernel, not "whatever apt says now": tests stay off the network.
  const kernel = (await listCachedKernels(defaultCacheDir()))[0]
  expect(kernel, 'a guest kernel in the cache (scripts/setup)').toBeDefined()
  assets = await ensureGuestAssets({ kernel: { version: kernel!.version } })
  work = await mkdtemp(join(tmpdir(), 'hm-vm-'))
  booter = new GuestBooter(assets, work)
  const tree = join(work, 'tree')
  await makeBusyboxTree(tree)
  ext4 = join(work, 'rootfs.ext4')
  erofs = join(work, 'rootfs.erofs')
  await makeExt4(tree, ext4)
  await makeErofs(tree, erofs)
})

afterAll(async () => {
  // Whatever a failed test left running must not outlive the file.
  await booter?.destroyAll()
  if (work) await rm(work, { recursive: true, force: true })
})

describe('a program in a guest', { timeout: 180_000 }, () => {
  let b: Booted
  let agent: GuestAgentClient
  let rootfsBefore: string

  const script = [
    'echo "$GREETING"',
    'id',
    'pwd',
    'echo "home=$HOME host=$(hostname)"',
    'echo note > /home/app/written.txt',
    'echo to-stderr >&2',
    'trap "echo got TERM; exit 0" TERM',
    'echo ready',
    'while :; do sleep 1 & wait $!; done',
  ].join('\n')

  beforeAll(async () => {
    rootfsBefore = await sha256(ext4)
    b = await boot('main', {
      argv: ['/bin/sh', '-c', script],
      env: buildGuestEnv(['PATH=/bin'], { GREETING: 'hello from the guest' }, 'hm-test'),
      workdir: '/work/dir',
      user: 'app',
      hostname: 'hm-test',
    })
    const started = await waitForStatusEvent(b.statusLog, 'started', { timeoutMs: 120_000 })
    expect(started.type).toBe('started')
    await waitForLog(b, 'ready')
    agent = await GuestAgentClient.connect({ socketPath: b.agentSocket, timeoutMs: 60_000 })
  })

  afterAll(async () => {
    agent?.close()
    await b?.vm.kill().catch(() => {})
  })

  it('sends stdout and stderr to the app log, with env, missing workdir created, user and hostname applied', async () => {
    const log = await appLog(b)
    expect(log).toContain('hello from the guest\n')
    expect(log).toContain('uid=1000(app) gid=1000(app) groups=2000(extra)\n')
    expect(log).toContain('/work/dir\n')
    expect(log).toContain('home=/home/app host=hm-test\n')
    expect(log).toContain('to-stderr\n')
    expect(await tailLines(b.appLog, 1)).toEqual(['ready'])
    const events = await readStatusEvents(b.statusLog)
    expect(events.map((e) => e.type)).toEqual(['boot', 'started'])
    expect(events[0]).toMatchObject({ type: 'boot', version: '1' })
  })

  it('without a network: only lo, brought up once the program runs; no /etc files invented', async () => {
    const r = await agent.run({ argv: ['sh', '-c', 'ls /sys/class/net; cat /sys/class/net/lo/flags; for f in hosts hostname resolv.conf; do test -e /etc/$f; echo "$f $?"; done'] })
    expect(r.stdout.toString()).toBe('lo\n0x9\nhosts 1\nhostname 1\nresolv.conf 1\n')
    expect((await readStatusEvents(b.statusLog)).find((e) => e.type === 'started')).not.toHaveProperty('networkMs')
  })

  it('execs with stdin, stdout, stderr and the exit code', async () => {
    expect(await agent.ping()).toMatchObject({ version: '1' })
    const cat = await agent.run({ argv: ['cat'], input: 'hello stdin\n' })
    expect(cat).toMatchObject({ exitCode: 0, timedOut: false })
    expect(cat.stdout.toString()).toBe('hello stdin\n')
    const mixed = await agent.run({ argv: ['sh', '-c', 'read x; echo "got:$x"; echo oops >&2; exit 5'], input: 'abc\n' })
    expect([mixed.exitCode, mixed.stdout.toString(), mixed.stderr.toString()]).toEqual([5, 'got:abc\n', 'oops\n'])
    const big = await agent.run({ argv: ['cat'], input: Buffer.alloc(3 * MiB, 0x61) })
    expect(big.stdout.equals(Buffer.alloc(3 * MiB, 0x61))).toBe(true)
  })

  it("execs in the workload's root, env, workdir and user, overridable per call", async () => {
    expect((await agent.run({ argv: ['sh', '-c', 'id -u; pwd; echo "$GREETING/$EXTRA"; cat /home/app/written.txt'], env: { EXTRA: 'x' } })).stdout.toString()).toBe('1000\n/work/dir\nhello from the guest/x\nnote\n')
    expect((await agent.run({ argv: ['id', '-u'], user: 'root', cwd: '/' })).stdout.toString()).toBe('0\n')
    const tty = await agent.run({ argv: ['sh', '-c', 'tty; stty size; echo $TERM'], tty: true, rows: 30, cols: 100 })
    expect(tty.stdout.toString()).toMatch(/^\/dev\/pts\/\d+\r\n30 100\r\nxterm\r\n$/)
  })

  it('reports a missing program, a killed one, and a timeout like docker exec', async () => {
    expect(await agent.run({ argv: ['no-such-program'] })).toMatchObject({ exitCode: 127, message: expect.stringContaining('command not found') })
    expect(await agent.run({ argv: ['/data/file.txt'] })).toMatchObject({ exitCode: 126, message: expect.stringContaining('permission denied') })
    expect(await agent.run({ argv: ['sh', '-c', 'kill -9 $$'] })).toMatchObject({ exitCode: 137, signal: 9, signalName: 'SIGKILL' })
    const t0 = Date.now()
    expect(await agent.run({ argv: ['sleep', '60'], timeoutMs: 500 })).toMatchObject({ exitCode: 137, timedOut: true, message: 'timed out after 500 ms' })
    expect(Date.now() - t0).toBeLessThan(30_000)
  })

  it('stats files, directories, symlinks (with and without following) and missing paths', async () => {
    expect(await agent.stat('/data/file.txt')).toEqual({ exists: true, isFile: true, isDir: false, isSymlink: false, mode: 0o644, size: 12 })
    expect(await agent.stat('/home/app')).toMatchObject({ exists: true, isDir: true, isFile: false, mode: 0o755 })
    expect(await agent.stat('/link')).toMatchObject({ exists: true, isSymlink: true, linkTarget: '/etc/passwd', isFile: false })
    expect(await agent.stat('/link', { followLinks: true })).toMatchObject({ exists: true, isSymlink: false, isFile: true })
    expect(await agent.stat('/nope')).toEqual({ exists: false })
    expect(await agent.stat('/data/file.txt/below')).toEqual({ exists: false })
    expect(await agent.stat('/home/app/written.txt')).toMatchObject({ exists: true, isFile: true, size: 5 })
  })

  it('stops gracefully through the control port: SIGTERM reaches the program, then power off', async () => {
    expect(await pingGuestControl(b.controlSocket)).toBe('running')
    const pending = agent.exec({ argv: ['sleep', '600'] })
    expect(await pending.pid).toBeGreaterThan(1)
    await requestGuestStop(b.controlSocket, 20_000)
    const exit = await b.vm.waitForExit({ timeoutMs: 60_000 })
    expect(exit.reason).toBe('poweroff')
    // An exec still running when the VM goes away fails clearly instead of hanging.
    await expect(pending.exit).rejects.toMatchObject({ code: 'agent_disconnected' })
    await expect(agent.stat('/')).rejects.toMatchObject({ code: 'agent_disconnected' })
    const events = await readStatusEvents(b.statusLog)
    expect(events.map((e) => e.type)).toEqual(['boot', 'started', 'stopping', 'exited'])
    expect(events[2]).toMatchObject({ reason: 'control', graceMs: 20_000 })
    expect(events[3]).toMatchObject({ code: 0, oom: false, message: 'exited with code 0' })
    expect(await tailLines(b.appLog, 1)).toEqual(['got TERM'])
  })

  it('wrote into the overlay disk and never into the image disk', async () => {
    expect(await sha256(ext4)).toBe(rootfsBefore)
    const { stdout } = await run('debugfs', ['-R', 'cat /upper/home/app/written.txt', b.overlay])
    expect(stdout).toBe('note\n')
    const inImage = await run('debugfs', ['-R', 'stat /home/app/written.txt', ext4])
    expect(inImage.stdout + inImage.stderr).toMatch(/File not found/)
  })
})

describe('an erofs image without the agent, stopped by the power button', { timeout: 180_000 }, () => {
  it('reports the exit code, refuses exec clearly, and handles ACPI power-down', async () => {
    const b = await boot('noagent', {
      argv: ['/bin/sh', '-c', 'trap "echo stopped by power button; exit 3" TERM; echo ready; while :; do sleep 1 & wait $!; done'],
      env: buildGuestEnv(['PATH=/bin'], {}),
      rootfsType: 'erofs',
      skipGuestAgent: true,
      stopGraceMs: 20_000,
    }, { rootfs: erofs })
    try {
      expect((await waitForStatusEvent(b.statusLog, 'started', { timeoutMs: 120_000 })).type).toBe('started')
      await waitForLog(b, 'ready')
      await expect(GuestAgentClient.connect({ socketPath: b.agentSocket, skipGuestAgent: true })).rejects.toMatchObject({ code: 'agent_disabled', message: expect.stringContaining('skipGuestAgent') })
      await expect(GuestAgentClient.connect({ socketPath: b.agentSocket, timeoutMs: 500 })).rejects.toMatchObject({ code: 'agent_unreachable' })
      expect(await pingGuestControl(b.controlSocket)).toBe('running')
      // QEMU under TCG sometimes loses a power-button SCI raised in the first seconds after boot
      // (the guest's SCI counter stays 0); pressing again is what a person would do too.
      let stopping: GuestStatusEvent | undefined
      for (let press = 0; press < 20 && !stopping; press++) {
        await b.vm.execute('system_powerdown')
        stopping = await waitForStatusEvent(b.statusLog, 'stopping', { timeoutMs: 1500 }).catch(() => undefined)
      }
      expect(stopping).toMatchObject({ type: 'stopping', reason: 'acpi', graceMs: 20_000 })
      expect((await b.vm.waitForExit({ timeoutMs: 60_000 })).reason).toBe('poweroff')
      expect(await waitForStatusEvent(b.statusLog, 'exited', { timeoutMs: 1000 })).toMatchObject({ code: 3, message: 'exited with code 3' })
      expect(await appLog(b)).toContain('stopped by power button\n')
    } finally {
      await b.vm.kill().catch(() => {})
    }
  })
})

describe('how a program ends, as the status channel reports it', { timeout: 180_000 }, () => {
  it.each<[string, Partial<GuestConfig>, { memoryMiB?: number; started: boolean }, Record<string, unknown>]>([
    ['a plain exit with output', { argv: ['sh', '-c', 'echo done; exit 0'] }, { started: true }, { type: 'exited', code: 0, oom: false, message: 'exited with code 0' }],
    ['command not found (127)', { argv: ['no-such-program', 'arg'] }, { started: false }, { type: 'exited', code: 127, oom: false, message: expect.stringMatching(/^command not found: .*no-such-program/) }],
    ['a user missing from the image (126, as docker)', { argv: ['true'], user: 'nobody-in-passwd' }, { started: false }, { type: 'exited', code: 126, message: expect.stringContaining('unable to find user nobody-in-passwd') }],
    ['killed by a signal', { argv: ['sh', '-c', 'kill -9 $$'] }, { started: true }, { type: 'exited', code: 137, signal: 9, signalName: 'SIGKILL', oom: false, message: 'killed by signal 9 (SIGKILL)' }],
    ['killed by the OOM killer', { argv: ['tail', '/dev/zero'] }, { memoryMiB: 160, started: true }, { type: 'exited', code: 137, signal: 9, oom: true, message: 'killed by signal 9 (SIGKILL) - OOM' }],
  ])('%s', async (_name, patch, opts, expected) => {
    const name = `end-${Math.random().toString(36).slice(2, 8)}`
    const b = await boot(name, { argv: ['true'], env: buildGuestEnv(['PATH=/bin'], {}), ...patch }, opts.memoryMiB ? { memoryMiB: opts.memoryMiB } : {})
    try {
      expect((await b.vm.waitForExit({ timeoutMs: 120_000 })).reason).toBe('poweroff')
      const events = await readStatusEvents(b.statusLog)
      expect(events.at(-1)).toMatchObject(expected)
      expect(events.some((e) => e.type === 'started')).toBe(opts.started)
      if (expected.code === 0) expect(await appLog(b)).toBe('done\n')
    } finally {
      await b.vm.kill().catch(() => {})
    }
  })

  it('kills a program that ignores SIGTERM once the stop grace runs out', async () => {
    const b = await boot('stubborn', { argv: ['sh', '-c', 'trap "echo ignoring TERM" TERM; echo ready; while :; do sleep 1 & wait $!; done'], env: buildGuestEnv(['PATH=/bin'], {}), skipGuestAgent: true })
    try {
      await waitForLog(b, 'ready')
      await requestGuestStop(b.controlSocket, 1500)
      expect((await b.vm.waitForExit({ timeoutMs: 60_000 })).reason).toBe('poweroff')
      const events = await readStatusEvents(b.statusLog)
      expect(events.slice(-2)).toMatchObject([
        { type: 'stopping', reason: 'control', graceMs: 1500 },
        { type: 'exited', code: 137, signal: 9, oom: false, message: 'killed by signal 9 (SIGKILL)' },
      ])
      expect(events.at(-1)!.uptimeMs - events.at(-2)!.uptimeMs).toBeGreaterThanOrEqual(1500)
      expect(await appLog(b)).toContain('ignoring TERM\n')
    } finally {
      await b.vm.kill().catch(() => {})
    }
  })

  it('reports a boot failure with the step that failed', async () => {
    // An erofs disk announced as ext4: the image mount fails before any program exists.
    const b = await boot('badfs', { argv: ['true'], env: {}, rootfsType: 'ext4' }, { rootfs: erofs })
    try {
      expect((await b.vm.waitForExit({ timeoutMs: 120_000 })).reason).toBe('poweroff')
      expect((await readStatusEvents(b.statusLog)).at(-1)).toMatchObject({ type: 'error', step: 'mount_root', message: expect.stringContaining('mount image disk') })
    } finally {
      await b.vm.kill().catch(() => {})
    }
  })
})
