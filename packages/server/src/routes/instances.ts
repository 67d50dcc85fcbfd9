/**
 * The instance operations of the spec that core supports: create, list, get, update (credential
 * rotation), delete, start, stop, standby, restore, fork, stat, stats, wait. Core resolves every `{id}`
 * (id, name or unique prefix) and checks the state (409 otherwise).
 */
import type { FastifyRequest } from 'fastify'
import { NotSupportedError } from '@hypeman-ts/common'
import { instanceStatsToWire, instanceToWire, pathInfoToWire, type InstanceState } from '@hypeman-ts/core'
import { createInstanceFromWire, updateInstanceFromWire } from '../wire.js'
import { clientGone, noIdleTimeout } from './connection.js'
import { body, params, query, type Handler, type Handlers, type RouteContext } from './types.js'

function refuseFields(b: Record<string, unknown>, fields: string[], what: string): void {
  for (const f of fields) {
    if (b[f] !== undefined && b[f] !== null) throw new NotSupportedError(`${f}: ${what} is not supported by hypeman-ts yet`, { field: f })
  }
}

export function instanceHandlers({ hm, shutdown, allowLocalLayouts }: RouteContext): Handlers {
  // Core resolves `{id}` itself (id, name or unique prefix), after it has checked the parameters.
  const idOf = (req: FastifyRequest) => params(req).id!
  /** A state change: refuse body fields core cannot honour, then run it (boots take longer than the idle timeout). */
  const lifecycle =
    (op: 'start' | 'stop' | 'standby' | 'restore', unsupported: string[] = [], what = ''): Handler =>
    async (req, reply) => {
      refuseFields(body(req), unsupported, what)
      noIdleTimeout(req, reply)
      return instanceToWire(await hm.instances[op](idOf(req)))
    }

  return {
    async createInstance(req, reply) {
      noIdleTimeout(req, reply)
      // A client that disconnects mid-create cancels it: core undoes every step it finished.
      const inst = await hm.instances.create(createInstanceFromWire(body(req), { allowLocalLayouts }), { signal: clientGone(reply) })
      return reply.code(201).send(instanceToWire(inst))
    },
    async listInstances(req) {
      const q = query(req)
      const tags = q.tags as Record<string, string> | undefined
      const state = q.state as InstanceState | undefined
      const all = await hm.instances.list(tags ? { tags } : {})
      return all.filter((i) => state === undefined || i.state === state).map(instanceToWire)
    },
    async getInstance(req) {
      return instanceToWire(await hm.instances.get(idOf(req)))
    },
    async updateInstance(req) {
      // Fields are checked before the lookup (here and in core): a 501 for ttl does not depend on the instance existing.
      const update = updateInstanceFromWire(body(req))
      return instanceToWire(await hm.instances.update(idOf(req), update))
    },
    async getInstanceStats(req) {
      return instanceStatsToWire(await hm.instances.stats(idOf(req)))
    },
    async deleteInstance(req, reply) {
      await hm.instances.delete(idOf(req))
      return reply.code(204).send()
    },
    startInstance: lifecycle('start', ['cmd', 'entrypoint'], 'overriding the program at start'),
    stopInstance: lifecycle('stop'),
    standbyInstance: lifecycle('standby', ['compression', 'compression_delay'], 'snapshot compression'),
    restoreInstance: lifecycle('restore'),
    async forkInstance(req, reply) {
      noIdleTimeout(req, reply)
      const b = body(req)
      const forked = await hm.instances.fork(idOf(req), {
        name: b.name as string,
        ...(b.from_running !== undefined ? { fromRunning: b.from_running as boolean } : {}),
        ...(b.target_state !== undefined ? { targetState: b.target_state as 'Running' | 'Standby' | 'Stopped' } : {}),
      })
      return reply.code(201).send(instanceToWire(forked))
    },
    async statInstancePath(req) {
      const q = query(req)
      const info = await hm.instances.stat(idOf(req), q.path as string, { followLinks: q.follow_links === true })
      return pathInfoToWire(info)
    },
    async waitForInstanceState(req, reply) {
      noIdleTimeout(req, reply)
      const q = query(req)
      const r = await hm.instances.waitForState(idOf(req), q.state as InstanceState, {
        timeout: q.timeout as string,
        // A closing server answers a wait at once (timed_out: true) instead of holding shutdown up to 5 min.
        signal: AbortSignal.any([clientGone(reply), shutdown]),
      })
      return { state: r.state, timed_out: r.timedOut, ...(r.stateError ? { state_error: r.stateError } : {}) }
    },
  }
}
