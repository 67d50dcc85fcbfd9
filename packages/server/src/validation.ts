/**
 * Request validation with the spec's own JSON Schemas (OpenAPI 3.1 = JSON Schema 2020-12).
 *
 * Two validators: bodies are checked as sent (a string where the spec says integer is a 400,
 * never silently coerced), while path parameters and queries arrive as text and are coerced to
 * the spec's types (`tail=10` → 10, `follow=true` → true) with the spec's defaults applied.
 * A failure names the field in the client's own spelling (`network.bandwidth_download`).
 */
import Ajv2020, { type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js'
import { ValidationError } from '@hypeman-ts/common'
import type { Spec } from './spec.js'

export type HttpPart = 'body' | 'querystring' | 'params' | 'headers'

function makeAjv(spec: Spec, coerce: boolean): Ajv2020 {
  const ajv = new Ajv2020({
    // The spec carries OpenAPI keywords (example, nullable, discriminator) Ajv does not know.
    strict: false,
    allErrors: false,
    coerceTypes: coerce ? 'array' : false,
    useDefaults: coerce,
    // Sizes like int64 and date-time are checked by core where they matter; the spec's other
    // formats (password, binary) are annotations.
    validateFormats: false,
  })
  ajv.addSchema(spec.document)
  return ajv
}

export interface Validators {
  compile(schema: object, part: HttpPart): ValidateFunction
}

export function createValidators(spec: Spec): Validators {
  const strict = makeAjv(spec, false)
  const coercing = makeAjv(spec, true)
  return { compile: (schema, part) => (part === 'body' ? strict : coercing).compile(schema) }
}

/** The first schema error as our ValidationError, naming the field as the client spelled it. */
export function schemaError(errors: ErrorObject[], part: string): ValidationError {
  const e = errors[0]
  if (!e) return new ValidationError(part, 'is invalid')
  const path = e.instancePath.split('/').slice(1).map(unescapePointer)
  if (e.keyword === 'required') path.push(String(e.params.missingProperty))
  if (e.keyword === 'additionalProperties') path.push(String(e.params.additionalProperty))
  // A bad map key (tags) is reported on the key itself, under `propertyName`.
  if (e.propertyName !== undefined) path.push(e.propertyName)
  const field = path.length ? path.join('.') : part
  let message = e.message ?? 'is invalid'
  if (e.keyword === 'enum') message = `must be one of ${(e.params.allowedValues as unknown[]).join(', ')}`
  if (e.keyword === 'required') message = 'is required'
  return new ValidationError(field, message, { details: { in: part } })
}

const unescapePointer = (s: string) => s.replace(/~1/g, '/').replace(/~0/g, '~')
