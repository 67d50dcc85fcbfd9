/**
 * The init's CA installation and proxy variables (guest/src/egress.c), run by the real init binary
 * under chroot in made-up roots laid out like each distro's trust store, as the guest runs it in
 * its switched root. The boot-time path is checked in a real VM in network.test.ts.
 */
import { chmod, chown, copyFile, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { encodeGuestConfig, type GuestConfig } from '../../src/guest/config-disk.js'
import { guestInitBinary } from './helpers.js'
import { makeCa, type TestCa } from './pki.js'

const BEGIN = '# hypeman egress CA (begin): added at boot by hypeman-init, replaced on every boot\n'
const END = '# hypeman egress CA (end)\n'
const DROPIN = 'usr/local/share/ca-certificates/hypeman-egress.crt'

let dir: string
let init: string
let ca: TestCa
let ca2: TestCa
let other: TestCa
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-egress-'))
  init = await guestInitBinary()
  ca = await makeCa(dir, 'hm-egress-ca')
  ca2 = await makeCa(dir, 'hm-egress-ca-rotated')
  other = await makeCa(dir, 'some-public-root')
})
afterAll(() => rm(dir, { recursive: true, force: true }))

let n = 0
async function newRoot(files: Record<string, string | { link: string } | { dir: true }>): Promise<string> {
  const root = join(dir, `root-${n++}`)
  await mkdir(root)
  await copyFile(init, join(root, 'hypeman-init'))
  for (const [path, what] of Object.entries(files)) {
    const full = join(root, path)
    await mkdir(join(full, '..'), { recursive: true })
    if (typeof what === 'string') await writeFile(full, what)
    else if ('link' in what) await symlink(what.link, full)
    else await mkdir(full, { recursive: true })
  }
  return root
}

/** Runs the init's egress step in `root`; returns the environment it ends with. */
async function applyEgress(root: string, config: Partial<GuestConfig> & { egress: GuestConfig['egress'] }): Promise<Record<string, string>> {
  await writeFile(join(root, 'config.img'), encodeGuestConfig({ argv: ['true'], env: {}, ...config }))
  const { stdout } = await run('chroot', [root, '/hypeman-init', 'apply-egress', '/config.img'])
  return Object.fromEntries(stdout.trim().split('\n').filter(Boolean).map((l) => {
    const kv = l.slice('env='.length)
    return [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]
  }))
}

const block = (c: TestCa) => `${BEGIN}${c.pem}${END}`

describe('installing the egress CA', () => {
  it('Debian/Ubuntu: appends to the system bundle, drops the .crt for update-ca-certificates, sets the variables', async () => {
    const root = await newRoot({ 'etc/ssl/certs/ca-certificates.crt': other.pem })
    await chown(join(root, 'etc/ssl/certs/ca-certificates.crt'), 0, 0)
    await chmod(join(root, 'etc/ssl/certs/ca-certificates.crt'), 0o644)
    const env = await applyEgress(root, { env: { PATH: '/bin' }, egress: { caBundlePem: ca.pem } })
    expect(await readFile(join(root, 'etc/ssl/certs/ca-certificates.crt'), 'utf8')).toBe(other.pem + block(ca))
    expect(await readFile(join(root, DROPIN), 'utf8')).toBe(ca.pem)
    expect(env).toEqual({
      PATH: '/bin',
      SSL_CERT_FILE: '/etc/ssl/certs/ca-certificates.crt',
      REQUESTS_CA_BUNDLE: '/etc/ssl/certs/ca-certificates.crt',
      CURL_CA_BUNDLE: '/etc/ssl/certs/ca-certificates.crt',
      GIT_SSL_CAINFO: '/etc/ssl/certs/ca-certificates.crt',
      AWS_CA_BUNDLE: '/etc/ssl/certs/ca-certificates.crt',
      NODE_EXTRA_CA_CERTS: `/${DROPIN}`,
    })
    expect((await stat(join(root, 'etc/ssl/certs/ca-certificates.crt'))).mode & 0o7777).toBe(0o644)
    // OpenSSL itself, pointed at the result, reads both roots.
    const { stdout } = await run('openssl', ['storeutl', '-noout', '-certs', join(root, 'etc/ssl/certs/ca-certificates.crt')])
    expect(stdout).toMatch(/Total found: 2/)
  })

  it('Alpine: one bundle reached through /etc/ssl/cert.pem too is updated once', async () => {
    const root = await newRoot({ 'etc/ssl/certs/ca-certificates.crt': other.pem, 'etc/ssl/cert.pem': { link: 'certs/ca-certificates.crt' } })
    await applyEgress(root, { egress: { caBundlePem: ca.pem } })
    expect(await readFile(join(root, 'etc/ssl/cert.pem'), 'utf8')).toBe(other.pem + block(ca))
  })

  it('RHEL/Fedora: follows the absolute link to the extracted bundle, fills the anchors dir, points the variables at ca-bundle.crt', async () => {
    const extracted = 'etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem'
    const root = await newRoot({
      [extracted]: `# ${other.name}\n${other.pem}`,
      'etc/pki/tls/certs/ca-bundle.crt': { link: `/${extracted}` },
      'etc/pki/tls/cert.pem': { link: `/${extracted}` },
      'etc/ssl/certs': { link: '/etc/pki/tls/certs' },
      'etc/pki/ca-trust/source/anchors': { dir: true },
    })
    await chmod(join(root, extracted), 0o444)
    const env = await applyEgress(root, { egress: { caBundlePem: ca.pem } })
    expect(await readFile(join(root, extracted), 'utf8')).toBe(`# ${other.name}\n${other.pem}${block(ca)}`)
    expect((await stat(join(root, extracted))).mode & 0o7777).toBe(0o444)
    expect(await readFile(join(root, 'etc/pki/ca-trust/source/anchors/hypeman-egress.crt'), 'utf8')).toBe(ca.pem)
    expect(env.SSL_CERT_FILE).toBe('/etc/pki/tls/certs/ca-bundle.crt')
  })

  it('an image without a trust store (busybox, scratch) gets one holding the CA at the Debian path', async () => {
    const root = await newRoot({})
    const env = await applyEgress(root, { egress: { caBundlePem: ca.pem } })
    expect(await readFile(join(root, 'etc/ssl/certs/ca-certificates.crt'), 'utf8')).toBe(block(ca))
    expect(env.SSL_CERT_FILE).toBe('/etc/ssl/certs/ca-certificates.crt')
  })

  it('is idempotent across boots (nothing rewritten) and replaces the block when the CA changes', async () => {
    const root = await newRoot({ 'etc/ssl/certs/ca-certificates.crt': other.pem.trimEnd() })
    const bundle = join(root, 'etc/ssl/certs/ca-certificates.crt')
    await applyEgress(root, { egress: { caBundlePem: ca.pem } })
    const first = await stat(bundle)
    await applyEgress(root, { egress: { caBundlePem: ca.pem } })
    const second = await stat(bundle)
    expect([second.ino, second.mtimeMs]).toEqual([first.ino, first.mtimeMs])
    expect(await readFile(bundle, 'utf8')).toBe(`${other.pem}${block(ca)}`)
    await applyEgress(root, { egress: { caBundlePem: ca2.pem } })
    expect(await readFile(bundle, 'utf8')).toBe(`${other.pem}${block(ca2)}`)
    expect(await readFile(join(root, DROPIN), 'utf8')).toBe(ca2.pem)
  })

  it("keeps the variables the program's environment already has, and defaults the proxy ones", async () => {
    const root = await newRoot({ 'etc/ssl/certs/ca-certificates.crt': other.pem })
    const env = await applyEgress(root, {
      env: { NODE_EXTRA_CA_CERTS: '/app/my-ca.pem', HTTP_PROXY: 'http://mine:1' },
      egress: { caBundlePem: ca.pem, proxyEnv: { HTTP_PROXY: 'http://10.0.0.1:3128', http_proxy: 'http://10.0.0.1:3128', NO_PROXY: 'localhost' } },
    })
    expect(env).toMatchObject({ NODE_EXTRA_CA_CERTS: '/app/my-ca.pem', HTTP_PROXY: 'http://mine:1', http_proxy: 'http://10.0.0.1:3128', NO_PROXY: 'localhost', SSL_CERT_FILE: '/etc/ssl/certs/ca-certificates.crt' })
  })

  it('fails clearly when the bundle cannot be replaced, leaving it as it was', async () => {
    // A directory where the init writes its temporary copy stands for a store it cannot write.
    const root = await newRoot({ 'etc/ssl/certs/ca-certificates.crt': other.pem, 'etc/ssl/certs/ca-certificates.crt.hypeman-tmp': { dir: true } })
    await writeFile(join(root, 'config.img'), encodeGuestConfig({ argv: ['true'], env: {}, egress: { caBundlePem: ca.pem } }))
    await expect(run('chroot', [root, '/hypeman-init', 'apply-egress', '/config.img'])).rejects.toThrowError(/update \/etc\/ssl\/certs\/ca-certificates.crt: Is a directory/)
    expect(await readFile(join(root, 'etc/ssl/certs/ca-certificates.crt'), 'utf8')).toBe(other.pem)
  })
})
