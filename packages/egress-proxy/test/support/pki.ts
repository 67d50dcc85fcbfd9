/**
 * Test certificates made by openssl, not by our code: an upstream CA, a server certificate
 * for the names the tests use, and the bad ones (self-signed, wrong name, unknown CA).
 */
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'

export interface TestPki {
  dir: string
  /** The upstream CA's certificate (PEM text), which the proxy is told to trust. */
  caPem: string
  /** Server certificates and keys (paths). */
  good: { cert: string; key: string }
  selfSigned: { cert: string; key: string }
  wrongName: { cert: string; key: string }
}

export const UPSTREAM_NAMES = ['api.test', 'example.test', '*.example.test', 'deep.a.example.test', 'other.test', 'plain.test', 'localhost']

export async function makePki(dir: string): Promise<TestPki> {
  const ossl = (args: string[]) => run('openssl', args, { cwd: dir })
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes']
  await ossl(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '3', '-subj', '/CN=egress test upstream CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign'])
  const leaf = async (name: string, sans: string, signer: 'ca' | 'self') => {
    await writeFile(join(dir, `${name}.ext`), `subjectAltName=${sans}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`)
    if (signer === 'self') {
      await ossl(['req', '-x509', ...ec, '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '3', '-subj', `/CN=${name}`, '-addext', `subjectAltName=${sans}`])
    } else {
      await ossl(['req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`])
      await ossl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '3', '-extfile', `${name}.ext`])
    }
    return { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) }
  }
  const sans = [...UPSTREAM_NAMES.map((n) => `DNS:${n}`), 'IP:127.0.0.1'].join(',')
  const good = await leaf('good', sans, 'ca')
  const selfSigned = await leaf('selfsigned', sans, 'self')
  const wrongName = await leaf('wrongname', 'DNS:somewhere-else.test', 'ca')
  return { dir, caPem: await readFile(join(dir, 'ca.pem'), 'utf8'), good, selfSigned, wrongName }
}
