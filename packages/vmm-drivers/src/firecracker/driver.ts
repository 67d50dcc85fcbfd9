/**
 * The Firecracker driver: the shared REST driver with Firecracker's dialect (firecracker/plan.ts).
 * Never run against a real Firecracker here (none can be installed on our machines): its calls are
 * checked against `specs/firecracker-swagger.yaml` and it is exercised end to end against a fake
 * VMM of ours that serves that spec (see the package README).
 */
import { RestVmmDriver, type RestDriverOptions } from '../rest/driver.js'
import { firecrackerDialect } from './plan.js'

export type FirecrackerDriverOptions = RestDriverOptions

export class FirecrackerDriver extends RestVmmDriver {
  readonly name = 'firecracker' as const
  constructor(opts: FirecrackerDriverOptions = {}) {
    super(firecrackerDialect, opts)
  }
}
