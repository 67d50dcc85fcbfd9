/** Validation shared by the images and instances APIs (the OpenAPI spec's common schemas). */
import { ValidationError } from '@hypeman-ts/common'

const TAG_KEY = /^[A-Za-z0-9 _.:/=+@-]{1,128}$/
const TAG_VALUE = /^[A-Za-z0-9 _.:/=+@-]{0,256}$/

/** The spec's `Tags`: at most 50 pairs; restricted characters in keys and values. */
export function validateTags(tags: unknown, field = 'tags'): Record<string, string> {
  if (tags === undefined || tags === null) return {}
  if (typeof tags !== 'object' || Array.isArray(tags)) throw new ValidationError(field, 'must be an object of string values')
  const entries = Object.entries(tags as Record<string, unknown>)
  if (entries.length > 50) throw new ValidationError(field, `at most 50 tags are allowed, got ${entries.length}`)
  for (const [k, v] of entries) {
    if (!TAG_KEY.test(k)) throw new ValidationError(`${field}.${k}`, 'tag keys are 1-128 characters of letters, digits, spaces and _.:/=+@-')
    if (typeof v !== 'string' || !TAG_VALUE.test(v)) {
      throw new ValidationError(`${field}.${k}`, 'tag values are strings of at most 256 letters, digits, spaces and _.:/=+@-')
    }
  }
  return { ...(tags as Record<string, string>) }
}

/** True when every pair of `filter` is in `tags` (the spec's tag filter on list endpoints). */
export function matchesTags(tags: Record<string, string>, filter: Record<string, string> | undefined): boolean {
  return !filter || Object.entries(filter).every(([k, v]) => tags[k] === v)
}

/** A record by its id, else by its name (volumes, devices: the spec's `{id}` takes either); `notFound` names what is missing. */
export async function findByIdOrName<R extends { name: string }>(
  store: { read(id: string): Promise<R | undefined>; all(): Promise<R[]> },
  idOrName: unknown,
  field: string,
  notFound: (ref: string) => Error,
): Promise<R> {
  if (typeof idOrName !== 'string' || idOrName === '') throw new ValidationError(field, 'is required')
  const found = (await store.read(idOrName)) ?? (await store.all()).find((r) => r.name === idOrName)
  if (!found) throw notFound(idOrName)
  return found
}
