/**
 * What the REST dialects' plan tests (firecracker-plan, cloud-hypervisor-plan) share: the
 * dialect's vendored API spec, loaded once per file, and the runtime a spec's calls are planned
 * for. `dialectPlanTest` registers a vitest hook of the file that calls it, so it must be called
 * at the top level of a test file.
 */
import { beforeAll, expect } from 'vitest'
import { validateVmSpec, type ApiCall, type RestDialect, type RestRuntime, type VmSpec } from '../../src/index.js'
import { restRuntime } from '../../src/testing.js'
import { Contract } from './contract.js'

export interface DialectPlanTest {
  /** The dialect's API spec (valid once the file's beforeAll ran). */
  readonly contract: Contract
  rt(spec: VmSpec): RestRuntime
  /** Every call validates against the spec, unknown fields refused. */
  expectValid(calls: ApiCall[]): void
  /** The boot calls of a spec both the shared validation and the dialect accept, each checked valid. */
  validBoot(spec: VmSpec): ApiCall[]
}

export function dialectPlanTest(dialect: RestDialect): DialectPlanTest {
  let contract: Contract | undefined
  beforeAll(async () => {
    contract = await Contract.load(dialect.name)
  })
  const t: DialectPlanTest = {
    get contract() {
      if (!contract) throw new Error('dialectPlanTest: used before its beforeAll ran')
      return contract
    },
    rt: (spec) => restRuntime(spec.runtimeDir, dialect.apiSocketName),
    expectValid(calls) {
      for (const call of calls) {
        const r = t.contract.checkRequest(call)
        expect(r.errors, `${call.method} ${call.path}`).toEqual([])
        expect(r.ok).toBe(true)
      }
    },
    validBoot(spec) {
      validateVmSpec(spec, [], { vsock: true, channelBackends: [] })
      dialect.checkSpec(spec, t.rt(spec))
      const calls = dialect.planBoot(spec, t.rt(spec))
      t.expectValid(calls)
      return calls
    },
  }
  return t
}
