/**
 * The command line as an operator runs it (a child process): `token` mints what `serve`
 * accepts, and SIGTERM during a create lets the create finish, stops the server, and leaves
 * the VM running for the next `serve` to reattach to.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import HypemanClient from '@onkernel/hypeman'
import { Hypeman } from '@hypeman-ts/core'
import { verifyToken } from '../src/index.js'
import { BUSYBOX } from './support/server.js'

const CLI = new URL('../src/cli.ts', import.meta.url).pathname
const secret = randomBytes(24).toString('hex')
const env = { ...process.env, JWT_SECRET: secret }
const children: ChildProcess[] = []
let dataDir: string | undefined

afterAll(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL')
  if (dataDir) {
    // Whatever a failed run left: the instance and its VMM.
    const hm = await Hypeman.open({ dataDir, network: false })
    for (const i of await hm.instances.list()) await hm.instances.delete(i.id)
    await hm.close()
    await rm(dataDir, { recursive: true, force: true })
  }
})

function cli(args: string[]): ChildProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  children.push(child)
  return child
}

const exited = (c: ChildProcess) => new Promise<number | null>((r) => (c.exitCode !== null ? r(c.exitCode) : c.once('exit', (code) => r(code))))

/** Starts `serve` and resolves with its base URL once it says it listens. */
async function serve(dir: string): Promise<{ child: ChildProcess; base: string; stderr: () => string }> {
  const child = cli(['serve', '--listen', '127.0.0.1:0', '--data-dir', dir, '--no-network', '--allow-oci-layouts'])
  let err = ''
  const base = await new Promise<string>((resolve, reject) => {
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString()
      const m = /listening on ([\d.]+):(\d+)/.exec(err)
      if (m) resolve(`http://${m[1]}:${m[2]}`)
    })
    child.once('exit', (code) => reject(new Error(`serve exited with ${code}: ${err}`)))
  })
  return { child, base, stderr: () => err }
}

async function tokenFromCli(): Promise<string> {
  const child = cli(['token', '--subject', 'ops', '--ttl', '1h'])
  let out = ''
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()))
  expect(await exited(child)).toBe(0)
  return out.trim()
}

describe('hypeman-ts-server', () => {
  it('token mints an HS256 JWT with the secret of $JWT_SECRET', async () => {
    const token = await tokenFromCli()
    expect(verifyToken(token, Buffer.from(secret))).toMatchObject({ sub: 'ops', exp: expect.any(Number) })
  })

  it('on SIGTERM finishes the create in flight, ends a followed log, stops, and leaves the VM to the next serve', async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'hm-server-cli-'))
    const token = await tokenFromCli()
    const first = await serve(dataDir)
    const client = new HypemanClient({ baseURL: first.base, apiKey: token, maxRetries: 0, timeout: 180_000 })

    const creating = client.instances.create({ name: 'survivor', image: BUSYBOX, cmd: ['sleep', '3600'], network: { enabled: false } })
    // SIGTERM only once the server has the create in hand (its record exists).
    let seen: string | undefined
    for (let i = 0; i < 1200 && !seen; i++) {
      seen = (await client.instances.list())[0]?.state
      if (!seen) await new Promise((r) => setTimeout(r, 50))
    }
    expect(seen).toMatch(/^(Created|Initializing)$/) // still in flight, or this test proves nothing
    // A request that would never end by itself (its headers are back, so it is in flight).
    const follow = await client.instances.logs('survivor', { follow: true, tail: 0 })
    const followed = (async () => {
      const lines: string[] = []
      for await (const line of follow) lines.push(line)
      return lines
    })()
    first.child.kill('SIGTERM')
    const created = await creating
    expect(created.state).toBe('Running')
    expect(await followed).toEqual(expect.any(Array)) // ended, not cut
    expect(await exited(first.child)).toBe(0)
    expect(first.stderr()).not.toContain(token)
    await expect(fetch(`${first.base}/health`)).rejects.toThrow()

    const second = await serve(dataDir)
    const again = new HypemanClient({ baseURL: second.base, apiKey: token, maxRetries: 0, timeout: 180_000 })
    const found = await again.instances.get('survivor')
    expect(found).toMatchObject({ id: created.id, state: 'Running' })
    expect(found.started_at).toBe(created.started_at) // the same boot, not a new one
    expect((await again.instances.delete('survivor').asResponse()).status).toBe(204)
    second.child.kill('SIGTERM')
    expect(await exited(second.child)).toBe(0)
  })
})
