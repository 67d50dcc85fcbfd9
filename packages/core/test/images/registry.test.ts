/**
 * Registry client behaviour a well-behaved registry never shows: a tiny misbehaving server on
 * loopback lies about digests, redirects blobs to another origin and rate-limits. (Everything a
 * real registry does is tested against Debian's docker-registry in images.test.ts.)
 */
import { createHash } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer, type IncomingMessage, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { parseChallenge } from '../../src/images/auth.js'
import { RegistryClient } from '../../src/images/registry.js'

const sha = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`

type Handler = (req: IncomingMessage, res: import('node:http').ServerResponse) => void
const servers: Server[] = []
async function serve(handler: Handler): Promise<string> {
  const s = createServer(handler)
  servers.push(s)
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  return `127.0.0.1:${(s.address() as { port: number }).port}`
}
/** Temporary folders for downloaded blobs, removed after each test. */
const dirs: string[] = []
const blobDir = () => {
  const dir = mkdtempSync(join(tmpdir(), 'blob-'))
  dirs.push(dir)
  return dir
}

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => { s.closeAllConnections(); s.close(r) })))
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true })
})

describe('parseChallenge', () => {
  it.each([
    ['Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"', {
      scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/alpine:pull' },
    }],
    ['Basic realm="Registry Realm"', { scheme: 'basic', params: { realm: 'Registry Realm' } }],
    ['bearer realm=https://x/token, service=svc', { scheme: 'bearer', params: { realm: 'https://x/token', service: 'svc' } }],
    ['Bearer realm="a,b",scope="repository:x:pull,push"', { scheme: 'bearer', params: { realm: 'a,b', scope: 'repository:x:pull,push' } }],
  ])('%s', (header, want) => {
    expect(parseChallenge(header)).toEqual(want)
  })
  it('ignores schemes it does not know', () => {
    expect(parseChallenge('Negotiate abc')).toBeNull()
    expect(parseChallenge(undefined)).toBeNull()
  })
})

describe('RegistryClient against a misbehaving registry', () => {
  it('refuses a manifest whose bytes do not match the digest asked for', async () => {
    const host = await serve((req, res) => {
      if (req.url === '/v2/') return res.writeHead(200).end('{}')
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }).end('{"schemaVersion":2,"layers":[]}')
    })
    const c = new RegistryClient()
    await expect(c.getManifest(host, 'x', sha('something else'))).rejects.toMatchObject({ code: 'digest_mismatch' })
    await c.close()
  })

  it('refuses a manifest when Docker-Content-Digest disagrees with the bytes', async () => {
    const host = await serve((req, res) => {
      if (req.url === '/v2/') return res.writeHead(200).end('{}')
      res.writeHead(200, { 'docker-content-digest': sha('lie') }).end('{"schemaVersion":2,"layers":[]}')
    })
    const c = new RegistryClient()
    await expect(c.getManifest(host, 'x', 'latest')).rejects.toMatchObject({ code: 'digest_mismatch' })
    await c.close()
  })

  it('deletes a blob that does not hash to its digest, and one of the wrong size', async () => {
    const good = Buffer.from('layer bytes')
    const host = await serve((req, res) => {
      if (req.url === '/v2/') return res.writeHead(200).end('{}')
      res.writeHead(200).end(req.url?.includes('short') ? good.subarray(0, 4) : Buffer.from('tampered!!!'))
    })
    const c = new RegistryClient()
    const dir = blobDir()
    const desc = { mediaType: 'x', digest: sha(good), size: good.length }
    await expect(c.downloadBlob(host, 'x', desc, join(dir, 'b'))).rejects.toMatchObject({ code: 'digest_mismatch' })
    expect(existsSync(join(dir, 'b'))).toBe(false)
    await expect(c.downloadBlob(host, 'short', desc, join(dir, 'b'))).rejects.toMatchObject({ code: 'digest_mismatch' })
    expect(existsSync(join(dir, 'b'))).toBe(false)
    await c.close()
  })

  it('follows a blob redirect to another origin without carrying our Authorization', async () => {
    const blob = Buffer.from('redirected blob')
    const seen: (string | undefined)[] = []
    const storage = await serve((req, res) => {
      seen.push(req.headers.authorization)
      res.writeHead(200).end(blob)
    })
    const host = await serve((req, res) => {
      if (req.headers.authorization !== 'Basic dTpw') return res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' }).end()
      if (req.url === '/v2/') return res.writeHead(200).end('{}')
      res.writeHead(307, { location: `http://${storage}/bucket/blob?sig=1` }).end()
    })
    const c = new RegistryClient({ credentials: () => ({ username: 'u', password: 'p' }) })
    const dir = blobDir()
    await c.downloadBlob(host, 'x', { mediaType: 'x', digest: sha(blob), size: blob.length }, join(dir, 'b'))
    expect(readFileSync(join(dir, 'b'))).toEqual(blob)
    expect(seen).toEqual([undefined])
    await c.close()
  })

  it('retries a transient 503 and reports 429 as rate limited', async () => {
    const blob = Buffer.from('eventually')
    let calls = 0
    const host = await serve((req, res) => {
      if (req.url === '/v2/') return res.writeHead(200).end('{}')
      if (req.url?.includes('limited')) return res.writeHead(429).end('{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}')
      if (++calls < 2) return res.writeHead(503).end()
      res.writeHead(200).end(blob)
    })
    const c = new RegistryClient()
    const dir = blobDir()
    await c.downloadBlob(host, 'x', { mediaType: 'x', digest: sha(blob), size: blob.length }, join(dir, 'b'))
    expect(calls).toBe(2)
    await expect(c.getManifest(host, 'limited', 'latest')).rejects.toMatchObject({ code: 'registry_rate_limited', message: expect.stringContaining('slow down') })
    await c.close()
  })

  it('stops at once when aborted', async () => {
    const host = await serve((req, res) => {
      if (req.url === '/v2/') return res.writeHead(200).end('{}')
      res.writeHead(200)
      res.write('partial') // and never end
    })
    const c = new RegistryClient()
    const dir = blobDir()
    const ac = new AbortController()
    const p = c.downloadBlob(host, 'x', { mediaType: 'x', digest: sha('full'), size: 100 }, join(dir, 'b'), { signal: ac.signal })
    setTimeout(() => ac.abort(), 100)
    await expect(p).rejects.toThrow()
    expect(existsSync(join(dir, 'b'))).toBe(false)
    await c.close()
  })
})
