/**
 * The vendored API specs of Cloud Hypervisor (OpenAPI 3.0) and Firecracker (Swagger 2.0,
 * converted with swagger2openapi) as request and response checkers. Used by the contract tests
 * (every planned call must validate) and by the fake VMM (every request it receives must).
 *
 * Stricter than the specs by one rule: an object schema that lists its properties accepts no
 * others (the specs leave `additionalProperties` open, so a misspelt field would pass and the
 * real VMM would reject it or, worse, ignore it). Integer formats (int8 … int64, uint8) are
 * checked as ranges; other formats are annotations.
 */
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import Ajv, { type ValidateFunction } from 'ajv'
import s2o from 'swagger2openapi'
import YAML from 'yaml'

export type SpecName = 'firecracker' | 'cloud-hypervisor'

export const SPEC_FILES: Record<SpecName, string> = {
  firecracker: fileURLToPath(new URL('../../../../specs/firecracker-swagger.yaml', import.meta.url)),
  'cloud-hypervisor': fileURLToPath(new URL('../../../../specs/cloud-hypervisor-openapi.yaml', import.meta.url)),
}

type Json = Record<string, unknown>

export interface Operation {
  method: string
  /** The spec's path template, e.g. `/drives/{drive_id}`. */
  template: string
  operationId?: string
  match(path: string): Record<string, string> | undefined
  params: Record<string, ValidateFunction>
  body?: { required: boolean; validate: ValidateFunction }
  responses: Record<string, ValidateFunction | null>
}

export interface CheckResult {
  ok: boolean
  template?: string
  operationId?: string
  errors: string[]
}

const INT_RANGES: Record<string, [number, number]> = {
  int8: [-(2 ** 7), 2 ** 7 - 1],
  uint8: [0, 2 ** 8 - 1],
  int16: [-(2 ** 15), 2 ** 15 - 1],
  int32: [-(2 ** 31), 2 ** 31 - 1],
  int64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
}

/** Closes every object schema that lists properties; walks keywords, never property names. */
function tighten(schema: unknown): void {
  if (!schema || typeof schema !== 'object') return
  const s = schema as Json
  if (s.properties && typeof s.properties === 'object') {
    for (const sub of Object.values(s.properties as Json)) tighten(sub)
    if (s.additionalProperties === undefined) s.additionalProperties = false
  }
  if (s.items) tighten(s.items)
  if (s.additionalProperties && typeof s.additionalProperties === 'object') tighten(s.additionalProperties)
  for (const k of ['allOf', 'anyOf', 'oneOf']) if (Array.isArray(s[k])) for (const sub of s[k] as unknown[]) tighten(sub)
  if (s.not) tighten(s.not)
}

/** Points the document-local refs of a schema lifted out of the document at the registered copy. */
function rebase(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(rebase)
  if (!schema || typeof schema !== 'object') return schema
  const out: Json = {}
  for (const [k, v] of Object.entries(schema as Json)) {
    out[k] = k === '$ref' && typeof v === 'string' && v.startsWith('#/') ? `spec.json${v}` : rebase(v)
  }
  return out
}

function collectFormats(node: unknown, into: Set<string>): void {
  if (Array.isArray(node)) for (const n of node) collectFormats(n, into)
  else if (node && typeof node === 'object') {
    for (const [k, v] of Object.entries(node as Json)) {
      if (k === 'format' && typeof v === 'string') into.add(v)
      else collectFormats(v, into)
    }
  }
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

function errorsText(validate: ValidateFunction, where: string): string[] {
  return (validate.errors ?? []).map((e) => `${where}${e.instancePath || ''} ${e.message ?? 'is invalid'}${e.params && 'additionalProperty' in e.params ? ` (${String(e.params.additionalProperty)})` : ''}`)
}

export class Contract {
  readonly name: SpecName
  /** The base path of the API on the wire (`/api/v1` for Cloud Hypervisor). */
  readonly basePath: string
  readonly operations: Operation[]
  readonly document: Json

  private constructor(name: SpecName, document: Json, basePath: string, operations: Operation[]) {
    this.name = name
    this.document = document
    this.basePath = basePath
    this.operations = operations
  }

  static async load(name: SpecName): Promise<Contract> {
    let doc = YAML.parse(await readFile(SPEC_FILES[name], 'utf8')) as Json
    if (doc.swagger === '2.0') doc = (await s2o.convertObj(doc, { patch: true, warnOnly: true })).openapi
    const servers = (doc.servers as { url?: string }[] | undefined) ?? []
    const basePath = new URL(servers[0]?.url ?? 'http://localhost/', 'http://localhost').pathname.replace(/\/$/, '')

    const ajv = new Ajv({ strict: false, allErrors: true })
    const formats = new Set<string>()
    collectFormats(doc, formats)
    for (const f of formats) {
      const range = INT_RANGES[f]
      if (range) ajv.addFormat(f, { type: 'number', validate: (n: number) => Number.isInteger(n) && n >= range[0] && n <= range[1] })
      else ajv.addFormat(f, true)
    }
    const components = structuredClone((doc.components as Json | undefined) ?? {})
    for (const s of Object.values((components.schemas as Json | undefined) ?? {})) tighten(s)
    ajv.addSchema({ $id: 'spec.json', components })
    // Compiled on first use: a fake VMM process needs a handful of the spec's operations.
    const compile = (schema: unknown): ValidateFunction => {
      let compiled: ValidateFunction | undefined
      const lazy = ((data: unknown) => {
        if (!compiled) {
          const copy = structuredClone(schema)
          tighten(copy)
          compiled = ajv.compile(rebase(copy) as Json)
        }
        const valid = compiled(data)
        lazy.errors = compiled.errors
        return valid
      }) as ValidateFunction
      return lazy
    }

    const operations: Operation[] = []
    for (const [template, item] of Object.entries(doc.paths as Json)) {
      for (const [method, opUnknown] of Object.entries(item as Json)) {
        if (!['get', 'put', 'patch', 'post', 'delete'].includes(method)) continue
        const op = opUnknown as Json
        const names: string[] = []
        const regex = new RegExp(
          `^${template
            .split(/(\{[^}]+\})/)
            .map((part) => {
              const m = /^\{([^}]+)\}$/.exec(part)
              if (!m) return escapeRegex(part)
              names.push(m[1] as string)
              return '([^/]+)'
            })
            .join('')}$`,
        )
        const params: Record<string, ValidateFunction> = {}
        for (const p of (op.parameters as Json[] | undefined) ?? []) {
          if (p.in === 'path') params[p.name as string] = compile(p.schema ?? { type: 'string' })
        }
        const rb = op.requestBody as Json | undefined
        const bodySchema = (rb?.content as Json | undefined)?.['application/json'] as Json | undefined
        const responses: Record<string, ValidateFunction | null> = {}
        for (const [status, r] of Object.entries((op.responses as Json | undefined) ?? {})) {
          const schema = (((r as Json).content as Json | undefined)?.['application/json'] as Json | undefined)?.schema
          responses[status] = schema ? compile(schema) : null
        }
        operations.push({
          method: method.toUpperCase(),
          template,
          ...(typeof op.operationId === 'string' ? { operationId: op.operationId } : {}),
          match: (path) => {
            const m = regex.exec(path)
            if (!m) return undefined
            return Object.fromEntries(names.map((n, i) => [n, decodeURIComponent(m[i + 1] as string)]))
          },
          params,
          ...(bodySchema ? { body: { required: rb?.required === true, validate: compile(bodySchema.schema ?? {}) } } : {}),
          responses,
        })
      }
    }
    return new Contract(name, doc, basePath, operations)
  }

  find(method: string, path: string): { op: Operation; params: Record<string, string> } | undefined {
    for (const op of this.operations) {
      if (op.method !== method.toUpperCase()) continue
      const params = op.match(path)
      if (params) return { op, params }
    }
    return undefined
  }

  /** Checks a request: the path and method exist, path parameters and the JSON body validate. */
  checkRequest(call: { method: string; path: string; body?: unknown }): CheckResult {
    const found = this.find(call.method, call.path)
    if (!found) {
      const other = this.operations.filter((o) => o.match(call.path)).map((o) => o.method)
      return { ok: false, errors: [other.length ? `${call.method} is not allowed on ${call.path} (only ${other.join(', ')})` : `no such path ${call.path}`] }
    }
    const { op, params } = found
    const errors: string[] = []
    for (const [name, value] of Object.entries(params)) {
      const v = op.params[name]
      if (v && !v(value)) errors.push(...errorsText(v, `path parameter ${name}`))
    }
    if (call.body === undefined) {
      if (op.body?.required) errors.push('a request body is required')
    } else if (!op.body) {
      errors.push(`${op.method} ${op.template} takes no request body`)
    } else if (!op.body.validate(call.body)) {
      errors.push(...errorsText(op.body.validate, 'body'))
    }
    return { ok: errors.length === 0, template: op.template, ...(op.operationId ? { operationId: op.operationId } : {}), errors }
  }

  /** Throws when a request does not validate (the form a driver's `checkCall` takes). */
  assertRequest(call: { method: string; path: string; body?: unknown }): void {
    const r = this.checkRequest(call)
    if (!r.ok) throw new Error(`${this.name} spec: ${call.method} ${call.path}: ${r.errors.join('; ')}`)
  }

  /** Checks a response of `method path` against the spec's response for its status (or `default`). */
  checkResponse(method: string, path: string, status: number, body: unknown): CheckResult {
    const found = this.find(method, path)
    if (!found) return { ok: false, errors: [`no such operation ${method} ${path}`] }
    const { op } = found
    const key = String(status) in op.responses ? String(status) : 'default' in op.responses ? 'default' : undefined
    if (key === undefined) return { ok: false, template: op.template, errors: [`status ${status} is not among the documented responses of ${method} ${op.template}`] }
    const v = op.responses[key]
    if (!v) return { ok: body === undefined, template: op.template, errors: body === undefined ? [] : [`status ${status} has no documented body`] }
    return v(body) ? { ok: true, template: op.template, errors: [] } : { ok: false, template: op.template, errors: errorsText(v, `response ${status}`) }
  }
}
