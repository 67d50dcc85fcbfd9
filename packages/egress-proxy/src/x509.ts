/**
 * X.509 certificates built with node-forge's ASN.1 and extension encoders, signed with Node's
 * crypto. forge's own signing is pure JavaScript and RSA-only (≈50 ms a certificate here);
 * Node signs an EC P-256 TBSCertificate in well under a millisecond. Pure functions: the same
 * spec and key give a certificate that differs only in its signature.
 */
import { createHash, sign, type KeyObject } from 'node:crypto'
import { isIP } from 'node:net'
import forge from 'node-forge'

const { asn1 } = forge
// The typings omit the extension encoders that x509.js exports.
const pki = forge.pki as typeof forge.pki & {
  certificateExtensionsToAsn1(exts: unknown[]): forge.asn1.Asn1
}

const OID_ECDSA_SHA256 = '1.2.840.10045.4.3.2'
const OID_RSA_SHA256 = '1.2.840.113549.1.1.11'

export interface CertificateSpec {
  /** Positive, and its first byte non-zero (DER integers must not be padded). */
  serial: Buffer
  /** Subject common name; omitted when undefined (the SAN then carries the identity). */
  commonName?: string
  organization?: string
  /** The issuer's Name exactly as encoded in the issuer certificate; undefined for self-signed. */
  issuerName?: forge.asn1.Asn1
  notBefore: Date
  notAfter: Date
  /** The subject's public key as DER SubjectPublicKeyInfo (KeyObject.export({ type: 'spki', format: 'der' })). */
  spki: Buffer
  ca: boolean
  /** DNS names and IP literals for subjectAltName (leaf certificates). */
  altNames?: string[]
  /** The issuer's subject key identifier (authorityKeyIdentifier); undefined for self-signed. */
  authorityKeyId?: Buffer
}

function bytes(buf: Buffer): string {
  return buf.toString('binary')
}

function der(node: forge.asn1.Asn1): Buffer {
  return Buffer.from(asn1.toDer(node).getBytes(), 'binary')
}

/** A fresh random serial that is positive and has no leading zero byte. */
export function randomSerial(random: (n: number) => Buffer): Buffer {
  const s = random(16)
  s[0] = (s[0]! & 0x7f) || 0x01
  return s
}

/** RFC 5280 method 1: SHA-1 of the subjectPublicKey bits. */
export function keyIdentifier(spki: Buffer): Buffer {
  const node = asn1.fromDer(bytes(spki)) as forge.asn1.Asn1
  const bitString = (node.value as forge.asn1.Asn1[])[1]!.value as string
  return createHash('sha1').update(Buffer.from(bitString.slice(1), 'binary')).digest()
}

function name(commonName: string | undefined, organization: string | undefined): forge.asn1.Asn1 {
  const attributes: forge.pki.CertificateField[] = []
  if (organization) attributes.push({ shortName: 'O', value: organization, valueTagClass: asn1.Type.UTF8 as never })
  if (commonName) attributes.push({ shortName: 'CN', value: commonName, valueTagClass: asn1.Type.UTF8 as never })
  const cert = pki.createCertificate()
  cert.setSubject(attributes)
  return pki.distinguishedNameToAsn1(cert.subject)
}

function time(date: Date): forge.asn1.Asn1 {
  const year = date.getUTCFullYear()
  return year >= 1950 && year < 2050
    ? asn1.create(asn1.Class.UNIVERSAL, asn1.Type.UTCTIME, false, asn1.dateToUtcTime(date))
    : asn1.create(asn1.Class.UNIVERSAL, asn1.Type.GENERALIZEDTIME, false, asn1.dateToGeneralizedTime(date))
}

function algorithm(key: KeyObject): { oid: string; node: () => forge.asn1.Asn1 } {
  const type = key.asymmetricKeyType
  if (type === 'ec') {
    // ECDSA AlgorithmIdentifiers carry no parameters at all (RFC 5758), not NULL.
    return {
      oid: OID_ECDSA_SHA256,
      node: () => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
        asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(OID_ECDSA_SHA256).getBytes()),
      ]),
    }
  }
  if (type === 'rsa') {
    return {
      oid: OID_RSA_SHA256,
      node: () => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
        asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(OID_RSA_SHA256).getBytes()),
        asn1.create(asn1.Class.UNIVERSAL, asn1.Type.NULL, false, ''),
      ]),
    }
  }
  throw new Error(`unsupported issuer key type ${type}`)
}

function extensions(spec: CertificateSpec, subjectKeyId: Buffer): forge.asn1.Asn1 {
  const exts: Record<string, unknown>[] = []
  if (spec.ca) {
    exts.push({ name: 'basicConstraints', cA: true, pathLenConstraint: 0, critical: true })
    exts.push({ name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true })
  } else {
    exts.push({ name: 'basicConstraints', cA: false, critical: true })
    exts.push({ name: 'keyUsage', digitalSignature: true, critical: true })
    exts.push({ name: 'extKeyUsage', serverAuth: true })
    const altNames = (spec.altNames ?? []).map((n) => (isIP(n) ? { type: 7, ip: n } : { type: 2, value: n }))
    // Without a subject CN the SAN is the only identity, and RFC 5280 then wants it critical.
    exts.push({ name: 'subjectAltName', altNames, critical: spec.commonName === undefined })
  }
  exts.push({ name: 'subjectKeyIdentifier', value: asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, bytes(subjectKeyId)) })
  if (spec.authorityKeyId) exts.push({ name: 'authorityKeyIdentifier', keyIdentifier: bytes(spec.authorityKeyId) })
  const holder = pki.createCertificate()
  holder.setExtensions(exts)
  return pki.certificateExtensionsToAsn1(holder.extensions as unknown[])
}

/** Builds the TBSCertificate, signs it with `issuerKey` and returns the certificate as DER. */
export function issueCertificate(spec: CertificateSpec, issuerKey: KeyObject): Buffer {
  const alg = algorithm(issuerKey)
  const subject = name(spec.commonName, spec.organization)
  const subjectKeyId = keyIdentifier(spec.spki)
  const tbs = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, [
      asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, asn1.integerToDer(2).getBytes()),
    ]),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, bytes(spec.serial)),
    alg.node(),
    spec.issuerName ?? subject,
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [time(spec.notBefore), time(spec.notAfter)]),
    subject,
    asn1.fromDer(bytes(spec.spki)) as forge.asn1.Asn1,
    extensions(spec, subjectKeyId),
  ])
  const tbsDer = der(tbs)
  const signature = sign('sha256', tbsDer, issuerKey)
  return der(
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
      tbs,
      alg.node(),
      asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BITSTRING, false, `\0${bytes(signature)}`),
    ]),
  )
}

/** The subject Name of a certificate, as encoded, to use as the issuer of the certificates it signs. */
export function subjectName(certDer: Buffer): forge.asn1.Asn1 {
  const cert = asn1.fromDer(bytes(certDer)) as forge.asn1.Asn1
  const tbs = (cert.value as forge.asn1.Asn1[])[0]!.value as forge.asn1.Asn1[]
  // TBSCertificate: [0] version, serial, signature, issuer, validity, subject, …
  const offset = tbs[0]!.tagClass === asn1.Class.CONTEXT_SPECIFIC ? 1 : 0
  return tbs[4 + offset]!
}

export function toPem(certDer: Buffer): string {
  const b64 = certDer.toString('base64').replace(/.{64}/g, '$&\n')
  return `-----BEGIN CERTIFICATE-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END CERTIFICATE-----\n`
}
