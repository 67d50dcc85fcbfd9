/**
 * Per-source policy: the create API's `credentials` object plus the real values it refers to.
 * Everything is checked and compiled when a policy is registered (host patterns into sets,
 * templates rendered with the real value), so a request only looks things up.
 */
import { ValidationError } from '@hypeman-ts/common'
import { compileHostPatterns, hostMatches, type HostMatcher } from './hosts.js'

/** `as` of an inject rule: the header to set, and its template, which must contain `${value}`. */
export interface InjectAs {
  header: string
  format: string
}

export interface InjectRule {
  /** Destination host patterns (`api.example.com`, `*.example.com`); absent or empty: every HTTPS destination. */
  hosts?: string[]
  as: InjectAs
}

/** One entry of the create API's `credentials` map, keyed by the guest-visible env var name. */
export interface CredentialPolicy {
  source: { env: string }
  inject: InjectRule[]
}

/** What to do with a request that carries a placeholder towards a host its credential does not name. */
export type UnmatchedPlaceholderAction = 'forward' | 'block'

export interface SourcePolicy {
  /** Real values, as in the create API's `env` map. Only the entries named by a credential's `source.env` are used. */
  env?: Record<string, string>
  credentials?: Record<string, CredentialPolicy>
  /** Default 'forward': the request goes out with the placeholder untouched, and an audit event is emitted. */
  unmatchedPlaceholder?: UnmatchedPlaceholderAction
}

export interface CompiledRule {
  readonly matcher: HostMatcher
  /** Header name as the policy spelled it, and lower-cased for comparison. */
  readonly header: string
  readonly headerLower: string
  /** The template already rendered with the real value. */
  readonly value: string
}

export interface CompiledCredential {
  readonly name: string
  readonly placeholder: string
  readonly secret: string
  readonly rules: readonly CompiledRule[]
}

/** What applies to one destination host: headers to set and placeholders to swap. */
export interface HostPlan {
  readonly set: ReadonlyArray<{ header: string; headerLower: string; value: string; credential: string }>
  /** Lower-case names of the headers in `set`: the guest's own copies of these are dropped. */
  readonly setLower: ReadonlySet<string>
  /** placeholder → real value, for credentials whose rules match this host. */
  readonly swap: ReadonlyMap<string, string>
  readonly credentials: readonly string[]
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/
/** Headers the proxy owns (framing, hop-by-hop, its own authentication): a policy cannot set them. */
const RESERVED_HEADERS = new Set([
  'host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'proxy-connection',
  'upgrade', 'te', 'trailer', 'expect', 'proxy-authorization', 'proxy-authenticate', 'http2-settings',
])
const PLAN_CACHE_MAX = 1024

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function rejectUnknown(obj: Record<string, unknown>, allowed: readonly string[], field: string): void {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) throw new ValidationError(field ? `${field}.${key}` : key, `unknown field (expected one of: ${allowed.join(', ')})`)
  }
}

export class CompiledPolicy {
  readonly credentials: readonly CompiledCredential[]
  readonly byPlaceholder: ReadonlyMap<string, CompiledCredential>
  readonly unmatchedPlaceholder: UnmatchedPlaceholderAction
  private readonly plans = new Map<string, HostPlan>()

  constructor(credentials: CompiledCredential[], unmatched: UnmatchedPlaceholderAction) {
    this.credentials = credentials
    this.byPlaceholder = new Map(credentials.map((c) => [c.placeholder, c]))
    this.unmatchedPlaceholder = unmatched
  }

  /** The injection plan for a canonical HTTPS destination host, cached per host. */
  planFor(host: string): HostPlan {
    let plan = this.plans.get(host)
    if (plan) return plan
    const set: { header: string; headerLower: string; value: string; credential: string }[] = []
    const swap = new Map<string, string>()
    const names: string[] = []
    for (const cred of this.credentials) {
      let matched = false
      for (const rule of cred.rules) {
        if (!hostMatches(rule.matcher, host)) continue
        matched = true
        // A later rule for the same header wins, as a later assignment would.
        const prior = set.findIndex((s) => s.headerLower === rule.headerLower)
        if (prior >= 0) set.splice(prior, 1)
        set.push({ header: rule.header, headerLower: rule.headerLower, value: rule.value, credential: cred.name })
      }
      if (matched) {
        swap.set(cred.placeholder, cred.secret)
        names.push(cred.name)
      }
    }
    plan = { set, setLower: new Set(set.map((s) => s.headerLower)), swap, credentials: names }
    if (this.plans.size >= PLAN_CACHE_MAX) this.plans.clear()
    this.plans.set(host, plan)
    return plan
  }
}

/**
 * Validates a policy and compiles it. `placeholderFor` gives the placeholder of a credential
 * name for this source. Errors name the field, e.g.
 * `credentials.OPENAI_API_KEY.inject[0].as.format`, prefixed by `field` when given; they
 * never include a real value.
 */
export function compilePolicy(input: unknown, placeholderFor: (credential: string) => string, field = ''): CompiledPolicy {
  const at = (f: string) => (field ? `${field}.${f}` : f)
  if (!isObject(input)) throw new ValidationError(field || 'policy', 'must be an object')
  rejectUnknown(input, ['env', 'credentials', 'unmatchedPlaceholder'], field)
  const env = input.env ?? {}
  if (!isObject(env)) throw new ValidationError(at('env'), 'must be a map of names to values')
  for (const [k, v] of Object.entries(env)) {
    if (typeof v !== 'string') throw new ValidationError(at(`env.${k}`), 'must be a string')
  }
  const unmatched = input.unmatchedPlaceholder ?? 'forward'
  if (unmatched !== 'forward' && unmatched !== 'block') {
    throw new ValidationError(at('unmatchedPlaceholder'), 'must be "forward" or "block"')
  }
  const creds = input.credentials ?? {}
  if (!isObject(creds)) throw new ValidationError(at('credentials'), 'must be a map of env var names to credential policies')
  const compiled: CompiledCredential[] = []
  for (const [name, cred] of Object.entries(creds)) {
    const cf = at(`credentials.${name}`)
    if (!ENV_NAME.test(name)) throw new ValidationError(cf, 'the key must be an env var name (letters, digits, underscore; not starting with a digit)')
    if (!isObject(cred)) throw new ValidationError(cf, 'must be an object with source and inject')
    rejectUnknown(cred, ['source', 'inject'], cf)
    if (!isObject(cred.source)) throw new ValidationError(`${cf}.source`, 'must be an object like { env: "NAME" }')
    rejectUnknown(cred.source, ['env'], `${cf}.source`)
    const envName = cred.source.env
    if (typeof envName !== 'string' || envName === '') throw new ValidationError(`${cf}.source.env`, 'must name an entry of env')
    if (!Object.hasOwn(env, envName)) throw new ValidationError(`${cf}.source.env`, `names "${envName}", which is not in env`)
    const secret = env[envName] as string
    if (secret === '') throw new ValidationError(at(`env.${envName}`), 'is empty')
    if (!HEADER_VALUE.test(secret)) {
      throw new ValidationError(at(`env.${envName}`), 'contains characters a header value cannot carry (control characters or line breaks)')
    }
    if (!Array.isArray(cred.inject) || cred.inject.length === 0) throw new ValidationError(`${cf}.inject`, 'must be a non-empty list of rules')
    const rules = cred.inject.map((rule: unknown, i: number): CompiledRule => {
      const rf = `${cf}.inject[${i}]`
      if (!isObject(rule)) throw new ValidationError(rf, 'must be an object with hosts and as')
      rejectUnknown(rule, ['hosts', 'as'], rf)
      const matcher = compileHostPatterns(rule.hosts, `${rf}.hosts`)
      if (!isObject(rule.as)) throw new ValidationError(`${rf}.as`, 'must be an object like { header: "Authorization", format: "Bearer ${value}" }')
      rejectUnknown(rule.as, ['header', 'format'], `${rf}.as`)
      const { header, format } = rule.as
      if (typeof header !== 'string' || !TOKEN.test(header)) throw new ValidationError(`${rf}.as.header`, 'must be a header name')
      if (RESERVED_HEADERS.has(header.toLowerCase())) throw new ValidationError(`${rf}.as.header`, `"${header}" is managed by the proxy and cannot be set`)
      if (typeof format !== 'string' || !format.includes('${value}')) throw new ValidationError(`${rf}.as.format`, 'must contain ${value}')
      if (!HEADER_VALUE.test(format)) throw new ValidationError(`${rf}.as.format`, 'contains characters a header value cannot carry')
      return { matcher, header, headerLower: header.toLowerCase(), value: format.split('${value}').join(secret) }
    })
    compiled.push({ name, placeholder: placeholderFor(name), secret, rules })
  }
  return new CompiledPolicy(compiled, unmatched)
}
