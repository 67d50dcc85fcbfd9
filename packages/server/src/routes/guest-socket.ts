/**
 * What hypeman's two WebSockets into a guest (exec, cp) share: the instance is resolved and its
 * state checked BEFORE the upgrade, so a missing instance is a plain 404 and a wrong state a 409
 * the client can read (after the upgrade, only the socket's own messages could say it).
 */
import type { FastifyRequest } from 'fastify'
import type { RawData } from 'ws'
import { ConflictError, ValidationError } from '@hypeman-ts/common'
import { ALLOWED_STATES, type Hypeman } from '@hypeman-ts/core'
import { params } from './types.js'

type WithInstance = FastifyRequest & { instanceId?: string }

/** The preHandler of a guest WebSocket: resolves `{id}` and checks that `op` may run now. */
export function guestSocketCheck(hm: Hypeman, op: 'exec' | 'copy'): (req: FastifyRequest) => Promise<void> {
  return async (req) => {
    const inst = await hm.instances.get(params(req).id!)
    if (!ALLOWED_STATES[op].includes(inst.state)) {
      throw new ConflictError(`instance must be running (current state: ${inst.state})`, { field: 'state' })
    }
    ;(req as WithInstance).instanceId = inst.id
  }
}

/** The full id `guestSocketCheck` resolved. */
export const instanceIdOf = (req: FastifyRequest): string => (req as WithInstance).instanceId!

export function toBuffer(d: RawData): Buffer {
  if (Buffer.isBuffer(d)) return d
  if (Array.isArray(d)) return Buffer.concat(d)
  return Buffer.from(d)
}

/** The first message of a guest WebSocket: a JSON object (its fields are each protocol's to check). */
export function parseFirstMessage(text: string): Record<string, unknown> {
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch {
    throw new ValidationError('request', 'the first message must be JSON')
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new ValidationError('request', 'must be a JSON object')
  return raw as Record<string, unknown>
}
