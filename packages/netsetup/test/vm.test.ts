/**
 * A real QEMU guest (TCG) on a netsetup TAP: the VMM runs in the lab's host namespace through
 * the driver's `netns` option, the guest configures eth0 from its kernel command line (what the
 * config disk does for core's guests), and reaches a server in another namespace through NAT
 * while its HTTP is redirected to a proxy stand-in (mode http_https_only). The guest is the
 * vmm-drivers test guest (busybox initrd on the cached kernel that scripts/setup provides).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { QemuDriver, type VmSpec } from '@hypeman-ts/vmm-drivers'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { guestSpec, prepareGuest, qemuProcessesMentioning, waitForText, type TestGuest } from '../../vmm-drivers/test/support/guest.js'
import { HostNetwork, type NetworkAttachment } from '../src/index.js'
import { NetLab } from '../src/testing.js'
import { leftovers, NOTHING_LEFT, requireRoot, serve } from './support/lab.js'

let lab: NetLab
let dir: string
let net: HostNetwork
let guest: TestGuest
let spec: VmSpec | undefined
const driver = new QemuDriver()

beforeAll(async () => {
  requireRoot()
  guest = await prepareGuest()
  lab = await NetLab.create({ prefix: 'hmtv' })
  dir = await mkdtemp(join(tmpdir(), 'hm-vm-net-'))
  net = await HostNetwork.open({ stateDir: dir, netns: lab.hostNs, uplink: lab.uplink, dns: ['10.100.0.1'] })
  await serve(lab, lab.serverNs, 'server', '0.0.0.0', 'tcp:80,tcp:8080')
  await serve(lab, lab.hostNs, 'proxy', '10.100.0.1', 'tcp:3128')
  await serve(lab, lab.hostNs, 'hostsvc', '0.0.0.0', 'tcp:2222')
}, 120_000)

afterAll(async () => {
  if (spec) await driver.destroy({ runtimeDir: spec.runtimeDir })
  if (spec) expect(await qemuProcessesMentioning(spec.runtimeDir)).toEqual([])
  await lab?.destroy()
  if (dir) await rm(dir, { recursive: true, force: true })
  if (guest) await rm(guest.dir, { recursive: true, force: true })
})

describe('a QEMU guest on a TAP', { timeout: 180_000 }, () => {
  let att: NetworkAttachment

  it('reaches a server through NAT; its HTTP goes to the proxy; host services are refused', async () => {
    att = await net.attach('vm-guest', {
      vcpus: 1,
      bandwidthDownloadBitsPerSec: 50_000_000,
      bandwidthUploadBitsPerSec: 50_000_000,
      egress: { enabled: true, mode: 'http_https_only', proxy: { httpPort: 3128, httpsPort: 3128 } },
    })
    expect(att.device).toBe('tap')
    const targets = [`${lab.serverIp}:8080`, `${lab.serverIp}:80`, `${att.gateway}:2222`].join(',')
    spec = await guestSpec(guest, 'vmnet', {
      netns: lab.hostNs,
      nics: [{ tap: att.tap, mac: att.mac }],
      cmdline: `quiet hm.ip=${att.ip}/${att.prefixLength} hm.gw=${att.gateway} hm.ping=${lab.serverIp} hm.nc=${targets}`,
    })
    const vm = await driver.start(spec)
    await waitForText(spec.consoleLog, /HM-NC-DONE/, 150_000)
    const console = await readFile(spec.consoleLog, 'utf8')
    process.stdout.write(`${console.split('\n').filter((l) => l.startsWith('HM-NC') || l.startsWith('HM-PING')).join('\n')}\n`)
    expect(console).toContain('HM-PING-OK')
    expect(console).toContain(`HM-NC ${lab.serverIp}:8080 [server:8080 from ${lab.hostUplinkIp}]`)
    expect(console).toContain(`HM-NC ${lab.serverIp}:80 [proxy:3128 from ${att.ip}]`)
    expect(console).toMatch(new RegExp(`HM-NC ${att.gateway.replaceAll('.', '\\.')}:2222 \\[.*(refused|Connection reset)`, 'i'))
    await vm.kill()
  })

  it('detach after the VM is gone leaves nothing', async () => {
    if (spec) await driver.destroy({ runtimeDir: spec.runtimeDir })
    expect(await net.detach(att.instanceId)).toBe(true)
    expect(await leftovers(net)).toEqual(NOTHING_LEFT)
  })
})
