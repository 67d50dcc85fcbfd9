/**
 * The Cloud Hypervisor driver: the shared REST driver with Cloud Hypervisor's dialect
 * (cloud-hypervisor/plan.ts). Never run against a real Cloud Hypervisor here (none can be
 * installed on our machines): its calls are checked against `specs/cloud-hypervisor-openapi.yaml`
 * and it is exercised end to end against a fake VMM of ours that serves that spec.
 */
import { RestVmmDriver, type RestDriverOptions } from '../rest/driver.js'
import { cloudHypervisorDialect } from './plan.js'

export type CloudHypervisorDriverOptions = RestDriverOptions

export class CloudHypervisorDriver extends RestVmmDriver {
  readonly name = 'cloud-hypervisor' as const
  constructor(opts: CloudHypervisorDriverOptions = {}) {
    super(cloudHypervisorDialect, opts)
  }
}
