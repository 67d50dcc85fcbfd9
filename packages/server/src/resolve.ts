/**
 * What an `{id}` in a path may be, as hypeman resolves it: the full id, the name, or a prefix of
 * exactly one id. An ambiguous prefix is a 409 (`ambiguous`), never a guess.
 */
import { HypemanError, isHypemanError, NotFoundError } from '@hypeman-ts/common'
import type { Hypeman, Instance } from '@hypeman-ts/core'

export async function resolveInstance(hm: Hypeman, idOrName: string): Promise<Instance> {
  try {
    return await hm.instances.get(idOrName)
  } catch (err) {
    if (!isHypemanError(err, 'not_found')) throw err
  }
  // Ids are lowercase CUID2s; anything else cannot be a prefix of one.
  if (/^[a-z0-9]+$/.test(idOrName)) {
    const matches = (await hm.instances.list()).filter((i) => i.id.startsWith(idOrName))
    if (matches.length === 1) return matches[0]!
    if (matches.length > 1) {
      throw new HypemanError('ambiguous', `"${idOrName}" is a prefix of ${matches.length} instance ids; use more of the id`, { field: 'id' })
    }
  }
  throw new NotFoundError(`instance ${idOrName} not found`, { field: 'id' })
}
