/**
 * The proxy's certificate authority and state directory.
 *
 *   <dir>/ca.pem           the CA certificate: give it to clients (guests) to trust
 *   <dir>/ca.key           its private key, mode 0600
 *   <dir>/placeholder.key  the HMAC key placeholders derive from, mode 0600
 *
 * Created once (under a lock, so two processes starting together agree) and reused, so guests
 * keep trusting the same CA and seeing the same placeholders across restarts. Leaf certificates
 * are issued on demand per destination host, all with one EC P-256 key made at start-up, and
 * cached until shortly before they expire.
 */
import { X509Certificate, constants, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto'
import { chmod, mkdir, readFile, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { createSecureContext, type SecureContext } from 'node:tls'
import { type Logger, pathExists, silentLogger, withFileLock, writeFileAtomic } from '@hypeman-ts/common'
import type forge from 'node-forge'
import { EgressError } from './errors.js'
import { issueCertificate, keyIdentifier, randomSerial, subjectName, toPem } from './x509.js'

const DAY = 86_400_000
const CA_VALIDITY = 3650 * DAY
/** Guests restored from standby may run behind; a leaf valid from two days ago still verifies there. */
const BACKDATE = 2 * DAY
const CN_MAX = 64
/** TLS settings of every context shown to clients. */
const LEAF_TLS = { minVersion: 'TLSv1.2' } as const

export interface CaState {
  dir: string
  certPath: string
  keyPath: string
  certPem: string
  certDer: Buffer
  key: KeyObject
  notAfter: number
  placeholderKey: Buffer
}

function ecKeyPair(): { publicKey: KeyObject; privateKey: KeyObject } {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
}

async function createCa(certPath: string, keyPath: string): Promise<void> {
  const { publicKey, privateKey } = ecKeyPair()
  const now = Date.now()
  const spki = publicKey.export({ type: 'spki', format: 'der' })
  const certDer = issueCertificate(
    {
      serial: randomSerial(randomBytes),
      commonName: `hypeman-ts egress proxy CA ${randomBytes(4).toString('hex')}`,
      organization: 'hypeman-ts',
      notBefore: new Date(now - BACKDATE),
      notAfter: new Date(now + CA_VALIDITY),
      spki,
      ca: true,
    },
    privateKey,
  )
  // The key first: a ca.pem on disk always has its key next to it.
  await writeFileAtomic(keyPath, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 0o600)
  await writeFileAtomic(certPath, toPem(certDer), 0o644)
}

/** Opens the state directory, creating the CA and the placeholder key if they are absent. */
export async function openCaState(dirInput: string, logger: Logger = silentLogger): Promise<CaState> {
  const dir = resolve(dirInput)
  const certPath = join(dir, 'ca.pem')
  const keyPath = join(dir, 'ca.key')
  const placeholderPath = join(dir, 'placeholder.key')
  await mkdir(dir, { recursive: true, mode: 0o700 })
  await withFileLock(join(dir, '.lock'), async () => {
    const [hasCert, hasKey] = await Promise.all([pathExists(certPath), pathExists(keyPath)])
    if (hasCert && !hasKey) {
      throw new EgressError('ca_invalid', `${certPath} exists but ${keyPath} does not; restore the key or remove both to create a new CA`, { field: 'ca_dir' })
    }
    if (!hasCert) {
      await createCa(certPath, keyPath)
      logger.info('created a new CA', { certPath })
    }
    if (!(await pathExists(placeholderPath))) await writeFileAtomic(placeholderPath, `${randomBytes(32).toString('hex')}\n`, 0o600)
  })
  for (const secretFile of [keyPath, placeholderPath]) {
    const mode = (await stat(secretFile)).mode & 0o777
    if (mode & 0o077) {
      logger.warn('secret file was readable by others; restricting it to 0600', { path: secretFile, mode: mode.toString(8) })
      await chmod(secretFile, 0o600)
    }
  }
  const certPem = await readFile(certPath, 'utf8')
  let cert: X509Certificate
  let key: KeyObject
  try {
    cert = new X509Certificate(certPem)
    key = createPrivateKey(await readFile(keyPath))
  } catch (err) {
    throw new EgressError('ca_invalid', `cannot read the CA in ${dir}: ${(err as Error).message}`, { field: 'ca_dir', cause: err })
  }
  const certKey = cert.publicKey.export({ type: 'spki', format: 'der' })
  if (!certKey.equals(createPublicKey(key).export({ type: 'spki', format: 'der' }))) {
    throw new EgressError('ca_invalid', `${keyPath} is not the key of ${certPath}`, { field: 'ca_dir' })
  }
  if (!cert.ca) throw new EgressError('ca_invalid', `${certPath} is not a CA certificate`, { field: 'ca_dir' })
  const notAfter = Date.parse(cert.validTo)
  if (!(notAfter > Date.now() + DAY)) {
    throw new EgressError('ca_invalid', `the CA in ${certPath} expires ${cert.validTo}; remove ca.pem and ca.key to create a new one (clients must then trust the new ca.pem)`, { field: 'ca_dir' })
  }
  const hex = (await readFile(placeholderPath, 'utf8')).trim()
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new EgressError('ca_invalid', `${placeholderPath} is not 64 hex digits`, { field: 'ca_dir' })
  return { dir, certPath, keyPath, certPem, certDer: cert.raw, key, notAfter, placeholderKey: Buffer.from(hex, 'hex') }
}

export interface LeafOptions {
  /** How long a leaf certificate is valid (ms). */
  validityMs: number
  /** A cached leaf is replaced when it has less than this left (ms). */
  renewBeforeMs: number
  maxCached?: number
  now?: () => number
}

interface Leaf {
  context: SecureContext
  pem: string
  renewAt: number
  notAfter: number
}

/** Issues and caches one TLS context per destination host. */
export class LeafIssuer {
  private readonly key = ecKeyPair()
  private readonly keyPem: string
  private readonly spki: Buffer
  private readonly issuerName: forge.asn1.Asn1
  private readonly issuerKeyId: Buffer
  private readonly cache = new Map<string, Leaf>()
  private readonly now: () => number
  private readonly max: number
  issued = 0
  /**
   * What a transparent connection starts its handshake with, before its SNI picks the leaf.
   * One for all: a TLSSocket given no context builds its own, an OpenSSL context per
   * connection that was a tenth to a sixth of the proxy's CPU per handshake. The protocol settings are
   * the leaves' (the SNI switch replaces the certificate, not the versions a hello is held to).
   *
   * No session resumption through it. Tickets are sealed and opened with the keys of this
   * first context, so a shared one would let a guest resume, and a resumed handshake skips
   * the SNI callback, which is what sets a transparent connection's destination: the request
   * would then be routed as plain HTTP by its Host header (a test holds this). A context per
   * connection had no resumption either, its keys dying with it.
   */
  readonly sniContext: SecureContext = createSecureContext({ ...LEAF_TLS, secureOptions: constants.SSL_OP_NO_TICKET })

  constructor(
    private readonly ca: Pick<CaState, 'certPem' | 'certDer' | 'key' | 'notAfter'>,
    private readonly opts: LeafOptions,
  ) {
    if (!(opts.validityMs > opts.renewBeforeMs)) throw new Error('leaf validity must be longer than the renewal margin')
    this.keyPem = this.key.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string
    this.spki = this.key.publicKey.export({ type: 'spki', format: 'der' })
    this.issuerName = subjectName(ca.certDer)
    this.issuerKeyId = keyIdentifier(createPublicKey(ca.key).export({ type: 'spki', format: 'der' }))
    this.now = opts.now ?? Date.now
    this.max = opts.maxCached ?? 10_000
  }

  /** The TLS context presenting a certificate for `host` (a canonical host name or IP literal). */
  contextFor(host: string): SecureContext {
    return this.leafFor(host).context
  }

  /** The certificate (PEM) currently served for `host`. */
  certificateFor(host: string): string {
    return this.leafFor(host).pem
  }

  private leafFor(host: string): Leaf {
    const now = this.now()
    const hit = this.cache.get(host)
    if (hit && hit.renewAt > now && hit.notAfter > now) return hit
    const notAfter = Math.min(now + this.opts.validityMs, this.ca.notAfter)
    const der = issueCertificate(
      {
        serial: randomSerial(randomBytes),
        ...(host.length <= CN_MAX ? { commonName: host } : {}),
        organization: 'hypeman-ts egress proxy',
        issuerName: this.issuerName,
        notBefore: new Date(now - BACKDATE),
        notAfter: new Date(notAfter),
        spki: this.spki,
        ca: false,
        altNames: [host],
        authorityKeyId: this.issuerKeyId,
      },
      this.ca.key,
    )
    const pem = toPem(der)
    const leaf: Leaf = {
      // The leaf alone: clients have the CA as their trust anchor, and sending it too only
      // adds bytes to every handshake (RFC 8446 §4.4.2 lets the root be omitted).
      context: createSecureContext({ ...LEAF_TLS, key: this.keyPem, cert: pem }),
      pem,
      renewAt: notAfter - this.opts.renewBeforeMs,
      notAfter,
    }
    this.issued++
    this.cache.delete(host)
    if (this.cache.size >= this.max) this.cache.delete(this.cache.keys().next().value as string)
    this.cache.set(host, leaf)
    return leaf
  }
}
