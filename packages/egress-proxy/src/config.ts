/**
 * The standalone proxy's policy file (JSON or YAML; JSON is read as YAML). Keys are snake_case,
 * `sources[].credentials` is exactly the create API's `credentials` object, and relative paths
 * are relative to the file. Parsing validates everything, naming the field
 * (`sources[0].credentials.OPENAI_API_KEY.inject[0].as.format`), before anything starts.
 */
import { readFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { ValidationError } from '@hypeman-ts/common'
import { parse as parseYaml } from 'yaml'
import { parseHostServices, parsePorts } from './guard.js'
import { compilePolicy, type SourcePolicy } from './policy.js'
import { type ListenAddress, parseListen, type ProxyLimits, type ProxyOptions } from './proxy.js'
import { canonicalSource } from './sources.js'

export interface ProxyConfig {
  /** Options for createProxy, without policies and logger. */
  options: Omit<ProxyOptions, 'policies' | 'logger' | 'lookup'>
  /** Where the CLI serves GET /metrics, if anywhere. */
  metricsListen?: ListenAddress
  /** Sources in file order, each with its canonical match. */
  sources: Array<{ match: string; policy: SourcePolicy }>
}

/** File keys of the settings other than sources, by option name. */
const FILE_KEYS: Record<string, string> = {
  listen: 'listen',
  transparentListen: 'transparent_listen',
  transparentPorts: 'transparent_ports',
  stateDir: 'ca_dir',
  upstreamCa: 'upstream_ca',
  allowDestinations: 'allow_destinations',
  allowPorts: 'allow_ports',
  allowHostServices: 'allow_host_services',
  dnsCacheTtl: 'dns_cache_ttl',
  leafValidity: 'leaf_validity',
  leafRenewBefore: 'leaf_renew_before',
  limits: 'limits',
}
const TOP = [...Object.values(FILE_KEYS), 'metrics_listen', 'sources']
const LIMITS: Record<string, keyof ProxyLimits> = {
  max_connections: 'maxConnections',
  max_connections_per_source: 'maxConnectionsPerSource',
  max_header_size: 'maxHeaderSize',
  headers_timeout: 'headersTimeout',
  idle_timeout: 'idleTimeout',
  handshake_timeout: 'handshakeTimeout',
  upstream_connect_timeout: 'upstreamConnectTimeout',
  upstream_headers_timeout: 'upstreamHeadersTimeout',
  upstream_body_timeout: 'upstreamBodyTimeout',
  upstream_idle_timeout: 'upstreamIdleTimeout',
  upstream_connections_per_origin: 'upstreamConnectionsPerOrigin',
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function str(v: unknown, field: string): string {
  if (typeof v !== 'string' || v === '') throw new ValidationError(field, 'must be a non-empty string')
  return v
}

function durationOrSize(v: unknown, field: string): string | number {
  if (typeof v !== 'string' && typeof v !== 'number') throw new ValidationError(field, 'must be a string like "30s" / "16KB" or a number')
  return v
}

/**
 * Parses the text of a policy file. `baseDir` resolves relative paths; `readCa` reads the
 * upstream_ca file (the CLI reads it from disk).
 */
export async function parseConfig(text: string, baseDir: string, readCa: (path: string) => Promise<string> = (p) => readFile(p, 'utf8')): Promise<ProxyConfig> {
  let doc: unknown
  try {
    doc = parseYaml(text)
  } catch (err) {
    throw new ValidationError('config', `not valid JSON or YAML: ${(err as Error).message}`)
  }
  if (!isObject(doc)) throw new ValidationError('config', 'must be a mapping')
  for (const key of Object.keys(doc)) if (!TOP.includes(key)) throw new ValidationError(key, `unknown setting (expected one of: ${TOP.join(', ')})`)
  const options: ProxyConfig['options'] = { stateDir: resolve(baseDir, str(doc.ca_dir, 'ca_dir')) }
  if (doc.listen !== undefined) options.listen = doc.listen === null ? null : str(doc.listen, 'listen')
  if (doc.transparent_listen !== undefined && doc.transparent_listen !== null) options.transparentListen = str(doc.transparent_listen, 'transparent_listen')
  if (doc.transparent_ports !== undefined) {
    if (!isObject(doc.transparent_ports)) throw new ValidationError('transparent_ports', 'must be { https: 443, http: 80 }')
    for (const k of Object.keys(doc.transparent_ports)) if (k !== 'https' && k !== 'http') throw new ValidationError(`transparent_ports.${k}`, 'unknown setting (expected https or http)')
    options.transparentPorts = doc.transparent_ports as { https?: number; http?: number }
  }
  if (doc.upstream_ca !== undefined) {
    const path = resolve(baseDir, str(doc.upstream_ca, 'upstream_ca'))
    try {
      options.upstreamCa = await readCa(path)
    } catch (err) {
      throw new ValidationError('upstream_ca', `cannot read ${path}: ${(err as Error).message}`)
    }
    if (!options.upstreamCa.includes('-----BEGIN CERTIFICATE-----')) throw new ValidationError('upstream_ca', `${path} holds no PEM certificate`)
  }
  if (doc.allow_destinations !== undefined) {
    if (!Array.isArray(doc.allow_destinations)) throw new ValidationError('allow_destinations', 'must be a list of CIDRs')
    options.allowDestinations = doc.allow_destinations.map((c, i) => canonicalSource(c, `allow_destinations[${i}]`).key)
  }
  if (doc.allow_ports !== undefined) options.allowPorts = parsePorts(doc.allow_ports, 'allow_ports')
  if (doc.allow_host_services !== undefined) options.allowHostServices = parseHostServices(doc.allow_host_services, 'allow_host_services')
  if (doc.dns_cache_ttl !== undefined) options.dnsCacheTtl = durationOrSize(doc.dns_cache_ttl, 'dns_cache_ttl')
  if (doc.leaf_validity !== undefined) options.leafValidity = durationOrSize(doc.leaf_validity, 'leaf_validity')
  if (doc.leaf_renew_before !== undefined) options.leafRenewBefore = durationOrSize(doc.leaf_renew_before, 'leaf_renew_before')
  if (doc.limits !== undefined) {
    if (!isObject(doc.limits)) throw new ValidationError('limits', 'must be a mapping')
    const limits: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(doc.limits)) {
      const name = LIMITS[k]
      if (!name) throw new ValidationError(`limits.${k}`, `unknown limit (expected one of: ${Object.keys(LIMITS).join(', ')})`)
      limits[name] = v
    }
    options.limits = limits as ProxyLimits
  }
  const metricsListen = doc.metrics_listen === undefined || doc.metrics_listen === null ? undefined : parseListen(str(doc.metrics_listen, 'metrics_listen'), 'metrics_listen')
  const sources: ProxyConfig['sources'] = []
  const seen = new Map<string, number>()
  const list = doc.sources ?? []
  if (!Array.isArray(list)) throw new ValidationError('sources', 'must be a list')
  list.forEach((entry: unknown, i: number) => {
    const field = `sources[${i}]`
    if (!isObject(entry)) throw new ValidationError(field, 'must be a mapping with match, env and credentials')
    const { match, unmatched_placeholder, ...rest } = entry
    const key = canonicalSource(match, `${field}.match`).key
    const prior = seen.get(key)
    if (prior !== undefined) throw new ValidationError(`${field}.match`, `"${key}" is already used by sources[${prior}]`)
    seen.set(key, i)
    const policy = { ...rest, ...(unmatched_placeholder === undefined ? {} : { unmatchedPlaceholder: unmatched_placeholder }) } as SourcePolicy
    try {
      compilePolicy(policy, () => '', field)
    } catch (err) {
      // The file spells this option in snake_case.
      if (err instanceof ValidationError && err.field.endsWith('unmatchedPlaceholder')) {
        throw new ValidationError(`${field}.unmatched_placeholder`, 'must be "forward" or "block"')
      }
      throw err
    }
    sources.push({ match: key, policy })
  })
  return { options, ...(metricsListen ? { metricsListen } : {}), sources }
}

/** The file keys whose values differ between two configs, sources aside: these need a restart. */
export function restartOnlyChanges(a: ProxyConfig, b: ProxyConfig): string[] {
  const changed = Object.keys(FILE_KEYS).filter(
    (k) => JSON.stringify(a.options[k as keyof ProxyConfig['options']]) !== JSON.stringify(b.options[k as keyof ProxyConfig['options']]),
  )
  const names = changed.map((k) => FILE_KEYS[k]!)
  if (JSON.stringify(a.metricsListen) !== JSON.stringify(b.metricsListen)) names.push('metrics_listen')
  return names
}

/** Reads and parses a policy file. */
export async function loadConfig(path: string): Promise<ProxyConfig> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new ValidationError('config', `cannot read ${path}: ${(err as Error).message}`)
  }
  return parseConfig(text, dirname(resolve(path)))
}
