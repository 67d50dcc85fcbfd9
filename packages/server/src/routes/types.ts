import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Hypeman } from '@hypeman-ts/core'

/** What every route module gets. */
export interface RouteContext {
  hm: Hypeman
  /** Fires when the server closes: endless streams end, long waits answer now. */
  shutdown: AbortSignal
  /** Host network capacity in bits/s, when the operator configured it (GET /resources). */
  /** Whether image references may name local OCI layouts (`oci:/dir`); see wire.ts. */
  allowLocalLayouts: boolean
  /** The API contract version: the spec's `info.version`. */
  apiVersion: string
  networkCapacity?: { downloadBitsPerSec?: number; uploadBitsPerSec?: number }
}

/** A handler for one operation of the spec; its return value is the JSON body. */
export type Handler = (req: FastifyRequest, reply: FastifyReply) => Promise<unknown>

/** Handlers by the spec's `operationId`. */
export type Handlers = Record<string, Handler>

export const params = (req: FastifyRequest) => req.params as Record<string, string>
export const query = (req: FastifyRequest) => req.query as Record<string, unknown>
export const body = (req: FastifyRequest) => (req.body ?? {}) as Record<string, unknown>
