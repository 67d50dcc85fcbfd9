/**
 * Changes to an instance that need no restart (hypeman's PATCH /instances/{id}). Today that is
 * the real values behind its credentials: `env` keys that some credential's `source.env` names,
 * merged into the instance's env. The egress proxy swaps the new value in from the next request of
 * a running instance; a stopped or standby one gets it when its next start or restore registers
 * the policy from the record. The guest sees nothing change: it only ever held placeholders.
 */
import { NotSupportedError, ValidationError } from '@hypeman-ts/common'
import type { InstanceContext } from './context.js'
import { operate } from './lifecycle.js'
import type { Instance } from './model.js'
import { registerEgress } from './network.js'
import { validateEnv } from './params.js'

export interface UpdateInstanceParams {
  /** New real values for credential sources (merged); other keys need a new instance. */
  env?: Record<string, string>
}

/** Fields of the spec's UpdateInstanceRequest this library has no feature for yet. */
const NOT_SUPPORTED = ['auto_standby', 'autoStandby', 'health_check', 'healthCheck', 'restart_policy', 'restartPolicy', 'ttl', 'expires_at', 'expiresAt']

export async function updateInstance(cx: InstanceContext, idOrName: string, params: UpdateInstanceParams): Promise<Instance> {
  if (typeof params !== 'object' || params === null || Array.isArray(params)) throw new ValidationError('params', 'must be an object')
  for (const key of Object.keys(params)) {
    if (NOT_SUPPORTED.includes(key)) throw new NotSupportedError(`${key} is not supported by hypeman-ts yet`, { field: key })
    if (key !== 'env') throw new ValidationError(key, 'is not a field of an instance update (env)')
  }
  if (params.env === undefined) throw new ValidationError('env', 'is required: the credential source values to change')
  const env = validateEnv(params.env)
  if (Object.keys(env).length === 0) throw new ValidationError('env', 'must name at least one variable')
  return operate(cx, idOrName, 'update', async (id, found) => {
    const bound = new Set(Object.values(found.spec.credentials).map((c) => c.source.env))
    for (const key of Object.keys(env)) {
      if (!bound.has(key)) {
        throw new ValidationError(`env.${key}`, `is not the source of any credential of instance ${found.name}; only those can change without a new instance${bound.size ? ` (${[...bound].join(', ')})` : ''}`)
      }
    }
    const record = await cx.files.withLock(id, async () => {
      const r = (await cx.files.read(id))!
      r.spec.env = { ...r.spec.env, ...env }
      await cx.files.write(r)
      return r
    })
    await cx.files.log(id, `credential values updated: ${Object.keys(env).join(', ')}`)
    // Running (or paused): the proxy's policy now. Otherwise the next start or restore registers it.
    if (cx.live.get(id) && record.network && record.spec.network.egress.enabled) await registerEgress(cx, record)
  })
}
