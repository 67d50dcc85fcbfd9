/**
 * Certificates for the guest tests, made by the openssl CLI (not by our code): a CA like the
 * egress proxy's, and leaf certificates signed by it.
 */
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'

export interface TestCa {
  name: string
  certPath: string
  keyPath: string
  pem: string
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']

export async function makeCa(dir: string, name: string): Promise<TestCa> {
  const certPath = join(dir, `${name}.pem`)
  const keyPath = join(dir, `${name}.key`)
  await run('openssl', ['req', '-x509', ...EC, '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'])
  return { name, certPath, keyPath, pem: await readFile(certPath, 'utf8') }
}

/** A self-signed certificate that is not a CA (what a caller might pass by mistake). */
export async function makeSelfSignedLeaf(dir: string, name: string): Promise<string> {
  const certPath = join(dir, `${name}.pem`)
  await run('openssl', ['req', '-x509', ...EC, '-keyout', join(dir, `${name}.key`), '-out', certPath, '-days', '2', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:FALSE'])
  return readFile(certPath, 'utf8')
}

/** A server certificate for `ip` signed by `ca`; returns the cert and key paths. */
export async function makeServerCert(dir: string, ca: TestCa, name: string, ip: string): Promise<{ certPath: string; keyPath: string }> {
  const keyPath = join(dir, `${name}.key`)
  const csr = join(dir, `${name}.csr`)
  const certPath = join(dir, `${name}.pem`)
  const ext = join(dir, `${name}.ext`)
  await run('openssl', ['req', '-new', ...EC, '-keyout', keyPath, '-out', csr, '-subj', `/CN=${ip}`])
  await writeFile(ext, `subjectAltName=IP:${ip}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n`)
  await run('openssl', ['x509', '-req', '-in', csr, '-CA', ca.certPath, '-CAkey', ca.keyPath, '-CAcreateserial', '-out', certPath, '-days', '2', '-extfile', ext])
  return { certPath, keyPath }
}
