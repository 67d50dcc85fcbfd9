/**
 * examples/batch-jobs run as its README says: installed from the packed packages and started in
 * its folder (`npm start -- jobs.json ...`), on real VMs. Ctrl-C is a SIGINT to the whole process
 * group, as a terminal sends it; after it, nothing may be left: no instance, no QEMU, no link, no
 * runtime dir, no temporary file.
 */
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
// The pure parts are checked from the sources; the app itself runs from its installed copy.
import { parseJobFile } from '../batch-jobs/src/jobfile.js'
import { resultsTable } from '../batch-jobs/src/output.js'
import { installExample, type InstalledExample } from './support/install.js'

const cache = process.env.HYPEMAN_TS_CACHE ?? '/var/cache/hypeman-ts'
const IMAGE = `oci:${cache}/fixtures/small:busybox-amd64`
const defaults = { image: IMAGE, vcpus: 1, memory: '256MB' }
/** The app's `npm start` script, with node's path (the installed copy's tsx, through its cwd). */
const MAIN = ['--import', 'tsx', 'src/main.ts']
let app: InstalledExample
let work: string

beforeAll(async () => {
  app = await installExample('batch-jobs', inject('packsDir'))
  work = await mkdtemp(join(tmpdir(), 'hm-batch-test-'))
}, 600_000)

afterAll(async () => {
  await app?.remove()
  if (work) await rm(work, { recursive: true, force: true })
})

interface Started {
  pid: number
  stdout: string
  stderr: string
  /** Resolves once the process ended and its output is all read. */
  closed: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

/** Starts the app in a process group of its own (as a shell does), with its own TMPDIR. */
function start(cmd: string, args: string[], tmp: string): Started {
  const child = spawn(cmd, args, { cwd: app.dir, detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TMPDIR: tmp } })
  const killer = setTimeout(() => process.kill(-child.pid!, 'SIGKILL'), 170_000) // never hang the suite
  const s: Started = {
    pid: child.pid!,
    stdout: '',
    stderr: '',
    closed: new Promise((resolve) => child.on('close', (code, signal) => (clearTimeout(killer), resolve({ code, signal })))),
  }
  child.stdout.on('data', (d) => (s.stdout += d))
  child.stderr.on('data', (d) => (s.stderr += d))
  return s
}

async function jobFile(name: string, content: unknown): Promise<string> {
  const path = join(work, name)
  await writeFile(path, JSON.stringify(content, null, 2))
  return path
}

async function freshDirs(name: string) {
  const dataDir = join(work, name, 'data')
  const tmp = join(work, name, 'tmp')
  await mkdir(tmp, { recursive: true })
  return { dataDir, tmp }
}

/** Everything a run may leave behind, for the instances whose ids it had. */
async function leftovers(dataDir: string, tmp: string, ids: string[]) {
  const qemus: string[] = []
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue
    const argv = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
    if (argv.includes(dataDir) && pid !== String(process.pid)) qemus.push(argv.replaceAll('\0', ' ').slice(0, 120))
  }
  // Link names are a pure function of the instance id (netsetup's names.ts): hm + role + 12 hex.
  const shorts = ids.map((id) => createHash('sha256').update(id).digest('hex').slice(0, 12))
  const { stdout: links } = await run('ip', ['-o', 'link'])
  const { stdout: netns } = await run('ip', ['netns', 'list'])
  return {
    instances: await readdir(join(dataDir, 'instances')),
    processes: qemus,
    links: links.split('\n').filter((l) => shorts.some((s) => l.includes(s)) || ids.some((id) => l.includes(id))),
    netns: netns.split('\n').filter((l) => ids.some((id) => l.includes(id))),
    runtimeDir: existsSync(join('/run/hypeman-ts', createHash('sha256').update(dataDir).digest('hex').slice(0, 10))),
    tmpFiles: await tmpFiles(tmp),
    // What only a networked run would leave: the network's and the egress proxy's state.
    networkState: (await readdir(dataDir)).filter((f) => ['network', 'egress'].includes(f)),
  }
}
/** What is in the run's TMPDIR but tsx's own cache (`tsx-<uid>/`, compiled sources, kept by design). */
const tmpFiles = async (tmp: string) => (await readdir(tmp)).filter((f) => !/^tsx-\d+$/.test(f))
/** Polls `cond` every 100 ms, for at most two minutes. */
async function waitFor(cond: () => boolean | Promise<boolean>): Promise<void> {
  for (let i = 0; i < 1200; i++) {
    if (await cond()) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error('waitFor: gave up after 2 minutes')
}

const NOTHING = { instances: [], processes: [], links: [], netns: [], runtimeDir: false, tmpFiles: [], networkState: [] }

describe('examples/batch-jobs', () => {
  it('runs jobs two at a time and reports each one\'s exit code and last lines; one failed and one timed out, so it exits 1', async () => {
    const { dataDir, tmp } = await freshDirs('three')
    const jobs = await jobFile('three.json', {
      defaults,
      jobs: [
        { name: 'ok', cmd: ['sh', '-c', 'echo all good'] },
        { name: 'exits-3', cmd: ['sh', '-c', 'echo about to fail; exit 3'] },
        { name: 'chatty', cmd: ['sh', '-c', 'for i in $(seq 1 200); do echo line $i; done'] },
        { name: 'too-slow', cmd: ['sh', '-c', 'echo waiting; sleep 600'], timeoutMs: 2000 },
      ],
    })
    const cli = start('npm', ['start', '--silent', '--', jobs, '--concurrency', '2', '--json', '--data-dir', dataDir], tmp)
    const { code } = await cli.closed
    expect(code, cli.stderr).toBe(1)
    const out = JSON.parse(cli.stdout)
    expect(out.ok).toBe(false)
    expect(out.interrupted).toBe(false)
    expect(out.jobs.map((j: { name: string; status: string; exitCode: number | null; lastLines: string[] }) => [j.name, j.status, j.exitCode, j.lastLines])).toEqual([
      ['ok', 'succeeded', 0, ['all good']],
      ['exits-3', 'failed', 3, ['about to fail']],
      ['chatty', 'succeeded', 0, ['line 196', 'line 197', 'line 198', 'line 199', 'line 200']],
      ['too-slow', 'timed out', null, ['waiting']],
    ])
    for (const j of out.jobs) expect(j.durationMs).toBeGreaterThan(0)
    // Progress: a line per status change, on stderr, since it is not a terminal.
    for (const name of ['ok', 'exits-3', 'chatty', 'too-slow']) expect(cli.stderr).toMatch(new RegExp(`^\\d\\d:\\d\\d:\\d\\d ${name}: running$`, 'm'))
    expect(cli.stderr).toMatch(/exits-3: failed: exited with code 3/)
    expect(cli.stderr).toMatch(/too-slow: timed out: still running after 2000 ms/)
    expect(await leftovers(dataDir, tmp, [])).toEqual(NOTHING)
  })

  it('on Ctrl-C (twice) deletes the VMs running and booting, starts no queued job, prints the partial table and exits 130, leaving nothing', async () => {
    const { dataDir, tmp } = await freshDirs('interrupted')
    const jobs = await jobFile('long.json', {
      defaults,
      jobs: [
        { name: 'quick-1', cmd: ['echo', 'quick'] },
        ...['long-2', 'long-3', 'long-4'].map((name) => ({ name, cmd: ['sh', '-c', 'echo started; sleep 600'] })),
      ],
    })
    // What `npm start` runs, without npm, so the exit status is the app's own.
    const cli = start(process.execPath, [...MAIN, jobs, '--concurrency', '2', '--data-dir', dataDir], tmp)
    // Signal once long-2 runs and long-3 (started when quick-1 ended) is booting: its create has begun.
    const instances = join(dataDir, 'instances')
    await waitFor(async () => /long-2: running$/m.test(cli.stderr) && /long-3: starting/.test(cli.stderr) && (await readdir(instances).catch(() => [])).length === 2)
    const ids = await readdir(instances)
    const during = await leftovers(dataDir, tmp, ids) // the checks below do see VMs when there are some
    expect(during.processes.length).toBeGreaterThan(0)
    expect(during.runtimeDir).toBe(true)
    process.kill(-cli.pid, 'SIGINT') // what Ctrl-C in a terminal does: the whole foreground group
    await new Promise((r) => setTimeout(r, 300))
    try {
      process.kill(-cli.pid, 'SIGINT') // impatient: must not skip the cleanup
    } catch (err) {
      // Already done: the checks below say whether it cleaned up first.
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err
    }
    const { code } = await cli.closed
    expect(code, cli.stderr).toBe(130)
    expect(cli.stderr).toMatch(/SIGINT: not starting queued jobs, deleting the running VMs/)
    expect(cli.stdout).toMatch(/^quick-1 +succeeded +0 +\S+s +quick$/m)
    expect(cli.stdout).toMatch(/^long-2 +interrupted +- +\S+s +started$/m)
    expect(cli.stdout).toMatch(/^long-3 +interrupted +- +\S+s/m)
    expect(cli.stdout).toMatch(/^long-4 +not started +- +- +interrupted before it started$/m)
    expect(cli.stderr).not.toMatch(/long-4: starting/)
    expect(await leftovers(dataDir, tmp, ids)).toEqual(NOTHING)
  })

  it('after a kill -9, which leaves its VM running, the next run over the data dir deletes that VM first', async () => {
    const { dataDir, tmp } = await freshDirs('killed')
    const long = await jobFile('one-long.json', { defaults, jobs: [{ name: 'long', cmd: ['sleep', '600'] }] })
    const killed = start(process.execPath, [...MAIN, long, '--data-dir', dataDir], tmp)
    await waitFor(() => /long: running$/m.test(killed.stderr))
    process.kill(-killed.pid, 'SIGKILL')
    expect((await killed.closed).signal).toBe('SIGKILL')
    const ids = await readdir(join(dataDir, 'instances'))
    expect((await leftovers(dataDir, tmp, ids)).processes.length).toBe(1) // the orphan VM, still running

    const quick = await jobFile('one-quick.json', { defaults, jobs: [{ name: 'quick', cmd: ['echo', 'done'] }] })
    const next = start(process.execPath, [...MAIN, quick, '--data-dir', dataDir], tmp)
    expect((await next.closed).code, next.stderr).toBe(0)
    expect(next.stderr).toMatch(/deleted 1 VM\(s\) an earlier run left behind: batch-\w+-0$/m)
    expect(next.stdout).toMatch(/^quick +succeeded +0 +\S+s +done$/m)
    expect(await leftovers(dataDir, tmp, ids)).toEqual(NOTHING)
  })

  it('refuses a bad job file with the field named, exit 2, and creates nothing', async () => {
    const { dataDir, tmp } = await freshDirs('bad')
    const jobs = await jobFile('bad.json', { defaults, jobs: [{ name: 'a', cmd: ['true'] }, { name: 'b', cmd: ['true'] }, { name: 'c', cmd: [] }] })
    const cli = start(process.execPath, [...MAIN, jobs, '--data-dir', dataDir], tmp)
    const { code } = await cli.closed
    expect(code).toBe(2)
    expect(cli.stderr).toContain('bad job file: jobs[2].cmd: must be a non-empty array of strings')
    expect(cli.stdout).toBe('')
    expect(existsSync(dataDir)).toBe(false)
    expect(await tmpFiles(tmp)).toEqual([])
  })
})

describe('the job file checks', () => {
  it.each([
    [{}, 'jobs: must be a non-empty array of jobs'],
    [{ jobs: [] }, 'jobs: must be a non-empty array of jobs'],
    [{ jobs: [{ name: 'a', cmd: ['true'] }] }, 'jobs[0].image: required (there is no defaults.image)'],
    [{ defaults, jobs: [{ name: 'a', cmd: ['true'] }, { name: 'a', cmd: ['true'] }] }, 'jobs[1].name: "a" is already the name of jobs[0]; names must be unique'],
    [{ defaults, jobs: [{ name: '', cmd: ['true'] }] }, 'jobs[0].name: must be a non-empty string'],
    [{ defaults, jobs: [{ name: 'a', cmd: 'true' }] }, 'jobs[0].cmd: must be a non-empty array of strings'],
    [{ defaults, jobs: [{ name: 'a', cmd: ['true', 1] }] }, 'jobs[0].cmd: must be a non-empty array of strings'],
    [{ defaults, jobs: [{ name: 'a', cmd: ['true'], timeoutMs: -1 }] }, 'jobs[0].timeoutMs: must be a positive integer'],
    [{ defaults, jobs: [{ name: 'a', cmd: ['true'], env: { X: 1 } }] }, 'jobs[0].env.X: must be a string'],
    [{ defaults, jobs: [{ name: 'a', cmd: ['true'], env: { '1X': 'y' } }] }, 'jobs[0].env.1X: not a valid environment variable name'],
    [{ defaults, jobs: [{ name: 'a', comand: ['true'] }] }, 'jobs[0].comand: unknown field (expected one of: name, cmd, image, vcpus, memory, timeoutMs, env)'],
    [{ defaults: { ...defaults, memory: 'lots' }, jobs: [{ name: 'a', cmd: ['true'] }] }, 'defaults.memory: must be a size like "256MB" or "1GB"'],
    [{ defaults: { ...defaults, vcpus: 1.5 }, jobs: [{ name: 'a', cmd: ['true'] }] }, 'defaults.vcpus: must be a positive integer'],
  ])('%j → %s', (file, message) => {
    expect(() => parseJobFile(file)).toThrow(message)
  })

  it('fills each job from the defaults, the job\'s own fields winning and env merged', () => {
    const [job] = parseJobFile({ defaults: { ...defaults, timeoutMs: 1000, env: { A: '1', B: '2' } }, jobs: [{ name: 'a', cmd: ['true'], memory: '512MB', env: { B: '3' } }] })
    expect(job).toEqual({ name: 'a', image: IMAGE, cmd: ['true'], vcpus: 1, memory: '512MB', timeoutMs: 1000, env: { A: '1', B: '3' } })
  })

  it('prints the results as a table, the last lines of output under each other', () => {
    const table = resultsTable([
      { name: 'ok', status: 'succeeded', exitCode: 0, message: 'exited with code 0', durationMs: 2500, lastLines: ['a', 'b'] },
      { name: 'slow-one', status: 'timed out', exitCode: null, message: 'still running after 5000 ms', durationMs: 7000, lastLines: [] },
    ])
    expect(table).toBe(
      [
        'JOB       STATUS     EXIT  DURATION  LAST OUTPUT',
        'ok        succeeded     0      2.5s  a',
        '                                     b',
        'slow-one  timed out     -      7.0s  still running after 5000 ms',
        '',
      ].join('\n'),
    )
  })
})
