/**
 * The OpenAPI document the server speaks (hypeman's `openapi.yaml`, shipped in this package's
 * `spec/`), read once at start and turned into one route description per operation: method,
 * Fastify path, and the JSON Schemas of its path parameters, query and body.
 *
 * Every operation of the spec becomes a route, so what the server validates and what the spec
 * says cannot drift apart, and an operation with no handler yet answers 501 instead of 404.
 */
import { readFileSync } from 'node:fs'
import YAML from 'yaml'

/** The `$id` the spec's components are registered under in the validator. */
export const SPEC_ID = 'hypeman-openapi'

type Schema = Record<string, unknown>

export interface Operation {
  operationId: string
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE'
  /** Fastify's form: /instances/:id/logs */
  url: string
  params?: Schema
  querystring?: Schema
  /** Absent when the operation has no JSON body (raw or multipart bodies are not validated here). */
  body?: Schema
  bodyRequired: boolean
}

export interface Spec {
  version: string
  /** `{ $id, components }`: what `$ref`s in route schemas point into. */
  document: Schema
  operations: Operation[]
}

const METHODS = ['get', 'post', 'put', 'patch', 'delete'] as const

/** The spec shipped with the package: `spec/` next to `src/` and `dist/`. */
export function defaultSpecPath(): string {
  return new URL('../spec/hypeman-openapi.yaml', import.meta.url).pathname
}

/** This package's version (from src/ or dist/ alike, both one level below the package). */
export function serverVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: string }).version ?? 'unknown'
  } catch {
    return 'unknown'
  }
}

export function loadSpec(path = defaultSpecPath()): Spec {
  const doc = YAML.parse(readFileSync(path, 'utf8')) as {
    info: { version: string }
    components: { schemas: Record<string, Schema> }
    paths: Record<string, Record<string, RawOperation | RawParameter[]>>
  }
  const operations: Operation[] = []
  for (const [path, item] of Object.entries(doc.paths)) {
    const shared = (item.parameters as RawParameter[] | undefined) ?? []
    for (const m of METHODS) {
      const op = item[m] as RawOperation | undefined
      if (!op) continue
      operations.push(toOperation(path, m, op, shared))
    }
  }
  return { version: doc.info.version, document: { $id: SPEC_ID, components: doc.components }, operations }
}

interface RawParameter {
  name: string
  in: 'path' | 'query' | 'header' | 'cookie'
  required?: boolean
  schema?: Schema
}

interface RawOperation {
  operationId: string
  parameters?: RawParameter[]
  requestBody?: { required?: boolean; content?: Record<string, { schema?: Schema }> }
}

function toOperation(path: string, method: (typeof METHODS)[number], op: RawOperation, shared: RawParameter[]): Operation {
  const params = [...shared, ...(op.parameters ?? [])]
  const objectOf = (where: RawParameter['in']): Schema | undefined => {
    const ps = params.filter((p) => p.in === where)
    if (ps.length === 0) return undefined
    return {
      type: 'object',
      properties: Object.fromEntries(ps.map((p) => [p.name, rebase(p.schema ?? { type: 'string' })])),
      required: ps.filter((p) => p.required || where === 'path').map((p) => p.name),
    }
  }
  const json = op.requestBody?.content?.['application/json']?.schema
  const out: Operation = {
    operationId: op.operationId,
    method: method.toUpperCase() as Operation['method'],
    url: path.replace(/\{([^}]+)\}/g, ':$1'),
    bodyRequired: op.requestBody?.required === true,
  }
  const p = objectOf('path')
  const q = objectOf('query')
  if (p) out.params = p
  if (q) out.querystring = q
  if (json) out.body = rebase(json)
  return out
}

/** Points the spec's local `$ref`s (`#/components/...`) at the registered document. */
function rebase<T>(schema: T): T {
  if (Array.isArray(schema)) return schema.map(rebase) as T
  if (!schema || typeof schema !== 'object') return schema
  return Object.fromEntries(
    Object.entries(schema).map(([k, v]) => [k, k === '$ref' && typeof v === 'string' && v.startsWith('#/') ? `${SPEC_ID}${v}` : rebase(v)]),
  ) as T
}
