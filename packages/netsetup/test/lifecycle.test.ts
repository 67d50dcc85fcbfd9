/**
 * Nothing is left behind: 50 create/delete cycles, a host process SIGKILLed at every step of an
 * attach followed by a reconcile, and links of ours that no allocation names.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { CommandError, run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { HostNetwork, type AttachStep, type HostNetworkOptions } from '../src/index.js'
import { linkNames, NetLab } from '../src/testing.js'
import { leftovers, NOTHING_LEFT, requireRoot } from './support/lab.js'

const repoRoot = fileURLToPath(new URL('../../..', import.meta.url))
const tsx = join(repoRoot, 'node_modules/.bin/tsx')
const child = fileURLToPath(new URL('./support/attach-child.ts', import.meta.url))

let lab: NetLab
let dir: string
let opts: HostNetworkOptions
let net: HostNetwork

beforeAll(async () => {
  requireRoot()
  lab = await NetLab.create({ prefix: 'hmtl' })
  dir = await mkdtemp(join(tmpdir(), 'hm-lifecycle-'))
  opts = { stateDir: dir, netns: lab.hostNs, uplink: lab.uplink, dns: ['10.100.0.1'] }
  net = await HostNetwork.open(opts)
})

afterAll(async () => {
  await lab?.destroy()
  if (dir) await rm(dir, { recursive: true, force: true })
})

describe('create/delete cycles', () => {
  it('50 attach/detach cycles (TAPs, shaping, both egress modes) leave nothing', async () => {
    const proxy = { httpPort: 3128, httpsPort: 3129 }
    for (let i = 0; i < 50; i++) {
      const id = `cycle-${i}`
      const egress = i % 3 === 0 ? { enabled: false } : { enabled: true, mode: i % 3 === 1 ? ('all' as const) : ('http_https_only' as const), proxy }
      const att = await net.attach(id, { vcpus: 1 + (i % 2), egress })
      if (i % 10 === 0) {
        // the cycle really creates things: port, ifb, tc, set elements
        const inv = await net.inspect()
        expect(inv.links).toEqual([att.ifb, att.tap].sort())
        expect(inv.qdiscs.map((q) => q.kind).sort()).toEqual(['htb', 'htb', 'ingress'])
        expect(inv.nft.bridge?.guests).toEqual([`${att.tap} . ${att.mac} . ${att.ip}`])
      }
      expect(await net.detach(id)).toBe(true)
    }
    expect(await leftovers(net)).toEqual(NOTHING_LEFT)
  }, 120_000)
})

describe('crash recovery', () => {
  const steps: AttachStep[] = ['allocated', 'rules', 'links', 'shaping']

  async function attachAndDie(id: string, killAt: AttachStep): Promise<void> {
    try {
      await run(tsx, [child, dir, lab.hostNs, lab.uplink, killAt, id], { cwd: repoRoot, timeoutMs: 60_000 })
      throw new Error(`the child attaching ${id} was expected to die at ${killAt}`)
    } catch (err) {
      if (!(err instanceof CommandError)) throw err
      expect(err.signal ?? err.exitCode, err.message).toBeTruthy()
    }
  }

  it.each(steps)('SIGKILL after step %s, then reconcile: nothing is left', async (killAt) => {
    const id = `killed-${killAt}`
    await attachAndDie(id, killAt)
    // the dead process left its allocation (and whatever it made); its lock is taken over
    const fresh = await HostNetwork.open(opts)
    expect((await fresh.list()).map((a) => a.instanceId)).toEqual([id])
    const r = await fresh.reconcile([])
    expect(r.removedInstances).toEqual([id])
    expect(await leftovers(fresh)).toEqual(NOTHING_LEFT)
    fresh.close()
  }, 60_000)

  it('a known instance whose attach died is kept, reported incomplete, and repaired by attaching again', async () => {
    const id = 'killed-but-known'
    await attachAndDie(id, 'rules')
    const fresh = await HostNetwork.open(opts)
    const before = await fresh.get(id)
    expect(await fresh.reconcile([id])).toEqual({ removedInstances: [], removedLinks: [], incomplete: [id] })
    const att = await fresh.attach(id, { vcpus: 1, egress: { enabled: true, proxy: { httpPort: 3128, httpsPort: 3128 } } })
    expect(att.ip).toBe(before?.ip)
    expect(await fresh.reconcile([id])).toEqual({ removedInstances: [], removedLinks: [], incomplete: [] })
    expect((await fresh.inspect()).links).toEqual([att.ifb, att.tap].sort())
    await fresh.detach(id)
    expect(await leftovers(fresh)).toEqual(NOTHING_LEFT)
  }, 60_000)

  it('reconcile removes links of ours that no allocation names, and leaves other links alone', async () => {
    const stray = linkNames('stray-instance')
    const sh = (args: string[]) => lab.exec(lab.hostNs, 'ip', args)
    await sh(['tuntap', 'add', 'dev', stray.tap, 'mode', 'tap', 'vnet_hdr'])
    await sh(['link', 'set', 'dev', stray.tap, 'master', 'hmbr0', 'up'])
    await sh(['link', 'add', stray.ifb, 'type', 'ifb'])
    await lab.exec(lab.hostNs, 'tc', ['qdisc', 'add', 'dev', stray.ifb, 'root', 'handle', '1:', 'htb'])
    // not ours: another name, and one of our names enslaved to someone else's bridge
    const foreign = linkNames('someone-elses')
    await sh(['link', 'add', 'otherbr0', 'type', 'bridge'])
    await sh(['tuntap', 'add', 'dev', foreign.tap, 'mode', 'tap'])
    await sh(['link', 'set', 'dev', foreign.tap, 'master', 'otherbr0'])
    await sh(['link', 'add', 'hmkeep0', 'type', 'ifb'])

    const kept = await net.attach('kept', { vcpus: 1 })
    const r = await net.reconcile(['kept'])
    expect(r.removedLinks.sort()).toEqual([stray.ifb, stray.tap].sort())
    const names = JSON.parse((await sh(['-j', 'link', 'show'])).stdout).map((l: { ifname: string }) => l.ifname)
    expect(names).toEqual(expect.arrayContaining([kept.tap, kept.ifb, foreign.tap, 'otherbr0', 'hmkeep0']))
    expect(names).not.toContain(stray.tap)
    expect(names).not.toContain(stray.ifb)
    await net.detach('kept')
    for (const l of [foreign.tap, 'otherbr0', 'hmkeep0']) await sh(['link', 'del', l])
    expect(await leftovers(net)).toEqual(NOTHING_LEFT)
  })
})
