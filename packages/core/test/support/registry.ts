/**
 * Real OCI registries for tests and benchmarks: Debian's `docker-registry` on loopback, in three
 * flavours over one shared storage directory (anonymous, htpasswd Basic auth, bearer-token auth
 * with a token server this module runs and signs for), and the fixture images (built by
 * scripts/setup.d/10-fixture-images.sh with umoci/debootstrap) pushed into it with skopeo.
 */
import { createSign, randomUUID, X509Certificate } from 'node:crypto'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import { createServer as createNetServer } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { run } from '@hypeman-ts/common'

export const CACHE = process.env.HYPEMAN_TS_CACHE ?? '/var/cache/hypeman-ts'
export const FIXTURES = join(CACHE, 'fixtures')

export const BASIC_USER = 'basicuser'
export const BASIC_PASS = 'basic-secret'
export const TOKEN_USER = 'tokenuser'
export const TOKEN_PASS = 'token-secret'
const TOKEN_SERVICE = 'hypeman-test-registry'
const TOKEN_ISSUER = 'hypeman-test-issuer'

export interface RunningRegistry {
  /** host:port, e.g. 127.0.0.1:41234 */
  host: string
  stop(): Promise<void>
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createNetServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number }
      srv.close(() => resolve(port))
    })
  })
}

async function waitForHttp(url: string, proc: ChildProcess, log: () => string, deadlineMs = 15_000): Promise<void> {
  const deadline = Date.now() + deadlineMs
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`registry exited with ${proc.exitCode}: ${log()}`)
    try {
      const res = await fetch(url)
      await res.arrayBuffer()
      if (res.status === 200 || res.status === 401) return
    } catch {
      // not listening yet
    }
    await sleep(50)
  }
  throw new Error(`registry at ${url} not ready after ${deadlineMs} ms: ${log()}`)
}

async function startRegistryProcess(dir: string, storage: string, auth: string): Promise<RunningRegistry> {
  await mkdir(dir, { recursive: true })
  const port = await freePort()
  const config = join(dir, 'config.yml')
  await writeFile(
    config,
    [
      'version: 0.1',
      'log: { level: warn }',
      `storage: { filesystem: { rootdirectory: ${storage} }, delete: { enabled: true } }`,
      `http: { addr: "127.0.0.1:${port}" }`,
      auth,
    ].join('\n'),
  )
  let output = ''
  const proc = spawn('docker-registry', ['serve', config], { stdio: ['ignore', 'pipe', 'pipe'] })
  proc.stdout!.on('data', (d) => (output = (output + d).slice(-4000)))
  proc.stderr!.on('data', (d) => (output = (output + d).slice(-4000)))
  try {
    await waitForHttp(`http://127.0.0.1:${port}/v2/`, proc, () => output)
  } catch (err) {
    proc.kill('SIGKILL')
    throw err
  }
  return {
    host: `127.0.0.1:${port}`,
    stop: async () => {
      if (proc.exitCode !== null) return
      const exited = new Promise((r) => proc.once('exit', r))
      proc.kill('SIGTERM')
      await Promise.race([exited, sleep(3000).then(() => proc.kill('SIGKILL'))])
    },
  }
}

export interface TokenServer {
  realm: string
  /** Every token request the server saw: scopes asked for and whether credentials came along. */
  requests: { scope: string[]; user: string | null }[]
  stop(): Promise<void>
}

function b64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url')
}

/**
 * A token server in the style of Docker Hub's: anonymous callers get pull on any repository except
 * `private/*`; TOKEN_USER gets pull and push everywhere. Tokens are ES256 JWTs carrying their
 * certificate in `x5c`, which the registry checks against the bundle it was given.
 */
async function startTokenServer(keyPem: string, certPem: string): Promise<TokenServer> {
  const certDer = new X509Certificate(certPem).raw
  const requests: TokenServer['requests'] = []
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x')
    const scopes = url.searchParams.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean)
    let user: string | null = null
    const auth = req.headers.authorization
    if (auth?.startsWith('Basic ')) {
      const [u, p] = Buffer.from(auth.slice(6), 'base64').toString().split(':')
      if (u !== TOKEN_USER || p !== TOKEN_PASS) {
        res.writeHead(401, { 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAUTHORIZED"}]}')
        return
      }
      user = u
    }
    requests.push({ scope: scopes, user })
    const access = scopes.flatMap((s) => {
      const [type, name, actions] = s.split(':')
      if (type !== 'repository' || !name || !actions) return []
      const wanted = actions.split(',')
      const granted = user ? wanted : name.startsWith('private/') ? [] : wanted.filter((a) => a === 'pull')
      return [{ type, name, actions: granted }]
    })
    const now = Math.floor(Date.now() / 1000)
    const header = { alg: 'ES256', typ: 'JWT', x5c: [certDer.toString('base64')] }
    const claims = { iss: TOKEN_ISSUER, sub: user ?? '', aud: url.searchParams.get('service'), exp: now + 300, nbf: now - 10, iat: now, jti: randomUUID(), access }
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`
    const sig = createSign('SHA256').update(input).sign({ key: keyPem, dsaEncoding: 'ieee-p1363' })
    const token = `${input}.${b64url(sig)}`
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token, access_token: token, expires_in: 300 }))
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const { port } = server.address() as { port: number }
  return {
    realm: `http://127.0.0.1:${port}/token`,
    requests,
    stop: () => new Promise((r) => server.close(() => r())),
  }
}

export interface Registries {
  open: RunningRegistry
  basic: RunningRegistry
  token: RunningRegistry
  tokenServer: TokenServer
  stop(): Promise<void>
}

/** Starts the three registries over one storage directory. */
export async function startRegistries(workDir: string): Promise<Registries> {
  const storage = join(workDir, 'storage')
  await mkdir(storage, { recursive: true })
  const htpasswd = (await run('htpasswd', ['-Bbn', BASIC_USER, BASIC_PASS])).stdout.trim()
  await writeFile(join(workDir, 'htpasswd'), `${htpasswd}\n`)
  const keyPath = join(workDir, 'token.key')
  const certPath = join(workDir, 'token.crt')
  await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', keyPath, '-out', certPath, '-subj', '/CN=hypeman-test-token-issuer', '-days', '2',
  ])
  const tokenServer = await startTokenServer(await readFile(keyPath, 'utf8'), await readFile(certPath, 'utf8'))
  const started: RunningRegistry[] = []
  try {
    const open = await startRegistryProcess(join(workDir, 'open'), storage, '')
    started.push(open)
    const basic = await startRegistryProcess(
      join(workDir, 'basic'),
      storage,
      `auth: { htpasswd: { realm: hypeman-basic, path: ${join(workDir, 'htpasswd')} } }`,
    )
    started.push(basic)
    const token = await startRegistryProcess(
      join(workDir, 'token'),
      storage,
      `auth: { token: { realm: "${tokenServer.realm}", service: ${TOKEN_SERVICE}, issuer: ${TOKEN_ISSUER}, rootcertbundle: ${certPath} } }`,
    )
    started.push(token)
    return {
      open,
      basic,
      token,
      tokenServer,
      stop: async () => {
        await Promise.all(started.map((r) => r.stop()))
        await tokenServer.stop()
      },
    }
  } catch (err) {
    await Promise.all(started.map((r) => r.stop()))
    await tokenServer.stop()
    throw err
  }
}

/** Fixture images as pushed: repository:tag in the registries → skopeo source and options. */
export const FIXTURE_PUSHES: { name: string; source: string; args?: string[] }[] = [
  { name: 'busybox:latest', source: `oci:${FIXTURES}/small:busybox-amd64` },
  { name: 'busybox-v2s2:latest', source: `oci:${FIXTURES}/small:busybox-amd64`, args: ['--format', 'v2s2'] },
  { name: 'busybox-zstd:latest', source: `dir:${FIXTURES}/busybox-zstd` },
  { name: 'busybox-plain:latest', source: `dir:${FIXTURES}/busybox-plain` },
  { name: 'private/busybox:latest', source: `oci:${FIXTURES}/small:busybox-amd64` },
  { name: 'layers:latest', source: `oci:${FIXTURES}/small:layers` },
  { name: 'multi:latest', source: `oci:${FIXTURES}/small:multi`, args: ['--all'] },
  { name: 'debian:bookworm', source: `oci:${FIXTURES}/debian:bookworm` },
]

/** Pushes fixture images with skopeo (idempotent: blobs already there are skipped). */
export async function pushFixtures(registryHost: string, names?: string[]): Promise<void> {
  for (const f of FIXTURE_PUSHES) {
    if (names && !names.includes(f.name)) continue
    await run('skopeo', ['copy', '--quiet', ...(f.args ?? []), '--dest-tls-verify=false', f.source, `docker://${registryHost}/${f.name}`], {
      timeoutMs: 300_000,
    })
  }
}
