/**
 * A client for the OCI distribution protocol: `/v2/` ping, anonymous, Basic and bearer-token auth
 * (with scope), manifests by tag or digest, blobs with redirects, digest verification and retries.
 * Loopback registries and those listed as insecure are spoken to over plain HTTP, as Docker does.
 */
import { createHash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { rm } from 'node:fs/promises'
import { Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { Agent, request, type Dispatcher } from 'undici'
import { Lazy, throwIfAborted, type Logger, silentLogger } from '@hypeman-ts/common'
import { ImageError } from '../errors.js'
import { basicAuthorization, fetchToken, parseChallenge, type Challenge, type RegistryCredentials, type Token } from './auth.js'
import { MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, type Descriptor } from './manifest.js'
import { isDigest, isLoopbackRegistry } from './reference.js'

export interface RegistryClientOptions {
  /** Registries (host[:port]) to speak plain HTTP to, besides loopback ones. */
  insecureRegistries?: string[]
  /** Credentials per registry host; undefined means anonymous. */
  credentials?: (registry: string) => RegistryCredentials | undefined
  /** Connections per registry origin (default 6). */
  connections?: number
  userAgent?: string
  logger?: Logger
}

export interface FetchedManifest {
  bytes: Buffer
  mediaType: string | undefined
  /** Digest of the bytes we received (verified against the reference when it is a digest). */
  digest: string
}

interface RegistryState {
  challenge?: Challenge | null
  /** GET /v2/ once per registry, shared by concurrent pulls; a failed one is sent again next time. */
  ping?: Lazy<void, [AbortSignal?]>
}

const DOCKER_HUB_API = 'registry-1.docker.io'
const MAX_REDIRECTS = 5
const RETRIES = 3

function apiHost(registry: string): string {
  return registry === 'docker.io' ? DOCKER_HUB_API : registry
}

export function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}

/** A stream that hashes and counts what passes through and fails past `limit` bytes. */
export class DigestStream extends Transform {
  readonly hash: ReturnType<typeof createHash>
  bytes = 0
  constructor(
    algorithm: string,
    private readonly limit: number,
  ) {
    super()
    this.hash = createHash(algorithm)
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
    this.bytes += chunk.length
    if (this.bytes > this.limit) {
      cb(new ImageError('digest_mismatch', `content is larger than the ${this.limit} bytes its descriptor declares`))
      return
    }
    this.hash.update(chunk)
    cb(null, chunk)
  }
  digest(): string {
    return this.hash.digest('hex')
  }
}

function transient(err: unknown): boolean {
  if (err instanceof ImageError) return false
  const code = (err as { code?: string }).code ?? ''
  return /ECONNRESET|ECONNREFUSED|EPIPE|ETIMEDOUT|UND_ERR_SOCKET|UND_ERR_CONNECT_TIMEOUT|UND_ERR_HEADERS_TIMEOUT|UND_ERR_BODY_TIMEOUT|EAI_AGAIN/.test(code)
}

export class RegistryClient {
  private readonly dispatcher: Agent
  private readonly states = new Map<string, RegistryState>()
  private readonly tokens = new Map<string, Token>()
  private readonly insecure: Set<string>
  private readonly logger: Logger

  constructor(private readonly opts: RegistryClientOptions = {}) {
    this.dispatcher = new Agent({ connections: opts.connections ?? 6, keepAliveTimeout: 10_000, headersTimeout: 60_000, bodyTimeout: 120_000 })
    this.insecure = new Set(opts.insecureRegistries ?? [])
    this.logger = opts.logger ?? silentLogger
  }

  async close(): Promise<void> {
    await this.dispatcher.close()
  }

  baseUrl(registry: string): string {
    const scheme = isLoopbackRegistry(registry) || this.insecure.has(registry) ? 'http' : 'https'
    return `${scheme}://${apiHost(registry)}`
  }

  private state(registry: string): RegistryState {
    let s = this.states.get(registry)
    if (!s) this.states.set(registry, (s = {}))
    return s
  }

  /** GET /v2/: learns how the registry wants to be authenticated. */
  async ping(registry: string, signal?: AbortSignal): Promise<Challenge | null> {
    const s = this.state(registry)
    s.ping ??= new Lazy(async (pingSignal?: AbortSignal) => {
      const res = await this.send('GET', `${this.baseUrl(registry)}/v2/`, {}, pingSignal)
      await res.body.dump()
      if (res.statusCode === 401) s.challenge = parseChallenge(res.headers['www-authenticate'])
      else if (res.statusCode >= 200 && res.statusCode < 300) s.challenge = null
      else if (res.statusCode === 404) throw new ImageError('registry_error', `${registry} does not speak the registry v2 API (GET /v2/ → 404)`)
      else throw new ImageError('registry_error', `${registry} answered GET /v2/ with HTTP ${res.statusCode}`)
    })
    await s.ping.get(signal)
    return s.challenge ?? null
  }

  private async authorization(registry: string, scope: string, fresh: boolean, signal?: AbortSignal): Promise<string | undefined> {
    const creds = this.opts.credentials?.(registry)
    if (creds?.token) return `Bearer ${creds.token}`
    const challenge = await this.ping(registry, signal)
    if (!challenge) return undefined
    if (challenge.scheme === 'basic') {
      const basic = creds ? basicAuthorization(creds) : undefined
      if (!basic) throw new ImageError('registry_unauthorized', `${registry} requires credentials (Basic auth) and none were given`)
      return basic
    }
    const key = `${registry}|${scope}`
    const cached = this.tokens.get(key)
    if (!fresh && cached && cached.expiresAt > Date.now()) return `Bearer ${cached.token}`
    const token = await fetchToken(challenge, scope, creds, this.dispatcher, signal)
    this.tokens.set(key, token)
    return `Bearer ${token.token}`
  }

  private async send(method: 'GET' | 'HEAD', url: string, headers: Record<string, string>, signal?: AbortSignal): Promise<Dispatcher.ResponseData> {
    return request(url, {
      method,
      headers: { 'user-agent': this.opts.userAgent ?? 'hypeman-ts', ...headers },
      dispatcher: this.dispatcher,
      signal,
    })
  }

  /**
   * An authenticated request to the registry API, following redirects (without carrying our
   * Authorization to another origin) and retrying transient failures.
   */
  private async api(
    registry: string,
    repository: string,
    method: 'GET' | 'HEAD',
    path: string,
    headers: Record<string, string>,
    signal?: AbortSignal,
  ): Promise<Dispatcher.ResponseData> {
    const scope = `repository:${repository}:pull`
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.apiOnce(registry, scope, method, `${this.baseUrl(registry)}${path}`, headers, signal)
      } catch (err) {
        if (attempt >= RETRIES || !transient(err) || signal?.aborted) throw err
        this.logger.warn('registry request failed, retrying', { registry, path, attempt, error: String(err) })
        await sleep(200 * 4 ** (attempt - 1))
      }
    }
  }

  private async apiOnce(
    registry: string,
    scope: string,
    method: 'GET' | 'HEAD',
    url: string,
    headers: Record<string, string>,
    signal?: AbortSignal,
  ): Promise<Dispatcher.ResponseData> {
    let auth = await this.authorization(registry, scope, false, signal)
    let retriedAuth = false
    let current = url
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const sameOrigin = new URL(current).origin === new URL(url).origin
      const res = await this.send(method, current, { ...headers, ...(auth && sameOrigin ? { authorization: auth } : {}) }, signal)
      if (res.statusCode >= 300 && res.statusCode < 400 && res.headers.location) {
        await res.body.dump()
        current = new URL(String(res.headers.location), current).toString()
        continue
      }
      if (res.statusCode === 401 && sameOrigin && !retriedAuth) {
        // The registry may want another scope or our cached token expired: take its challenge.
        await res.body.dump()
        const challenge = parseChallenge(res.headers['www-authenticate'])
        if (challenge) this.state(registry).challenge = challenge
        retriedAuth = true
        auth = await this.authorization(registry, challenge?.params.scope ?? scope, true, signal)
        continue
      }
      if (res.statusCode >= 200 && res.statusCode < 300) return res
      const detail = method === 'GET' ? await readErrorBody(res) : (await res.body.dump(), '')
      const what = `${method} ${new URL(url).pathname}`
      if (res.statusCode === 401 || res.statusCode === 403) {
        const creds = this.opts.credentials?.(registry)
        throw new ImageError('registry_unauthorized', `${registry}: ${what} unauthorized${creds ? ' with the given credentials' : ' (no credentials given)'}${detail}`)
      }
      if (res.statusCode === 404) throw new ImageError('image_not_found', `${registry}: ${what} not found${detail}`)
      if (res.statusCode === 429) throw new ImageError('registry_rate_limited', `${registry}: rate limit exceeded${detail}`)
      const err = new ImageError('registry_error', `${registry}: ${what} answered HTTP ${res.statusCode}${detail}`)
      if (res.statusCode >= 500) Object.assign(err, { transientStatus: true })
      throw err
    }
    throw new ImageError('registry_error', `${registry}: more than ${MAX_REDIRECTS} redirects for ${url}`)
  }

  async getManifest(registry: string, repository: string, reference: string, signal?: AbortSignal): Promise<FetchedManifest> {
    const res = await this.api(registry, repository, 'GET', `/v2/${repository}/manifests/${reference}`, { accept: MANIFEST_ACCEPT.join(', ') }, signal)
    const declared = Number(res.headers['content-length'] ?? 0)
    if (declared > MAX_MANIFEST_BYTES) {
      await res.body.dump()
      throw new ImageError('registry_error', `${registry}/${repository}:${reference}: manifest of ${declared} bytes is larger than the 4 MiB limit`)
    }
    const bytes = Buffer.from(await res.body.arrayBuffer())
    if (bytes.length > MAX_MANIFEST_BYTES) throw new ImageError('registry_error', 'manifest is larger than the 4 MiB limit')
    const digest = sha256(bytes)
    if (isDigest(reference) && reference !== digest) {
      throw new ImageError('digest_mismatch', `manifest ${repository}@${reference} hashed to ${digest}`)
    }
    const header = res.headers['docker-content-digest']
    if (typeof header === 'string' && header.startsWith('sha256:') && header !== digest) {
      throw new ImageError('digest_mismatch', `manifest ${repository}:${reference}: registry said ${header}, content hashed to ${digest}`)
    }
    const ct = res.headers['content-type']
    return { bytes, mediaType: typeof ct === 'string' ? ct.split(';')[0]!.trim() : undefined, digest }
  }

  /**
   * HEAD of a manifest: the digest the registry says it has (Docker-Content-Digest), without the
   * body. Null when the registry does not say; callers then GET.
   */
  async headManifest(registry: string, repository: string, reference: string, signal?: AbortSignal): Promise<string | null> {
    const res = await this.api(registry, repository, 'HEAD', `/v2/${repository}/manifests/${reference}`, { accept: MANIFEST_ACCEPT.join(', ') }, signal)
    await res.body.dump()
    const header = res.headers['docker-content-digest']
    return typeof header === 'string' && isDigest(header) ? header : null
  }

  /** Fetches a small blob (an image config) into memory, verified. */
  async getBlobBytes(registry: string, repository: string, desc: Descriptor, signal?: AbortSignal): Promise<Buffer> {
    const res = await this.api(registry, repository, 'GET', `/v2/${repository}/blobs/${desc.digest}`, {}, signal)
    const check = new DigestStream(desc.digest.split(':')[0]!, desc.size)
    const chunks: Buffer[] = []
    for await (const chunk of res.body.pipe(check)) chunks.push(chunk as Buffer)
    verify(desc, check)
    return Buffer.concat(chunks)
  }

  /**
   * Downloads a blob to `dest`, verifying size and digest; on any failure `dest` does not exist.
   * Transient failures restart the download (up to 3 attempts).
   */
  async downloadBlob(
    registry: string,
    repository: string,
    desc: Descriptor,
    dest: string,
    opts: { signal?: AbortSignal; onBytes?: (n: number) => void } = {},
  ): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      throwIfAborted(opts.signal, 'image.download')
      let counted = 0
      try {
        const res = await this.api(registry, repository, 'GET', `/v2/${repository}/blobs/${desc.digest}`, {}, opts.signal)
        const check = new DigestStream(desc.digest.split(':')[0]!, desc.size)
        check.on('data', (c: Buffer) => {
          counted += c.length
          opts.onBytes?.(c.length)
        })
        await pipeline(res.body, check, createWriteStream(dest, { mode: 0o644 }), { signal: opts.signal })
        verify(desc, check)
        return
      } catch (err) {
        await rm(dest, { force: true })
        if (counted) opts.onBytes?.(-counted)
        if (attempt >= RETRIES || !(transient(err) || (err as { transientStatus?: boolean }).transientStatus) || opts.signal?.aborted) throw err
        this.logger.warn('blob download failed, retrying', { digest: desc.digest, attempt, error: String(err) })
        await sleep(200 * 4 ** (attempt - 1))
      }
    }
  }
}

export function verify(desc: Descriptor, check: DigestStream): void {
  if (check.bytes !== desc.size) {
    throw new ImageError('digest_mismatch', `blob ${desc.digest}: got ${check.bytes} bytes, descriptor says ${desc.size}`)
  }
  const got = `${desc.digest.split(':')[0]}:${check.digest()}`
  if (got !== desc.digest) throw new ImageError('digest_mismatch', `blob ${desc.digest} hashed to ${got}`)
}

async function readErrorBody(res: Dispatcher.ResponseData): Promise<string> {
  try {
    const text = (await res.body.text()).slice(0, 2000)
    const doc = JSON.parse(text) as { errors?: { code?: string; message?: string }[] }
    const e = doc.errors?.[0]
    return e ? `: ${e.code ?? ''} ${e.message ?? ''}`.trimEnd() : ''
  } catch {
    return ''
  }
}
