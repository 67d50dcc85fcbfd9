/**
 * PATCH /instances/{id} for real: credential rotation needs the mediated egress path, so a host
 * network. Everything runs in namespaces this test creates (NetLab, as core's network test does):
 * the manager, the server and the SDK in the lab's "host" namespace (support/update-network-child.ts),
 * the stand-in internet (core's upstream server, HTTPS) in its "server" namespace. A Debian guest
 * with curl calls it before and after the PATCH; the real value on the wire changes, the VM does not
 * restart, and the guest never sees either value.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { readdirSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { NetLab } from '@hypeman-ts/netsetup/testing'
import { makeCerts } from '../../core/test/support/certs.js'
import { FIXTURES } from '../../core/test/support/registry.js'
import { specValidator } from './support/server.js'

const SECRETS: [string, string] = ['sk-before-rotation-41d2', 'sk-after-rotation-9b7e']
const CORE_SUPPORT = join(__dirname, '../../core/test/support')
const valid = specValidator()
let lab: NetLab
let work: string
let results: Record<string, any>
let childOutput = ''

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'hm-server-net-'))
  lab = await NetLab.create({ prefix: 'hmsu' })
  const certs = await makeCerts(work)
  const upstream = lab.spawn(lab.serverNs, process.execPath, [join(CORE_SUPPORT, 'upstream-server.mjs'), certs.cert, certs.key])
  await upstream.waitFor(/upstream ready/)
  const cfg = { dataDir: join(work, 'data'), uplink: lab.uplink, upstreamCa: certs.ca, serverIp: lab.serverIp, image: `oci:${FIXTURES}/debian:bookworm`, secrets: SECRETS }
  const child = lab.spawn(lab.hostNs, process.execPath, ['--import', 'tsx', join(__dirname, 'support/update-network-child.ts'), JSON.stringify(cfg)])
  const m = await child.waitFor(/RESULT (.*)\n/, 600_000)
  childOutput = child.output()
  results = JSON.parse(m[1]!)
}, 660_000)

afterAll(async () => {
  // A child that failed half-way may leave its VM behind: QEMU processes naming this test's files.
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      if (work && cmd.includes('qemu-system') && cmd.includes(work)) process.kill(Number(pid), 'SIGKILL')
    } catch {}
  }
  await lab?.destroy()
  if (work) await rm(work, { recursive: true, force: true })
})

describe('PATCH /instances/{id} through the SDK', () => {
  it('ran the scenario to the end', () => {
    expect(results.error, childOutput.slice(-3000)).toBeUndefined()
  })

  it('puts the first value on the wire before the rotation', () => {
    expect(results.before).toMatchObject({ url: '/before', tls: true, headers: { authorization: `Bearer ${SECRETS[0]}` } })
  })

  it('answers 200 with the Instance: same boot, still Running, the guest\'s env unchanged (a placeholder)', () => {
    expect(results.patchStatus).toBe(200)
    valid('Instance', results.patched)
    expect(results.patched).toMatchObject({ id: results.created.id, state: 'Running', started_at: results.created.started_at })
    expect(results.patched.env).toEqual({ VISIBLE: 'yes', API_KEY: '<placeholder>' })
    expect(JSON.stringify(results.patched)).not.toContain(SECRETS[1])
  })

  it('puts the new value on the wire from the next request, without a restart', () => {
    expect(results.after).toMatchObject({ url: '/after', tls: true, headers: { authorization: `Bearer ${SECRETS[1]}` } })
  })

  it('refuses a key no credential binds with 400 naming env.KEY', () => {
    expect(results.unbound).toMatchObject({ status: 400, error: { code: 'invalid_input', details: [{ code: 'field', message: 'env.VISIBLE' }] } })
  })
})
