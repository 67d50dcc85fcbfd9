/**
 * A real server on loopback port 0 over a real manager in a temporary data directory, and the
 * official SDK pointed at it. Fixture images come from the OCI layouts `scripts/setup` built
 * with umoci (not our code), read through core's `oci:` references: no registry needed.
 */
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Ajv2020, { type ValidateFunction } from 'ajv/dist/2020.js'
import type { FastifyInstance } from 'fastify'
import YAML from 'yaml'
import HypemanClient from '@onkernel/hypeman'
import { Hypeman, type HypemanOptions } from '@hypeman-ts/core'
import { FIXTURES } from '../../../core/test/support/registry.js'
import { createServer, loadSpec, mintToken, type HypemanServer } from '../../src/index.js'
import { defaultSpecPath } from '../../src/spec.js'

/** busybox (linux/amd64), as a local OCI layout. */
export const BUSYBOX = `oci:${FIXTURES}/small:busybox-amd64`

export interface TestServer {
  hm: Hypeman
  server: HypemanServer
  secret: Buffer
  token: string
  base: string
  client: HypemanClient
  close(): Promise<void>
}

/** `hypeman`: options of the manager beyond the defaults here (a fabricated sysfs, a fake driver). */
export async function startServer(hypeman: HypemanOptions = {}): Promise<TestServer> {
  const dataDir = await mkdtemp(join(tmpdir(), 'hm-server-'))
  const hm = await Hypeman.open({ dataDir, network: false, defaults: { vcpus: 1, size: '256MB', overlaySize: '64MB' }, ...hypeman })
  const secret = randomBytes(32)
  const server = await createServer(hm, { jwtSecret: secret, bodyLimit: 64 * 1024, allowLocalLayouts: true, metrics: true })
  const violations = checkEveryResponse(server.app)
  const { port } = await server.listen({ host: '127.0.0.1', port: 0 })
  const base = `http://127.0.0.1:${port}`
  const token = mintToken(secret, { ttlSeconds: 3600 })
  // No retries: a test must see the first answer, not a retried one.
  const client = new HypemanClient({ baseURL: base, apiKey: token, maxRetries: 0, timeout: 180_000 })
  return {
    hm,
    server,
    secret,
    token,
    base,
    client,
    async close() {
      await server.close()
      for (const i of await hm.instances.list()) await hm.instances.delete(i.id)
      await hm.close()
      await rm(dataDir, { recursive: true, force: true })
      if (violations.length) throw new Error(`responses that break the spec:\n${violations.join('\n')}`)
    },
  }
}

/**
 * Every JSON answer the server sends in a test, checked against the spec's schema for its path,
 * method and status (a documented 2xx must exist; an undocumented error status is checked as the
 * spec's Error). The violations fail the test file when its server closes.
 */
function checkEveryResponse(app: FastifyInstance): string[] {
  const violations: string[] = []
  const raw = YAML.parse(readFileSync(defaultSpecPath(), 'utf8')) as { paths: Record<string, Record<string, { responses?: Record<string, { content?: Record<string, { schema?: unknown }> }> }>> }
  const ajv = new Ajv2020({ strict: false, validateFormats: false })
  ajv.addSchema(loadSpec().document)
  const compiled = new Map<string, ValidateFunction | null>()
  const compile = (schema: unknown) => ajv.compile(JSON.parse(JSON.stringify(schema).replaceAll('"#/components', '"hypeman-openapi#/components')) as object)
  app.addHook('onSend', async (req, reply, payload) => {
    const path = req.routeOptions.url?.replace(/:(\w+)/g, '{$1}')
    const op = path ? raw.paths[path]?.[req.method.toLowerCase()] : undefined
    if (!op || typeof payload !== 'string' || !String(reply.getHeader('content-type') ?? '').includes('application/json')) return payload
    const status = reply.statusCode
    const key = `${req.method} ${path} ${status}`
    let validate = compiled.get(key)
    if (validate === undefined) {
      const schema = op.responses?.[String(status)]?.content?.['application/json']?.schema
      validate = schema ? compile(schema) : status >= 400 ? compile({ $ref: '#/components/schemas/Error' }) : null
      compiled.set(key, validate)
    }
    if (validate === null) violations.push(`${key}: a status the spec does not document`)
    else if (!validate(JSON.parse(payload))) violations.push(`${key}: ${JSON.stringify(validate.errors)}`)
    return payload
  })
  return violations
}

/** Checks bodies against the spec's response schemas (`#/components/schemas/<name>`). */
export function specValidator(): (schema: string, value: unknown) => void {
  const ajv = new Ajv2020({ strict: false, validateFormats: false })
  ajv.addSchema(loadSpec().document)
  return (schema, value) => {
    const validate = ajv.getSchema(`hypeman-openapi#/components/schemas/${schema}`)
    if (!validate) throw new Error(`no schema ${schema}`)
    if (!validate(value)) throw new Error(`${schema} does not validate: ${JSON.stringify(validate.errors)}\n${JSON.stringify(value)}`)
  }
}
