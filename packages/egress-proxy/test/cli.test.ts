/**
 * The standalone CLI, run as users run it (a child process on a policy file): start-up output,
 * --print-placeholders, SIGHUP reload (rotation, a broken file), SIGTERM, and the promise that
 * nothing it writes contains a real secret.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createProxy } from '../src/index.js'
import { parseArgs } from '../src/cli.js'
import { curl } from './support/clients.js'
import { type Harness, SECRET, SECRET_2, startHarness } from './support/harness.js'

const root = fileURLToPath(new URL('../../..', import.meta.url))
const cliPath = fileURLToPath(new URL('../src/cli.ts', import.meta.url))
let h: Harness
let file: string

function policyFile(secret: string, extra = ''): string {
  return `
listen: "127.0.0.1:0"
transparent_listen: "127.0.0.1:0"
metrics_listen: "127.0.0.1:0"
ca_dir: "./cli-state"
upstream_ca: "./ca.pem"
allow_destinations: ["127.0.0.0/8"]
allow_ports: [80, 443]
# The upstream, and a port nothing listens on (a refused connection): loopback is the proxy's own host.
allow_host_services: ["127.0.0.1:${h.https.port}", "127.0.0.1:1"]
sources:
  - match: "127.0.0.1"
    env: { OPENAI_REAL: "${secret}" }
    credentials:
      OPENAI_API_KEY:
        source: { env: OPENAI_REAL }
        inject:
          - hosts: ["127.0.0.1"]
            as: { header: Authorization, format: "Bearer \${value}" }
${extra}`
}

function cli(args: string[]): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', cliPath, ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] })
}

interface Running {
  child: ChildProcess
  out: () => string
  err: () => string
  waitFor: (re: RegExp, where?: 'out' | 'err', ms?: number) => Promise<RegExpMatchArray>
  exit: Promise<number | null>
}

function watch(child: ChildProcess): Running {
  let out = ''
  let err = ''
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()))
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()))
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  return {
    child,
    out: () => out,
    err: () => err,
    exit,
    waitFor: async (re, where = 'out', ms = 20_000) => {
      const deadline = Date.now() + ms
      while (Date.now() < deadline) {
        const m = (where === 'out' ? out : err).match(re)
        if (m) return m
        if (child.exitCode !== null) break
        await new Promise((r) => setTimeout(r, 50))
      }
      throw new Error(`no ${re} in ${where}: ${out}\n${err}`)
    },
  }
}

beforeAll(async () => {
  h = await startHarness()
  await writeFile(join(h.dir, 'ca.pem'), h.pki.caPem)
  file = join(h.dir, 'policy.yaml')
  await writeFile(file, policyFile(SECRET))
})
afterAll(() => h?.close())

describe('argument parsing', () => {
  it('reads its flags and rejects the rest, naming them', () => {
    expect(parseArgs(['--config', 'p.yaml'])).toEqual({ config: 'p.yaml', logLevel: 'info', printPlaceholders: false })
    expect(parseArgs(['--config=p.yaml', '--log-level', 'debug', '--print-placeholders'])).toEqual({ config: 'p.yaml', logLevel: 'debug', printPlaceholders: true })
    expect(parseArgs(['--help'])).toBe('help')
    expect(() => parseArgs([])).toThrow(expect.objectContaining({ field: '--config' }))
    expect(() => parseArgs(['--config', 'x', '--log-level', 'loud'])).toThrow(expect.objectContaining({ field: '--log-level' }))
    expect(() => parseArgs(['--config', 'x', '--verbose'])).toThrow(expect.objectContaining({ field: '--verbose' }))
  })
})

describe('hypeman-egress-proxy', { timeout: 60_000 }, () => {
  it('exits 2 on a bad policy file, naming the field', async () => {
    const bad = join(h.dir, 'bad.yaml')
    await writeFile(bad, policyFile(SECRET).replace('Bearer ${value}', 'Bearer'))
    const r = watch(cli(['--config', bad]))
    expect(await r.exit).toBe(2)
    expect(r.err()).toContain('sources[0].credentials.OPENAI_API_KEY.inject[0].as.format: must contain ${value}')
    expect(r.err()).not.toContain(SECRET)
  })

  it('--print-placeholders prints what the library derives, and exits', async () => {
    const r = await run(process.execPath, ['--import', 'tsx', cliPath, '--config', file, '--print-placeholders'], { cwd: root })
    const printed = JSON.parse(r.stdout) as Record<string, Record<string, string>>
    const lib = await createProxy({ stateDir: join(h.dir, 'cli-state'), listen: null, logger: { debug() {}, info() {}, warn() {}, error() {} } })
    expect(printed['127.0.0.1']!.OPENAI_API_KEY).toBe(lib.placeholderFor('127.0.0.1', 'OPENAI_API_KEY'))
    await lib.close()
  })

  it('serves, reloads on SIGHUP, exits cleanly on SIGTERM, and never writes a secret', async () => {
    await writeFile(file, policyFile(SECRET))
    const r = watch(cli(['--config', file, '--log-level', 'debug']))
    try {
      const caPath = (await r.waitFor(/CA certificate for clients: (\S+)/))[1]!
      const proxyUrl = (await r.waitFor(/explicit proxy on (\S+)/))[1]!
      const metricsUrl = (await r.waitFor(/metrics on (\S+)/))[1]!
      expect(caPath).toBe(join(h.dir, 'cli-state', 'ca.pem'))
      const target = `https://127.0.0.1:${h.https.port}/echo`
      const first = await curl(['--cacert', caPath, '-x', proxyUrl, target])
      expect(JSON.parse(first.body).headers.authorization).toBe(`Bearer ${SECRET}`)

      await writeFile(file, policyFile(SECRET_2))
      r.child.kill('SIGHUP')
      await r.waitFor(/"msg":"reloaded"/, 'err')
      const second = await curl(['--cacert', caPath, '-x', proxyUrl, target])
      expect(JSON.parse(second.body).headers.authorization).toBe(`Bearer ${SECRET_2}`)

      await writeFile(file, policyFile(SECRET_2).replace('Bearer ${value}', 'Bearer'))
      r.child.kill('SIGHUP')
      await r.waitFor(/reload failed; keeping the previous policies/, 'err')
      expect(r.err()).toContain('"field":"sources[0].credentials.OPENAI_API_KEY.inject[0].as.format"')
      const third = await curl(['--cacert', caPath, '-x', proxyUrl, target])
      expect(JSON.parse(third.body).headers.authorization).toBe(`Bearer ${SECRET_2}`)

      // Errors and refusals, so the logs have something to say.
      await curl(['--cacert', caPath, '-x', proxyUrl, `https://127.0.0.1:1/`])
      await curl(['--interface', '127.0.0.3', '-x', proxyUrl, `http://127.0.0.1:${h.http.port}/`])
      const metrics = await curl([metricsUrl])
      // Three answered requests and the one whose upstream refused the connection.
      expect(metrics.body).toMatch(/hypeman_egress_injections_total\{credential="OPENAI_API_KEY"\} 4/)

      r.child.kill('SIGTERM')
      expect(await r.exit).toBe(0)
      expect(r.err()).toContain('"msg":"stopped"')
      for (const line of r.err().trim().split('\n')) expect(() => JSON.parse(line)).not.toThrow()
      const written = r.out() + r.err() + metrics.body
      expect(written).not.toContain(SECRET)
      expect(written).not.toContain(SECRET_2)
    } finally {
      if (r.child.exitCode === null) r.child.kill('SIGKILL')
    }
  })
})
