/**
 * The guest's network and mediated-egress setup in real VMs (QEMU under TCG through the QEMU
 * driver), inside a network namespace this file creates: the VMM runs in it (the driver's `netns`
 * option) on a TAP whose far end has 10.77.0.1, where a peer process serves HTTP, HTTPS (a
 * certificate from a test CA) and DNS. Nothing touches the host's own network. One VM at a time.
 *
 * The image: the busybox test tree plus Debian's own curl and getent (glibc, OpenSSL) with their
 * libraries, an nsswitch.conf, a stand-in system CA bundle, an /etc/hosts of its own and a
 * systemd-style dangling /etc/resolv.conf symlink.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { defaultCacheDir, ensureGuestAssets, type GuestAssets } from '../../src/assets/ensure.js'
import { listCachedKernels } from '../../src/assets/kernel.js'
import { GuestAgentClient } from '../../src/guest/agent-client.js'
import type { GuestConfig } from '../../src/guest/config-disk.js'
import { requestGuestStop } from '../../src/guest/control.js'
import { buildGuestEnv } from '../../src/guest/program.js'
import { readStatusEvents, statusMark, waitForStatusEvent } from '../../src/guest/status.js'
import { makeCa, makeServerCert, type TestCa } from './pki.js'
import { appLog, GuestBooter, sha256, waitForLog, type Booted } from './helpers.js'
import { addHostPrograms, makeBusyboxTree, makeExt4 } from './rootfs.js'

const repoRoot = fileURLToPath(new URL('../../../../', import.meta.url))

const NS = `hmgn-${randomBytes(3).toString('hex')}`
const TAP = 'hmgn0'
const HOST_IP = '10.77.0.1'
const GUEST_IP = '10.77.0.2'
const MAC = '52:54:00:4d:00:02'
const network = { mac: MAC, address: GUEST_IP, prefixLength: 24, gateway: HOST_IP, dns: [HOST_IP], mtu: 1400 }
const BEGIN = '# hypeman egress CA (begin): added at boot by hypeman-init, replaced on every boot\n'
const END = '# hypeman egress CA (end)\n'
const proxyEnv = { HTTP_PROXY: 'http://10.77.0.1:3128', http_proxy: 'http://10.77.0.1:3128', HTTPS_PROXY: 'http://10.77.0.1:3128', https_proxy: 'http://10.77.0.1:3128', NO_PROXY: 'localhost,127.0.0.1' }

let assets: GuestAssets
let work: string
let rootfs: string
let ca: TestCa
let rotated: TestCa
let publicRoot: TestCa
let peer: ChildProcess | undefined
let nsMade = false
let booter: GuestBooter
/** Boots in the namespace with one NIC on the TAP; a name boots again on the same overlay. */
const boot = (name: string, config: GuestConfig, opts: { mac?: string } = {}): Promise<Booted> =>
  booter.boot(name, config, { rootfs, nics: [{ tap: TAP, mac: opts.mac ?? MAC }], netns: NS })

const sh = (cmd: string) => run('sh', ['-c', cmd])

async function startPeer(certPath: string, keyPath: string): Promise<ChildProcess> {
  const opts = { ip: HOST_IP, httpPort: 8080, httpsPort: 8443, dnsPort: 53, certPath, keyPath, names: { 'svc.hm.test': HOST_IP } }
  const child = spawn('ip', ['netns', 'exec', NS, process.execPath, '--import', 'tsx', join(repoRoot, 'packages/core/test/guest/netns-peer.ts'), JSON.stringify(opts)], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout!.on('data', (d: Buffer) => (out += d))
  child.stderr!.on('data', (d: Buffer) => (out += d))
  const deadline = Date.now() + 60_000
  while (!out.includes('ready\n')) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the namespace peer did not start: ${out}`)
    await sleep(50)
  }
  return child
}






/** debugfs's view of a path on an ext4 image (the disk as written, not as a guest sees it). */
async function debugfs(image: string, request: string): Promise<string> {
  const r = await run('debugfs', ['-R', request, image])
  return r.stdout + r.stderr
}

beforeAll(async () => {
  expect(process.getuid?.(), 'these tests need root (namespaces, TAPs, QEMU)').toBe(0)
  const kernel = (await listCachedKernels(defaultCacheDir()))[0]
  expect(kernel, 'a guest kernel in the cache (scripts/setup)').toBeDefined()
  assets = await ensureGuestAssets({ kernel: { version: kernel!.version } })
  work = await mkdtemp(join(tmpdir(), 'hm-guestnet-'))
  booter = new GuestBooter(assets, work)

  ca = await makeCa(work, 'hm-egress-test-ca')
  rotated = await makeCa(work, 'hm-egress-test-ca-rotated')
  publicRoot = await makeCa(work, 'stand-in-public-root')
  const server = await makeServerCert(work, ca, 'peer', HOST_IP)

  const tree = join(work, 'tree')
  await makeBusyboxTree(tree)
  await addHostPrograms(tree, ['/usr/bin/curl', '/usr/bin/getent'])
  await mkdir(join(tree, 'etc/ssl/certs'), { recursive: true })
  await writeFile(join(tree, 'etc/ssl/certs/ca-certificates.crt'), publicRoot.pem)
  await writeFile(join(tree, 'other-root.pem'), publicRoot.pem)
  await writeFile(join(tree, 'etc/nsswitch.conf'), 'hosts: files dns\n')
  await writeFile(join(tree, 'etc/hosts'), '127.0.0.1 localhost\n192.0.2.99 from-the-image\n')
  await symlink('../run/systemd/resolve/stub-resolv.conf', join(tree, 'etc/resolv.conf'))
  rootfs = join(work, 'rootfs.ext4')
  await makeExt4(tree, rootfs, '96M')

  await run('ip', ['netns', 'add', NS])
  nsMade = true
  await run('ip', ['-n', NS, 'link', 'set', 'lo', 'up'])
  await run('ip', ['-n', NS, 'tuntap', 'add', 'dev', TAP, 'mode', 'tap', 'vnet_hdr'])
  await run('ip', ['-n', NS, 'addr', 'add', `${HOST_IP}/24`, 'dev', TAP])
  await run('ip', ['-n', NS, 'link', 'set', TAP, 'up'])
  peer = await startPeer(server.certPath, server.keyPath)
}, 180_000)

afterAll(async () => {
  await booter?.destroyAll()
  if (peer && peer.exitCode === null) {
    peer.kill('SIGTERM')
    await new Promise((resolve) => (peer!.exitCode !== null ? resolve(undefined) : peer!.once('exit', resolve)))
  }
  if (nsMade) await run('ip', ['netns', 'del', NS])
  expect((await sh('ip netns list')).stdout).not.toContain(NS)
  if (work) await rm(work, { recursive: true, force: true })
})

describe('a guest with a network and mediated egress', { timeout: 180_000 }, () => {
  let b: Booted
  let agent: GuestAgentClient
  let rootfsBefore: string
  const exec = async (cmd: string) => {
    const r = await agent.run({ argv: ['sh', '-c', cmd] })
    return { code: r.exitCode, out: r.stdout.toString(), err: r.stderr.toString() }
  }

  const config = (egressCa: TestCa): GuestConfig => ({
    // The very first thing the program does is use the network.
    argv: ['sh', '-c', `wget -Y off -q -O - http://${HOST_IP}:8080/first || echo "first wget failed: $?"; echo ready; while :; do sleep 1 & wait $!; done`],
    env: buildGuestEnv(['PATH=/usr/bin:/bin'], { GIT_SSL_CAINFO: '/user/choice.pem', HTTP_PROXY: 'http://user-set:1' }, 'hm-net'),
    hostname: 'hm-net',
    network,
    egress: { caBundlePem: egressCa.pem, proxyEnv },
  })

  beforeAll(async () => {
    rootfsBefore = await sha256(rootfs)
    b = await boot('main', config(ca))
    const started = await waitForStatusEvent(b.statusLog, 'started', { timeoutMs: 120_000 })
    expect(started).toMatchObject({ type: 'started', networkMs: expect.any(Number), egressMs: expect.any(Number) })
    await waitForLog(b, 'ready')
    agent = await GuestAgentClient.connect({ socketPath: b.agentSocket, timeoutMs: 60_000 })
  })

  afterAll(async () => {
    agent?.close()
    await b?.vm.kill().catch(() => {})
  })

  it("starts the program only once the network works: its first command's HTTP GET succeeds", async () => {
    expect(await appLog(b)).toBe(`http /first from the namespace, you are ${GUEST_IP}\nready\n`)
  })

  it('configured the NIC found by its MAC (address, MTU, up) and lo, without any tool in the image', async () => {
    // (carrier, not operstate: the kernel's linkwatch updates operstate up to a second after the link is usable)
    const links = (await exec('for i in /sys/class/net/*; do echo "${i##*/} $(cat $i/address) $(cat $i/mtu) $(cat $i/carrier) $(cat $i/flags)"; done')).out
    const nic = links.split('\n').find((l) => l.includes(MAC))
    expect(nic).toMatch(new RegExp(`^(\\S+) ${MAC} 1400 1 0x1003$`)) // IFF_UP | IFF_BROADCAST | IFF_MULTICAST
    expect(links).toMatch(/^lo 00:00:00:00:00:00 65536 1 0x9$/m) // IFF_UP | IFF_LOOPBACK
    const ifname = nic!.split(' ')[0]!
    // The kernel's own tables: the default route via the gateway and the /24 on the NIC, our address local.
    const routes = (await exec('cat /proc/net/route')).out.split('\n').slice(1).filter(Boolean).map((l) => l.trim().split(/\s+/))
    expect(routes.map((r) => [r[0], r[1], r[2], r[3], r[7]])).toEqual(
      expect.arrayContaining([
        [ifname, '00000000', '01004D0A', '0003', '00000000'], // 0.0.0.0/0 via 10.77.0.1, UP|GATEWAY
        [ifname, '00004D0A', '00000000', '0001', '00FFFFFF'], // 10.77.0.0/24 on the link
      ]),
    )
    expect((await exec('cat /proc/net/fib_trie')).out).toMatch(/\|-- 10\.77\.0\.2\n\s+\/32 host LOCAL/)
    expect((await exec('wget -Y off -q -O - http://127.0.0.1:1/ 2>&1; echo "exit $?"')).out).toMatch(/Connection refused/) // lo answers
  })

  it('writes resolv.conf, hosts and hostname over the image files, which glibc then uses', async () => {
    expect((await exec('cat /etc/resolv.conf')).out).toBe(`# written at boot by hypeman-init from the instance's network config\nnameserver ${HOST_IP}\n`)
    expect((await exec('cat /etc/hosts')).out).toMatch(new RegExp(`^127\\.0\\.0\\.1\\tlocalhost\\n[\\s\\S]*\\n${GUEST_IP.replaceAll('.', '\\.')}\\thm-net\\n$`))
    expect((await exec('cat /etc/hostname; hostname')).out).toBe('hm-net\nhm-net\n')
    expect((await exec('getent ahostsv4 hm-net')).out).toMatch(new RegExp(`^${GUEST_IP} +STREAM hm-net`))
    expect((await exec('getent ahostsv4 svc.hm.test')).out).toMatch(new RegExp(`^${HOST_IP} +STREAM svc.hm.test`)) // through our resolv.conf
    expect((await exec('getent hosts from-the-image; echo "exit $?"')).out).toBe('exit 2\n') // the image's hosts file is not what the guest sees
    expect((await exec('readlink /etc/resolv.conf')).out).toBe('../run/systemd/resolve/stub-resolv.conf\n')
  })

  it('trusts the egress CA through the system bundle (real curl, real TLS), and a bundle without it fails', async () => {
    const ok = await exec(`env -u CURL_CA_BUNDLE -u SSL_CERT_FILE curl --noproxy '*' -sS https://${HOST_IP}:8443/tls`)
    expect(ok).toMatchObject({ code: 0, out: `https /tls from the namespace, you are ${GUEST_IP}\n` })
    const refused = await exec(`curl --noproxy '*' -sS --cacert /other-root.pem https://${HOST_IP}:8443/tls`)
    expect(refused.code).toBe(60) // CURLE_PEER_FAILED_VERIFICATION
    expect((await exec('cat /etc/ssl/certs/ca-certificates.crt')).out).toBe(`${publicRoot.pem}${BEGIN}${ca.pem}${END}`)
    expect((await exec('cat /usr/local/share/ca-certificates/hypeman-egress.crt')).out).toBe(ca.pem)
  })

  it('sets the CA and proxy variables in the program and exec environments, keeping those the user set', async () => {
    const env = Object.fromEntries((await exec('env')).out.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]))
    expect(env).toMatchObject({
      SSL_CERT_FILE: '/etc/ssl/certs/ca-certificates.crt',
      REQUESTS_CA_BUNDLE: '/etc/ssl/certs/ca-certificates.crt',
      CURL_CA_BUNDLE: '/etc/ssl/certs/ca-certificates.crt',
      AWS_CA_BUNDLE: '/etc/ssl/certs/ca-certificates.crt',
      NODE_EXTRA_CA_CERTS: '/usr/local/share/ca-certificates/hypeman-egress.crt',
      GIT_SSL_CAINFO: '/user/choice.pem',
      HTTP_PROXY: 'http://user-set:1',
      http_proxy: proxyEnv.http_proxy,
      HTTPS_PROXY: proxyEnv.HTTPS_PROXY,
      https_proxy: proxyEnv.https_proxy,
      NO_PROXY: proxyEnv.NO_PROXY,
    })
    // The program got the same environment as exec (init sets it before either starts).
    const pid = (await readStatusEvents(b.statusLog)).find((e) => e.type === 'started')
    const programEnv = (await exec(`tr '\\0' '\\n' < /proc/${pid && 'pid' in pid ? pid.pid : 0}/environ`)).out
    expect(programEnv).toContain('SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\n')
    expect(programEnv).toContain(`https_proxy=${proxyEnv.https_proxy}\n`)
  })

  it('left the image disk untouched, and the overlay holds only the CA and empty mount points', async () => {
    await requestGuestStop(b.controlSocket, 10_000)
    expect((await b.vm.waitForExit({ timeoutMs: 60_000 })).reason).toBe('poweroff')
    expect(await sha256(rootfs)).toBe(rootfsBefore)
    expect(await debugfs(rootfs, 'cat /etc/hosts')).toContain('192.0.2.99 from-the-image')
    expect(await debugfs(b.overlay, 'stat /upper/etc/hosts')).toMatch(/File not found/) // no copy-up
    expect(await debugfs(b.overlay, 'stat /upper/etc/resolv.conf')).toMatch(/File not found/)
    expect(await debugfs(b.overlay, 'stat /upper/run/systemd/resolve/stub-resolv.conf')).toMatch(/Size: 0\b/)
    expect(await debugfs(b.overlay, 'cat /upper/etc/ssl/certs/ca-certificates.crt')).toContain(BEGIN)
  })

  it('on the next boot of the same instance, replaces the CA block instead of adding another (and a /32 reaches its gateway on-link)', async () => {
    const since = await statusMark(b.statusLog)
    await writeFile(b.appLog, '')
    const again = await boot('main', {
      ...config(rotated),
      argv: ['sh', '-c', `cat /etc/ssl/certs/ca-certificates.crt; wget -Y off -q -O - http://${HOST_IP}:8080/onlink`],
      network: { ...network, prefixLength: 32 },
      skipGuestAgent: true,
    })
    try {
      expect((await again.vm.waitForExit({ timeoutMs: 120_000 })).reason).toBe('poweroff')
      expect((await readStatusEvents(again.statusLog, since)).at(-1)).toMatchObject({ type: 'exited', code: 0 })
      expect(await appLog(again)).toBe(`${publicRoot.pem}${BEGIN}${rotated.pem}${END}http /onlink from the namespace, you are ${GUEST_IP}\n`)
    } finally {
      await again.vm.kill().catch(() => {})
    }
  })
})

describe('network boot failures', { timeout: 180_000 }, () => {
  it('reports step "network" when no NIC has the configured MAC, and never runs the program', async () => {
    const b = await boot('wrong-mac', { argv: ['echo', 'must not run'], env: {}, network: { ...network, mac: '52:54:00:4d:00:99' }, skipGuestAgent: true })
    try {
      expect((await b.vm.waitForExit({ timeoutMs: 120_000 })).reason).toBe('poweroff')
      const events = await readStatusEvents(b.statusLog)
      expect(events.at(-1)).toMatchObject({ type: 'error', step: 'network', message: expect.stringContaining('no network interface with MAC 52:54:00:4d:00:99') })
      expect(events.some((e) => e.type === 'started')).toBe(false)
      expect(await appLog(b)).toBe('')
    } finally {
      await b.vm.kill().catch(() => {})
    }
  })
})
