/**
 * Bandwidth shaping measured with iperf3 between a veth guest and a server behind the NAT:
 * received throughput must be within ±15% of the configured rate, in each direction, for explicit
 * rates, for the vCPU-share default, and after a rate change on a live port.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { HostNetwork } from '../src/index.js'
import { NetLab } from '../src/testing.js'
import { requireRoot } from './support/lab.js'

let lab: NetLab
let dir: string
let net: HostNetwork
let port = 5301
const measured: string[] = []

beforeAll(async () => {
  requireRoot()
  lab = await NetLab.create({ prefix: 'hmts' })
  dir = await mkdtemp(join(tmpdir(), 'hm-shaping-'))
  net = await HostNetwork.open({
    stateDir: dir,
    netns: lab.hostNs,
    uplink: lab.uplink,
    dns: ['10.100.0.1'],
    hostCpus: 4,
    capacity: { downloadBitsPerSec: 100_000_000, uploadBitsPerSec: 60_000_000 },
  })
})

afterAll(async () => {
  if (measured.length > 0) console.log(['| case | direction | configured | measured | error |', '|---|---|---|---|---|', ...measured].join('\n'))
  await lab?.destroy()
  if (dir) await rm(dir, { recursive: true, force: true })
})

/** iperf3 from the guest to the server (upload) or back (download, -R); the receiver's rate over 4 s after a 1 s warm-up. */
async function measure(ns: string, direction: 'download' | 'upload'): Promise<number> {
  const p = port++
  const server = lab.spawn(lab.serverNs, 'iperf3', ['-s', '-1', '--forceflush', '-B', lab.serverIp, '-p', String(p)])
  await server.waitFor(/Server listening/)
  const { stdout } = await lab.exec(ns, 'iperf3', ['-c', lab.serverIp, '-p', String(p), '-t', '4', '-O', '1', '-J', ...(direction === 'download' ? ['-R'] : [])])
  const result = JSON.parse(stdout) as { end: { sum_received: { bits_per_second: number } } }
  return result.end.sum_received.bits_per_second
}

async function expectRate(name: string, ns: string, direction: 'download' | 'upload', configured: number): Promise<void> {
  const got = await measure(ns, direction)
  const error = (got - configured) / configured
  measured.push(`| ${name} | ${direction} | ${configured / 1e6} Mbit/s | ${(got / 1e6).toFixed(1)} Mbit/s | ${(error * 100).toFixed(1)}% |`)
  expect(Math.abs(error), `${direction}: measured ${got} bit/s for ${configured}`).toBeLessThanOrEqual(0.15)
}

describe('shaping', { timeout: 60_000 }, () => {
  let explicitNs: string

  it('explicit rates: 40 Mbit/s down, 25 Mbit/s up', async () => {
    const att = await net.attach('explicit', { vcpus: 1, device: 'veth', bandwidthDownloadBitsPerSec: 40_000_000, bandwidthUploadBitsPerSec: 25_000_000 })
    explicitNs = (await lab.addGuest(att)).ns
    await expectRate('explicit', explicitNs, 'download', 40_000_000)
    await expectRate('explicit', explicitNs, 'upload', 25_000_000)
  })

  it('a rate changed on a live port takes effect (download 40 → 15 Mbit/s)', async () => {
    await net.attach('explicit', { vcpus: 1, device: 'veth', bandwidthDownloadBitsPerSec: 15_000_000, bandwidthUploadBitsPerSec: 25_000_000 })
    await expectRate('changed', explicitNs, 'download', 15_000_000)
  })

  it('the default: 1 of 4 host CPUs gets a quarter of the capacity (25 down, 15 up)', async () => {
    const att = await net.attach('default', { vcpus: 1, device: 'veth' })
    expect(att).toMatchObject({ bandwidthDownloadBitsPerSec: 25_000_000, bandwidthUploadBitsPerSec: 15_000_000 })
    const { ns } = await lab.addGuest(att)
    await expectRate('vCPU share', ns, 'download', 25_000_000)
    await expectRate('vCPU share', ns, 'upload', 15_000_000)
  })
})
