import { X509Certificate } from 'node:crypto'
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { LeafIssuer, openCaState } from '../src/ca.js'
import { captureLogger } from './support/harness.js'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-egress-ca-'))
})
afterAll(() => rm(dir, { recursive: true, force: true }))

const MINUTE = 60_000

async function opensslVerify(caPath: string, leafPem: string, name: string): Promise<string> {
  const leafPath = join(dir, `${name}.pem`)
  await writeFile(leafPath, leafPem)
  const r = await run('openssl', ['verify', '-x509_strict', '-purpose', 'sslserver', '-CAfile', caPath, leafPath])
  return r.stdout.trim()
}

describe('CA state', () => {
  it('is created once, with private files at 0600, and reused', async () => {
    const stateDir = join(dir, 'state')
    const [a, b] = await Promise.all([openCaState(stateDir), openCaState(stateDir)])
    expect(a.certPem).toBe(b.certPem)
    expect((await stat(join(stateDir, 'ca.key'))).mode & 0o777).toBe(0o600)
    expect((await stat(join(stateDir, 'placeholder.key'))).mode & 0o777).toBe(0o600)
    const again = await openCaState(stateDir)
    expect(again.certPem).toBe(a.certPem)
    expect(again.placeholderKey.equals(a.placeholderKey)).toBe(true)
    const cert = new X509Certificate(a.certPem)
    expect(cert.ca).toBe(true)
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1')
    expect(Date.parse(cert.validTo) - Date.now()).toBeGreaterThan(3000 * 24 * 60 * MINUTE)
    const text = (await run('openssl', ['x509', '-in', a.certPath, '-noout', '-text'])).stdout
    expect(text).toMatch(/Basic Constraints: critical\s+CA:TRUE/)
    expect(text).toMatch(/Key Usage: critical\s+Digital Signature, Certificate Sign, CRL Sign/)
  })

  it('tightens a secret file that others can read, and says so', async () => {
    const stateDir = join(dir, 'loose')
    await openCaState(stateDir)
    await chmod(join(stateDir, 'ca.key'), 0o644)
    const log = captureLogger()
    await openCaState(stateDir, log.logger)
    expect((await stat(join(stateDir, 'ca.key'))).mode & 0o777).toBe(0o600)
    expect(log.lines.some((l) => l.startsWith('warn') && l.includes('ca.key'))).toBe(true)
  })

  it('refuses a certificate without its key, and a key that is not the certificate’s', async () => {
    const orphan = join(dir, 'orphan')
    await openCaState(orphan)
    await rm(join(orphan, 'ca.key'))
    await expect(openCaState(orphan)).rejects.toMatchObject({ code: 'ca_invalid', field: 'ca_dir' })
    const mixed = join(dir, 'mixed')
    const other = join(dir, 'other')
    await openCaState(mixed)
    await openCaState(other)
    await writeFile(join(mixed, 'ca.key'), await readFile(join(other, 'ca.key')), { mode: 0o600 })
    await expect(openCaState(mixed)).rejects.toMatchObject({ code: 'ca_invalid', message: expect.stringContaining('is not the key of') })
  })
})

describe('leaf certificates', () => {
  it('verify with openssl for names, IPv4 and IPv6 literals and long names', async () => {
    const ca = await openCaState(join(dir, 'leaves'))
    const issuer = new LeafIssuer(ca, { validityMs: 7 * 24 * 60 * MINUTE, renewBeforeMs: 24 * 60 * MINUTE })
    const long = `${'a'.repeat(63)}.${'b'.repeat(63)}.example.com`
    for (const host of ['api.example.com', '127.0.0.1', '2001:db8::1', long]) {
      expect(await opensslVerify(ca.certPath, issuer.certificateFor(host), host.replace(/[:.]/g, '_'))).toMatch(/: OK$/)
      const cert = new X509Certificate(issuer.certificateFor(host))
      expect(cert.checkHost(host) ?? cert.checkIP(host)).toBeTruthy()
      expect(cert.verify(new X509Certificate(ca.certPem).publicKey)).toBe(true)
    }
    const ip = new X509Certificate(issuer.certificateFor('127.0.0.1'))
    expect(ip.subjectAltName).toBe('IP Address:127.0.0.1')
    expect(new X509Certificate(issuer.certificateFor(long)).subject).not.toContain('CN=')
  })

  it('have positive serial numbers without a leading zero byte', async () => {
    const ca = await openCaState(join(dir, 'serials'))
    const issuer = new LeafIssuer(ca, { validityMs: 10 * MINUTE, renewBeforeMs: MINUTE })
    for (let i = 0; i < 200; i++) {
      const serial = new X509Certificate(issuer.certificateFor(`h${i}.example`)).serialNumber
      expect(serial).toHaveLength(32)
      expect(Number.parseInt(serial.slice(0, 2), 16)).toBeGreaterThan(0)
      expect(Number.parseInt(serial.slice(0, 2), 16)).toBeLessThan(0x80)
    }
  })

  it('are cached, renewed before they expire, and never served expired', async () => {
    const ca = await openCaState(join(dir, 'renew'))
    let now = Date.now()
    const issuer = new LeafIssuer(ca, { validityMs: 10 * MINUTE, renewBeforeMs: 2 * MINUTE, now: () => now })
    const first = issuer.certificateFor('api.example.com')
    expect(issuer.certificateFor('api.example.com')).toBe(first)
    for (let step = 0; step < 40; step++) {
      now += MINUTE / 2
      const served = new X509Certificate(issuer.certificateFor('api.example.com'))
      expect(Date.parse(served.validTo)).toBeGreaterThan(now + 2 * MINUTE - 1000)
    }
    expect(issuer.certificateFor('api.example.com')).not.toBe(first)
    expect(issuer.issued).toBeGreaterThanOrEqual(3)
  })

  it('never outlive the CA', async () => {
    const ca = await openCaState(join(dir, 'cap'))
    const issuer = new LeafIssuer({ ...ca, notAfter: Date.now() + 5 * MINUTE }, { validityMs: 60 * MINUTE, renewBeforeMs: MINUTE })
    expect(Date.parse(new X509Certificate(issuer.certificateFor('x.example')).validTo)).toBeLessThanOrEqual(Date.now() + 5 * MINUTE)
  })
})
