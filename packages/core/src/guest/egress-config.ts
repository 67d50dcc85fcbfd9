/**
 * Mediated egress in the config disk: the proxy CA the guest must trust and the proxy variables
 * the host chose. The init installs the CA into the image's trust stores and sets the variables
 * where the environment has none (guest/README.md, "Mediated egress").
 */
import { X509Certificate } from 'node:crypto'
import { ValidationError, errorMessage } from '@hypeman-ts/common'
import type { TlvEntry, TlvView } from './tlv.js'

export interface GuestEgressConfig {
  /** PEM: the egress proxy's CA certificate (more than one CERTIFICATE block is fine). Never a key. */
  caBundlePem: string
  /** Proxy variables to set in the guest unless the program's environment has them already. */
  proxyEnv?: Record<string, string>
}

/** Feature name of the `requires` record that comes with the egress records. */
export const EGRESS_FEATURE = 'egress'
export const MAX_CA_BUNDLE_BYTES = 1024 * 1024
/** The variables proxyEnv may carry: the ones curl, wget, Python, Go, Node libraries and git read. */
export const PROXY_ENV_NAMES: readonly string[] = ['HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY', 'ALL_PROXY', 'http_proxy', 'https_proxy', 'no_proxy', 'all_proxy']

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END \1-----/g

/**
 * The certificate blocks of a PEM bundle, each checked to be a parseable CA certificate, joined as
 * LF-terminated PEM. Anything else in a block (a private key above all) is refused.
 */
export function checkCaBundle(pem: unknown, field = 'egress.caBundlePem'): string {
  if (typeof pem !== 'string' || pem.length === 0) throw new ValidationError(field, 'must be a non-empty PEM string')
  if (Buffer.byteLength(pem) > MAX_CA_BUNDLE_BYTES) throw new ValidationError(field, `must be at most ${MAX_CA_BUNDLE_BYTES} bytes`)
  if (pem.includes('\0')) throw new ValidationError(field, 'must not contain NUL bytes')
  const blocks = [...pem.matchAll(PEM_BLOCK)]
  if (blocks.length !== (pem.match(/-----BEGIN /g) ?? []).length) throw new ValidationError(field, 'has a PEM block without its END line')
  if (blocks.length === 0) throw new ValidationError(field, 'has no "-----BEGIN CERTIFICATE-----" block')
  return `${blocks
    .map((b, i) => {
      const label = b[1]!
      if (label.includes('PRIVATE KEY')) throw new ValidationError(field, `block ${i + 1} is a private key: only the CA certificate goes to the guest`)
      if (label !== 'CERTIFICATE') throw new ValidationError(field, `block ${i + 1} is a ${label}, not a CERTIFICATE`)
      let cert: X509Certificate
      try {
        cert = new X509Certificate(b[0])
      } catch (err) {
        throw new ValidationError(field, `certificate ${i + 1} does not parse: ${errorMessage(err)}`)
      }
      if (!cert.ca) throw new ValidationError(field, `certificate ${i + 1} (${cert.subject.replaceAll('\n', ', ')}) is not a CA certificate (basicConstraints CA:TRUE)`)
      return b[0].replaceAll('\r\n', '\n')
    })
    .join('\n')}\n`
}

export function checkEgressConfig(e: GuestEgressConfig): GuestEgressConfig {
  if (typeof e !== 'object' || e === null) throw new ValidationError('egress', 'must be an object')
  const caBundlePem = checkCaBundle(e.caBundlePem)
  if (e.proxyEnv === undefined) return { caBundlePem }
  if (typeof e.proxyEnv !== 'object' || e.proxyEnv === null) throw new ValidationError('egress.proxyEnv', 'must be an object of variable names to values')
  for (const [name, value] of Object.entries(e.proxyEnv)) {
    if (!PROXY_ENV_NAMES.includes(name)) throw new ValidationError(`egress.proxyEnv.${name}`, `is not a proxy variable (${PROXY_ENV_NAMES.join(', ')})`)
    if (typeof value !== 'string' || value.includes('\0')) throw new ValidationError(`egress.proxyEnv.${name}`, 'must be a string without NUL bytes')
  }
  return { caBundlePem, proxyEnv: { ...e.proxyEnv } }
}

export function egressEntries(egress: GuestEgressConfig): TlvEntry[] {
  const e = checkEgressConfig(egress)
  return [
    ['requires', EGRESS_FEATURE],
    ['ca_bundle', e.caBundlePem],
    ...Object.entries(e.proxyEnv ?? {}).map(([k, v]) => ['egress.env', `${k}=${v}`] as const),
  ]
}

export function decodeEgress(v: TlvView): GuestEgressConfig | undefined {
  const caBundlePem = v.str('ca_bundle')
  if (caBundlePem === undefined) return undefined
  const env = v.all('egress.env')
  if (env.length === 0) return { caBundlePem }
  return { caBundlePem, proxyEnv: Object.fromEntries(env.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)])) }
}
