/**
 * examples/egress-proxy-standalone as its README runs it: installed from the packed tarballs,
 * `npm run placeholders`, `npm start` on the example's policy.yaml (pointed at a local HTTPS
 * stand-in for the API), a request that carries only the placeholder, a secret rotated with
 * SIGHUP, SIGTERM; and the systemd unit passes `systemd-analyze verify`.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { readdir, readFile, readlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { pollUntil, run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import { parse, stringify } from 'yaml'
import { makePki } from '../../packages/egress-proxy/test/support/pki.js'
import { startHttpsUpstream, type Upstream } from '../../packages/egress-proxy/test/support/upstream.js'
import { installExample, type InstalledExample } from './support/install.js'

const SECRET = 'sk-standalone-secret-one'
const SECRET_2 = 'sk-standalone-secret-two'
let example: InstalledExample
let upstream: Upstream

beforeAll(async () => {
  example = await installExample('egress-proxy-standalone', inject('packsDir'))
  const pki = await makePki(example.dir)
  upstream = await startHttpsUpstream(pki.good)
  await writeFile(join(example.dir, 'upstream-ca.pem'), pki.caPem)
}, 300_000)

afterAll(async () => {
  await upstream?.close()
  await example?.remove()
})

/** The example's policy.yaml with what a local test needs: any free port, the stand-in API on loopback. */
async function writePolicy(secret: string): Promise<void> {
  const path = join(example.dir, 'policy.yaml')
  const doc = parse(await readFile(path, 'utf8'))
  Object.assign(doc, {
    listen: '127.0.0.1:0',
    metrics_listen: '127.0.0.1:0',
    upstream_ca: './upstream-ca.pem',
    allow_destinations: ['127.0.0.0/8'],
    allow_host_services: [`127.0.0.1:${upstream.port}`],
  })
  doc.sources[0].env.OPENAI_REAL = secret
  doc.sources[0].credentials.OPENAI_API_KEY.inject[0].hosts = ['127.0.0.1']
  await writeFile(path, stringify(doc))
}

/** The proxy's own process (npm runs it through a shell): the one whose cwd is the example. */
async function proxyPid(): Promise<number> {
  return pollUntil(
    async () => {
      for (const entry of await readdir('/proc')) {
        if (!/^\d+$/.test(entry)) continue
        const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')
        const cwd = await readlink(`/proc/${entry}/cwd`).catch(() => '')
        if (cwd === example.dir && /node\0[^\0]*hypeman-egress-proxy\0--config\0policy\.yaml/.test(cmdline)) return Number(entry)
      }
      return undefined
    },
    { deadline: Date.now() + 30_000, what: 'the hypeman-egress-proxy process', step: 'test' },
  )
}

function watch(child: ChildProcess) {
  let out = ''
  let err = ''
  child.stdout!.on('data', (d: Buffer) => (out += d))
  child.stderr!.on('data', (d: Buffer) => (err += d))
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  const waitFor = (re: RegExp, stream: 'out' | 'err' = 'out') =>
    pollUntil(() => re.exec(stream === 'out' ? out : err) ?? undefined, { deadline: Date.now() + 60_000, what: `${re} on std${stream}`, step: 'test' })
  return { exit, waitFor, out: () => out, err: () => err }
}

const viaProxy = (proxyUrl: string, caPath: string, placeholder: string) =>
  run('curl', ['-sS', '--max-time', '20', '--cacert', caPath, '-x', proxyUrl, '-H', `Authorization: Bearer ${placeholder}`, `https://127.0.0.1:${upstream.port}/echo`])

describe('examples/egress-proxy-standalone', () => {
  it('serves the placeholder\'s secret, rotates it on SIGHUP, and stops on SIGTERM', async () => {
    await writePolicy(SECRET)
    const printed = await run('npm', ['run', '--silent', 'placeholders'], { cwd: example.dir, timeoutMs: 60_000 })
    const placeholder = JSON.parse(printed.stdout)['127.0.0.1'].OPENAI_API_KEY as string
    expect(placeholder).toMatch(/^hmph_[0-9a-f]{40}$/)

    const r = watch(spawn('npm', ['start'], { cwd: example.dir, stdio: ['ignore', 'pipe', 'pipe'] }))
    const pid = await proxyPid()
    try {
      const caPath = (await r.waitFor(/CA certificate for clients: (\S+)/))[1]!
      const proxyUrl = (await r.waitFor(/explicit proxy on (\S+)/))[1]!
      expect(caPath).toBe(join(example.dir, 'ca', 'ca.pem'))

      const first = await viaProxy(proxyUrl, caPath, placeholder)
      expect(JSON.parse(first.stdout).headers.authorization).toBe(`Bearer ${SECRET}`)

      // The README's rotation: edit the file, SIGHUP the proxy; the placeholder stays the same.
      await writePolicy(SECRET_2)
      process.kill(pid, 'SIGHUP')
      await r.waitFor(/"msg":"reloaded"/, 'err')
      const second = await viaProxy(proxyUrl, caPath, placeholder)
      expect(JSON.parse(second.stdout).headers.authorization).toBe(`Bearer ${SECRET_2}`)

      // unmatched_placeholder: block — the placeholder bound for another host is refused.
      const elsewhere = await run('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '20', '--cacert', caPath, '-x', proxyUrl, '-H', `Authorization: Bearer ${placeholder}`, `https://localhost:${upstream.port}/echo`])
      expect(elsewhere.stdout).toBe('403')

      process.kill(pid, 'SIGTERM')
      expect(await r.exit).toBe(0)
      expect(r.err()).toContain('"msg":"stopped"')
      expect(r.out() + r.err()).not.toContain(SECRET)
      expect(r.out() + r.err()).not.toContain(SECRET_2)
    } finally {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
  })

  it('ships a systemd unit that systemd accepts, reloading with SIGHUP', async () => {
    const unit = join(example.dir, 'hypeman-egress-proxy.service')
    const text = await readFile(unit, 'utf8')
    expect(text).toMatch(/^ExecReload=\/bin\/kill -HUP \$MAINPID$/m)
    expect(text).toMatch(/^ExecStart=\S+\/hypeman-egress-proxy --config \S+policy\.yaml$/m)
    // verify checks ExecStart's binary exists: point it at the installed one for the check.
    const installed = join(example.dir, 'node_modules', '.bin', 'hypeman-egress-proxy')
    const local = join(example.dir, 'check', 'hypeman-egress-proxy.service')
    await run('mkdir', ['-p', join(example.dir, 'check')])
    await writeFile(local, text.replace(/^ExecStart=\S+/m, `ExecStart=${installed}`))
    const res = await run('systemd-analyze', ['verify', '--man=no', local], { okCodes: [0, 1] })
    // systemd-analyze also reports problems of units it loads as dependencies; only ours count.
    const ours = `${res.stdout}${res.stderr}`.split('\n').filter((l) => l.includes('hypeman-egress-proxy.service'))
    expect(ours).toEqual([])
  })
})
