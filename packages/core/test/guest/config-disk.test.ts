import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  CONFIG_DISK_BYTES,
  CONFIG_HEADER_SIZE,
  decodeGuestConfig,
  encodeGuestConfig,
  packConfigImage,
  readGuestConfigDisk,
  writeGuestConfigDisk,
  type GuestConfig,
} from '../../src/guest/config-disk.js'
import { encodeTlv } from '../../src/guest/tlv.js'
import { guestInitBinary } from './helpers.js'
import { makeCa, makeSelfSignedLeaf, type TestCa } from './pki.js'

const full: GuestConfig = {
  argv: ['/bin/sh', '-c', 'echo "a b"; exit 3', ''],
  env: { PATH: '/usr/bin:/bin', FOO: 'bar=baz', EMPTY: '', UNICODE: 'ü ✓' },
  workdir: '/srv/app',
  user: 'app:staff',
  hostname: 'web-1',
  rootfsType: 'erofs',
  skipGuestAgent: true,
  stopGraceMs: 2500,
}

let dir: string
let init: string
let ca: TestCa
let ca2: TestCa
let leafPem: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-cfg-'))
  init = await guestInitBinary()
  ca = await makeCa(dir, 'hm-test-ca')
  ca2 = await makeCa(dir, 'hm-test-ca-2')
  leafPem = await makeSelfSignedLeaf(dir, 'not-a-ca')
})
afterAll(() => rm(dir, { recursive: true, force: true }))

/** The guest's own parser (init's host-side `parse-config`), fed the bytes we wrote. */
async function parseInGuestCode(img: Buffer): Promise<string> {
  const path = join(dir, `img-${Math.random().toString(36).slice(2)}`)
  await writeFile(path, img)
  return (await run(init, ['parse-config', path])).stdout
}

describe('config disk encoding', () => {
  it('lays out magic, version, length, CRC and pads to 4 KiB', () => {
    const img = encodeGuestConfig(full)
    expect(img.toString('ascii', 0, 8)).toBe('HMCONFIG')
    expect(img.readUInt32LE(8)).toBe(1)
    const len = img.readUInt32LE(12)
    expect(img.readUInt32LE(16)).toBe(crc32(img.subarray(CONFIG_HEADER_SIZE, CONFIG_HEADER_SIZE + len)))
    expect(img.length % 4096).toBe(0)
    expect(img.subarray(CONFIG_HEADER_SIZE + len).every((b) => b === 0)).toBe(true)
  })

  it('round-trips through its own decoder', () => {
    expect(decodeGuestConfig(encodeGuestConfig(full))).toEqual({ ...full, requires: [] })
  })

  it('decodes the defaults the guest applies when keys are absent', () => {
    expect(decodeGuestConfig(encodeGuestConfig({ argv: ['true'], env: {} }))).toEqual({
      argv: ['true'],
      env: {},
      workdir: '/',
      user: '',
      hostname: 'hypeman',
      rootfsType: 'ext4',
      skipGuestAgent: false,
      stopGraceMs: 10_000,
      requires: [],
    })
  })

  it.each<[string, Partial<GuestConfig>, string]>([
    ['empty argv', { argv: [] }, 'argv'],
    ['empty program name', { argv: [''] }, 'argv'],
    ['NUL in an argument', { argv: ['sh', 'a\0b'] }, 'argv[1]'],
    ['env name with =', { env: { 'A=B': '1' } }, 'env.A=B'],
    ['empty env name', { env: { '': '1' } }, 'env.'],
    ['NUL in an env value', { env: { A: 'x\0' } }, 'env.A'],
    ['relative workdir', { workdir: 'srv' }, 'workdir'],
    ['user with two colons', { user: 'a:b:c' }, 'user'],
    ['hostname with a space', { hostname: 'a b' }, 'hostname'],
    ['hostname too long', { hostname: 'a'.repeat(65) }, 'hostname'],
    ['unknown rootfs type', { rootfsType: 'xfs' as never }, 'rootfsType'],
    ['negative grace', { stopGraceMs: -1 }, 'stopGraceMs'],
  ])('rejects %s, naming the field', (_name, patch, field) => {
    expect(() => encodeGuestConfig({ argv: ['true'], env: {}, ...patch })).toThrowError(expect.objectContaining({ code: 'invalid_input', field }))
  })

  it('rejects corrupt images when decoding', () => {
    const img = encodeGuestConfig(full)
    const flipped = Buffer.from(img)
    flipped[CONFIG_HEADER_SIZE + 3]! ^= 0xff
    expect(() => decodeGuestConfig(flipped)).toThrowError(expect.objectContaining({ code: 'bad_config_disk' }))
    expect(() => decodeGuestConfig(Buffer.alloc(4096))).toThrowError(/bad magic/)
  })

  it('writes the image atomically to a file, and reads it back from its header and payload', async () => {
    const path = join(dir, 'config.img')
    await writeGuestConfigDisk(path, full)
    expect((await stat(path)).size).toBe(CONFIG_DISK_BYTES)
    expect(await readGuestConfigDisk(path)).toEqual(decodeGuestConfig(await readFile(path)))
    expect((await readGuestConfigDisk(path)).argv).toEqual(full.argv)
  })

  it('refuses a config disk file that is cut short or names more payload than it holds', async () => {
    const path = join(dir, 'config.img')
    await writeGuestConfigDisk(path, full)
    const img = await readFile(path)
    const len = img.readUInt32LE(12)
    await writeFile(path, img.subarray(0, CONFIG_HEADER_SIZE + len - 1))
    await expect(readGuestConfigDisk(path)).rejects.toThrowError(expect.objectContaining({ code: 'bad_config_disk' }))
    await writeFile(path, img.subarray(0, 10))
    await expect(readGuestConfigDisk(path)).rejects.toThrowError(/bad magic/)
    const huge = Buffer.from(img.subarray(0, CONFIG_HEADER_SIZE + len))
    huge.writeUInt32LE(0xffffffff, 12)
    await writeFile(path, huge)
    await expect(readGuestConfigDisk(path)).rejects.toThrowError(/exceeds the image/)
  })
})

describe('the guest init parses what the host writes', () => {
  it('reads every field the way the encoder meant it', async () => {
    expect(await parseInGuestCode(encodeGuestConfig(full))).toBe(
      [
        'argv=/bin/sh',
        'argv=-c',
        'argv=echo "a b"; exit 3',
        'argv=',
        'env=PATH=/usr/bin:/bin',
        'env=FOO=bar=baz',
        'env=EMPTY=',
        'env=UNICODE=ü ✓',
        'workdir=/srv/app',
        'user=app:staff',
        'hostname=web-1',
        'rootfs_fstype=erofs',
        'skip_agent=1',
        'stop_grace_ms=2500',
        '',
      ].join('\n'),
    )
  })

  it('applies the same defaults as the TypeScript decoder', async () => {
    expect(await parseInGuestCode(encodeGuestConfig({ argv: ['true'], env: {} }))).toBe(
      'argv=true\nworkdir=/\nuser=\nhostname=hypeman\nrootfs_fstype=ext4\nskip_agent=0\nstop_grace_ms=10000\n',
    )
  })

  it('skips keys it does not know, so optional keys can be added later', async () => {
    const img = packConfigImage(encodeTlv([['argv', 'true'], ['future_option', 'x']]))
    expect(await parseInGuestCode(img)).toContain('argv=true\n')
  })

  it.each<[string, Buffer, RegExp]>([
    ['a feature it lacks (requires)', packConfigImage(encodeTlv([['argv', 'true'], ['requires', 'devices']])), /requires feature "devices"/],
    ['a checksum mismatch', (() => {
      const img = encodeGuestConfig({ argv: ['true'], env: {} })
      img[CONFIG_HEADER_SIZE]! ^= 1
      return img
    })(), /checksum mismatch/],
    ['a truncated record', packConfigImage(encodeTlv([['argv', 'true']]).subarray(0, 8)), /truncated record/],
    ['no program', packConfigImage(encodeTlv([['workdir', '/']])), /argv is empty/],
    ['a NUL inside a string', packConfigImage(encodeTlv([['argv', Buffer.from('a\0b')]])), /bad value for key argv/],
    ['an env entry without =', packConfigImage(encodeTlv([['argv', 'true'], ['env', 'NOVALUE']])), /NAME=value/],
    ['an unknown rootfs type', packConfigImage(encodeTlv([['argv', 'true'], ['rootfs_fstype', 'xfs']])), /ext4 or erofs/],
    ['another format version', (() => {
      const img = encodeGuestConfig({ argv: ['true'], env: {} })
      img.writeUInt32LE(2, 8)
      return img
    })(), /format version 2/],
  ])('refuses %s', async (_name, img, message) => {
    await expect(parseInGuestCode(img)).rejects.toThrowError(message)
  })
})

const network = { mac: '52:54:00:12:34:56', address: '10.77.0.2', prefixLength: 24, gateway: '10.77.0.1', dns: ['10.77.0.1', '192.0.2.53'], mtu: 1400 }

describe('network and egress in the config disk', () => {
  const base: GuestConfig = { argv: ['true'], env: {} }

  it('encodes the network with a requires record and decodes it back (MAC lowercased)', () => {
    const img = encodeGuestConfig({ ...base, network: { ...network, mac: '52:54:00:AB:CD:EF' } })
    const back = decodeGuestConfig(img)
    expect(back.network).toEqual({ ...network, mac: '52:54:00:ab:cd:ef' })
    expect(back.requires).toEqual(['network'])
    expect(back.egress).toBeUndefined()
    const { mtu: _mtu, ...noMtu } = network
    expect(decodeGuestConfig(encodeGuestConfig({ ...base, network: { ...noMtu, dns: [] } })).network).toEqual({ ...noMtu, dns: [] })
  })

  it('encodes egress (CA + proxy variables) with a requires record and decodes it back', () => {
    const proxyEnv = { HTTP_PROXY: 'http://10.77.0.1:3128', https_proxy: 'http://10.77.0.1:3128', NO_PROXY: 'localhost,127.0.0.1' }
    const back = decodeGuestConfig(encodeGuestConfig({ ...base, network, egress: { caBundlePem: ca.pem + ca2.pem, proxyEnv } }))
    expect(back.requires).toEqual(['network', 'egress'])
    expect(back.egress).toEqual({ caBundlePem: `${ca.pem.trim()}\n${ca2.pem.trim()}\n`, proxyEnv })
    // Text around the blocks (comments, CRLF line ends) does not travel; the certificates do.
    const messy = `# our proxy CA\r\n${ca.pem.replaceAll('\n', '\r\n')}trailing words\n`
    expect(decodeGuestConfig(encodeGuestConfig({ ...base, egress: { caBundlePem: messy } })).egress).toEqual({ caBundlePem: ca.pem })
  })

  it.each<[string, Partial<GuestConfig['network']> | 'none', string, RegExp]>([
    ['a MAC with dashes', { mac: '52-54-00-12-34-56' }, 'network.mac', /aa:bb:cc/],
    ['a multicast MAC', { mac: '01:00:5e:00:00:01' }, 'network.mac', /multicast/],
    ['an all-zero MAC', { mac: '00:00:00:00:00:00' }, 'network.mac', /zeros/],
    ['an IPv6 address', { address: 'fd00::2' }, 'network.address', /IPv4/],
    ['an address with leading zeros', { address: '10.77.0.02' }, 'network.address', /IPv4/],
    ['a loopback address', { address: '127.0.0.2' }, 'network.address', /loopback/],
    ['the network address', { address: '10.77.0.0' }, 'network.address', /network address/],
    ['the broadcast address', { address: '10.77.0.255' }, 'network.address', /broadcast/],
    ['a prefix of 0', { prefixLength: 0 }, 'network.prefixLength', /1 to 32/],
    ['a prefix of 33', { prefixLength: 33 }, 'network.prefixLength', /1 to 32/],
    ['a fractional prefix', { prefixLength: 24.5 }, 'network.prefixLength', /integer/],
    ['a multicast gateway', { gateway: '224.0.0.1' }, 'network.gateway', /multicast/],
    ['the gateway as own address', { gateway: '10.77.0.2' }, 'network.gateway', /own address/],
    ['a hostname as DNS server', { dns: ['10.77.0.1', 'dns.example'] }, 'network.dns[1]', /IPv4/],
    ['DNS not a list', { dns: '10.77.0.1' as never }, 'network.dns', /list/],
    ['too many DNS servers', { dns: Array.from({ length: 17 }, (_, i) => `10.0.0.${i + 1}`) }, 'network.dns', /at most 16/],
    ['an MTU below 68', { mtu: 67 }, 'network.mtu', /68 to 65535/],
    ['an MTU above 65535', { mtu: 65536 }, 'network.mtu', /68 to 65535/],
  ])('rejects %s, naming the field', (_name, patch, field, message) => {
    const bad = { ...network, ...(patch as object) } as GuestConfig['network']
    expect(() => encodeGuestConfig({ ...base, network: bad })).toThrowError(expect.objectContaining({ code: 'invalid_input', field, message: expect.stringMatching(message) }))
  })

  it('accepts a /32 address with a gateway outside it (an on-link route) and a /31', () => {
    expect(decodeGuestConfig(encodeGuestConfig({ ...base, network: { ...network, address: '10.0.0.5', prefixLength: 32, gateway: '10.0.0.1' } })).network?.prefixLength).toBe(32)
    expect(decodeGuestConfig(encodeGuestConfig({ ...base, network: { ...network, address: '10.0.0.0', prefixLength: 31, gateway: '10.0.0.1' } })).network?.address).toBe('10.0.0.0')
  })

  it('rejects CA bundles that are not CA certificates, naming the field', async () => {
    const key = await readFile(join(dir, 'hm-test-ca.key'), 'utf8')
    const cases: [string, unknown, string, RegExp][] = [
      ['an empty bundle', '', 'egress.caBundlePem', /non-empty/],
      ['text without PEM', 'hello', 'egress.caBundlePem', /no "-----BEGIN CERTIFICATE-----"/],
      ['the CA with its private key', ca.pem + key, 'egress.caBundlePem', /block 2 is a private key/],
      ['a truncated block', ca.pem.slice(0, 200), 'egress.caBundlePem', /without its END/],
      ['a block that does not parse', '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n', 'egress.caBundlePem', /certificate 1 does not parse/],
      ['a certificate that is not a CA', leafPem, 'egress.caBundlePem', /not a CA certificate/],
      ['a NUL byte', `${ca.pem}\0`, 'egress.caBundlePem', /NUL/],
    ]
    for (const [name, caBundlePem, field, message] of cases) {
      expect(() => encodeGuestConfig({ ...base, egress: { caBundlePem: caBundlePem as string } }), name).toThrowError(expect.objectContaining({ code: 'invalid_input', field, message: expect.stringMatching(message) }))
    }
  })

  it('rejects proxy variables that are not proxy variables, naming them', () => {
    expect(() => encodeGuestConfig({ ...base, egress: { caBundlePem: ca.pem, proxyEnv: { HTTPS_PROXI: 'x' } } })).toThrowError(expect.objectContaining({ field: 'egress.proxyEnv.HTTPS_PROXI' }))
    expect(() => encodeGuestConfig({ ...base, egress: { caBundlePem: ca.pem, proxyEnv: { http_proxy: 'a\0b' } } })).toThrowError(expect.objectContaining({ field: 'egress.proxyEnv.http_proxy' }))
  })

  it('is parsed by the guest init field for field', async () => {
    const img = encodeGuestConfig({ ...base, network: { ...network, mac: '52:54:00:AB:CD:EF' }, egress: { caBundlePem: ca.pem, proxyEnv: { HTTPS_PROXY: 'http://10.77.0.1:3128' } } })
    const out = await parseInGuestCode(img)
    expect(out).toContain(['net.mac=52:54:00:ab:cd:ef', 'net.address=10.77.0.2/24', 'net.gateway=10.77.0.1', 'net.mtu=1400', 'net.dns=10.77.0.1', 'net.dns=192.0.2.53', `ca_bundle.bytes=${Buffer.byteLength(ca.pem)}`, 'egress.env=HTTPS_PROXY=http://10.77.0.1:3128', ''].join('\n'))
  })

  const rec = (...extra: [string, string][]) => packConfigImage(encodeTlv([['argv', 'true'], ...extra]))
  const net = (patch: Record<string, string | undefined>) => {
    const all: Record<string, string | undefined> = { 'net.mac': '52:54:00:12:34:56', 'net.address': '10.0.0.2', 'net.prefix_length': '24', 'net.gateway': '10.0.0.1', ...patch }
    return Object.entries(all).filter((e): e is [string, string] => e[1] !== undefined)
  }
  it.each<[string, Buffer, RegExp]>([
    ['a network without a gateway', rec(...net({ 'net.gateway': undefined })), /network config without net.gateway/],
    ['a network without a MAC', rec(...net({ 'net.mac': undefined })), /without net.mac/],
    ['a multicast MAC', rec(...net({ 'net.mac': '01:00:5e:00:00:01' })), /bad value for key net.mac/],
    ['an address that is not IPv4', rec(...net({ 'net.address': '10.0.0' })), /bad value for key net.address/],
    ['a prefix of 33', rec(...net({ 'net.prefix_length': '33' })), /bad value for key net.prefix_length/],
    ['an MTU of 50', rec(...net({ 'net.mtu': '50' })), /bad value for key net.mtu/],
    ['a DNS server that is a name', rec(...net({}), ['net.dns', 'dns.example']), /bad value for key net.dns/],
    ['the gateway as own address', rec(...net({ 'net.gateway': '10.0.0.2' })), /gateway is the guest's own address/],
    ['a CA bundle without certificates', rec(['ca_bundle', 'nothing here']), /bad value for key ca_bundle/],
    ['a CA bundle with a private key', rec(['ca_bundle', '-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\n']), /bad value for key ca_bundle/],
    ['proxy variables without a CA', rec(['egress.env', 'HTTP_PROXY=x']), /egress config without ca_bundle/],
    ['a feature it does not know', rec(['requires', 'devices']), /requires feature "devices"/],
  ])('the guest init refuses %s', async (_name, img, message) => {
    await expect(parseInGuestCode(img)).rejects.toThrowError(message)
  })
})

describe('volumes in the config disk', () => {
  const base: GuestConfig = { argv: ['/bin/true'], env: {} }
  const volumes: GuestConfig['volumes'] = [
    { serial: 'hm-vol-0', mountPath: '/data', mode: 'rw' },
    { serial: 'hm-vol-1', mountPath: '/srv/my share', mode: 'ro' },
    { serial: 'hm-vol-2', mountPath: '/cache', mode: 'overlay', overlaySerial: 'hm-volov-2' },
  ]

  it('round-trips, announces the feature, and the init reads the same mounts', async () => {
    const img = encodeGuestConfig({ ...base, volumes })
    const back = decodeGuestConfig(img)
    expect(back.volumes).toEqual(volumes)
    expect(back.requires).toEqual(['volumes'])
    const out = await parseInGuestCode(img)
    expect(out).toContain('volume=hm-vol-0 rw /data\n')
    expect(out).toContain('volume=hm-vol-1 ro /srv/my share\n')
    expect(out).toContain('volume=hm-vol-2 overlay=hm-volov-2 /cache\n')
    expect(decodeGuestConfig(encodeGuestConfig(base)).volumes).toBeUndefined()
    expect(out).not.toContain('volume.scsi')
  })

  it('marks the volumes on the SCSI bus (hot-plugged ones), so the init loads that driver before it looks for them', async () => {
    const hot: GuestConfig['volumes'] = [
      { serial: 'hm-vol-0', mountPath: '/data', mode: 'rw' },
      { serial: 'hm-hvol-3', mountPath: '/hot', mode: 'overlay', overlaySerial: 'hm-hvolov-3', bus: 'scsi' },
    ]
    const img = encodeGuestConfig({ ...base, volumes: hot })
    expect(decodeGuestConfig(img).volumes).toEqual(hot)
    const out = await parseInGuestCode(img)
    expect(out).toContain('volume=hm-hvol-3 overlay=hm-hvolov-3 /hot\n')
    expect(out).toContain('volume.scsi=1\n')
  })

  it('the init refuses malformed volume records', async () => {
    for (const [value, msg] of [
      ['hm-vol-0 rw', 'must be'],
      ['hm-vol-0 rx /data', 'mode must be'],
      ['hm-vol-0 rw data', 'must be absolute'],
      ['hm-vol-0 rw /', 'must be absolute'],
      ['hm-vol-0 rw /a/../etc', 'must be absolute'],
      ['hm-vol-0 rw /a/', 'must be absolute'],
      ['bad/serial rw /a', 'serials'],
      ['hm-vol-0 overlay= /a', 'serials'],
    ] as const) {
      const path = join(dir, `vol-${Math.random().toString(36).slice(2)}`)
      await writeFile(path, packConfigImage(encodeTlv([['argv', '/bin/true'], ['requires', 'volumes'], ['volume', value]])))
      await expect(run(init, ['parse-config', path]), value).rejects.toThrow(msg)
    }
  })

  it('the host refuses what the init would', () => {
    expect(() => encodeGuestConfig({ ...base, volumes: [{ serial: 'hm-vol-0', mountPath: 'data', mode: 'rw' }] })).toThrow(/volumes\[0\]\.mountPath/)
    expect(() => encodeGuestConfig({ ...base, volumes: [{ serial: 'hm-vol-0', mountPath: '/d', mode: 'overlay' }] })).toThrow(/overlaySerial/)
  })
})

describe('kernel headers in the config disk', () => {
  const base: GuestConfig = { argv: ['/bin/true'], env: {} }

  it('round-trips with a requires record, and the init reads the same serial', async () => {
    const img = encodeGuestConfig({ ...base, kernelHeadersSerial: 'hm-headers' })
    const back = decodeGuestConfig(img)
    expect(back.kernelHeadersSerial).toBe('hm-headers')
    expect(back.requires).toEqual(['kernel_headers'])
    expect(await parseInGuestCode(img)).toContain('kernel_headers=hm-headers\n')
    expect(decodeGuestConfig(encodeGuestConfig(base)).kernelHeadersSerial).toBeUndefined()
    expect(await parseInGuestCode(encodeGuestConfig(base))).not.toContain('kernel_headers=')
  })

  it('the init and the host refuse a serial that is not one', async () => {
    const path = join(dir, 'headers-bad-serial')
    await writeFile(path, packConfigImage(encodeTlv([['argv', '/bin/true'], ['requires', 'kernel_headers'], ['kernel_headers', 'bad/serial']])))
    await expect(run(init, ['parse-config', path])).rejects.toThrow('bad value for key kernel_headers')
    expect(() => encodeGuestConfig({ ...base, kernelHeadersSerial: 'bad/serial' })).toThrow(/kernelHeadersSerial/)
  })
})
