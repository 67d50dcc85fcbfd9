/** The spec the package ships, and the routes read from it. */
import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { defaultSpecPath, loadSpec } from '../src/spec.js'

describe('the shipped spec', () => {
  it('is the repository copy, byte for byte (one spec, two places; they must not drift)', () => {
    const repo = new URL('../../../specs/hypeman-openapi.yaml', import.meta.url).pathname
    expect(readFileSync(defaultSpecPath(), 'utf8')).toBe(readFileSync(repo, 'utf8'))
  })

  it('gives one route per operation, in Fastify form, with the schemas to validate', () => {
    const spec = loadSpec()
    const ids = spec.operations.map((o) => o.operationId)
    expect(new Set(ids).size).toBe(ids.length)
    const create = spec.operations.find((o) => o.operationId === 'createInstance')!
    expect(create).toMatchObject({ method: 'POST', url: '/instances', bodyRequired: true, body: { $ref: 'hypeman-openapi#/components/schemas/CreateInstanceRequest' } })
    const logs = spec.operations.find((o) => o.operationId === 'getInstanceLogs')!
    expect(logs.url).toBe('/instances/:id/logs')
    expect(logs.params).toMatchObject({ required: ['id'] })
    expect(logs.querystring).toMatchObject({ properties: { tail: { type: 'integer', default: 100 }, source: { enum: ['app', 'vmm', 'hypeman'] } } })
    const list = spec.operations.find((o) => o.operationId === 'listInstances')!
    expect(list.querystring).toMatchObject({ properties: { tags: { $ref: 'hypeman-openapi#/components/schemas/Tags' } } })
  })
})
