export { InstanceManager, type CreateOptions, type StopOptions, type LogOptions, type LogSource, type WaitResult, type ExecParams } from './manager.js'
export { instanceToWire, INSTANCE_STATES, type Instance, type InstanceState, type InstanceNetwork } from './model.js'
export { validateCreateParams, validateName, HYPERVISORS, type CreateInstanceParams, type Hypervisor, type InstanceSpec, type VolumeMount, type NetworkParams, type CredentialPolicy } from './params.js'
export { ALLOWED_STATES, type Operation } from './transitions.js'
