/** A throwaway CA and a leaf for api.test and other.test (the network tests' stand-in internet), made with openssl. */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'

export async function makeCerts(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  const f = (n: string) => join(dir, n)
  await writeFile(f('san.cnf'), 'subjectAltName=DNS:api.test,DNS:other.test\n')
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-subj', '/CN=network-test-ca', '-days', '2'])
  await run('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', f('leaf.key'), '-out', f('leaf.csr'), '-subj', '/CN=api.test'])
  await run('openssl', ['x509', '-req', '-in', f('leaf.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('leaf.pem'), '-days', '2', '-extfile', f('san.cnf')])
  return { ca: f('ca.pem'), cert: f('leaf.pem'), key: f('leaf.key') }
}
