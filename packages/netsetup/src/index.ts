export { HostNetwork, type NetworkAttachment, type NetworkInventory, type ReconcileResult } from './network.js'
export type {
  AttachOptions,
  AttachStep,
  EgressMode,
  EgressOptions,
  GuestDevice,
  HostNetworkOptions,
  NetworkConfig,
  ProxyEndpoint,
} from './options.js'
export { NetworkError, type NetworkErrorCode } from './errors.js'
export { DEFAULT_CAPACITY_BITS, defaultRate, MIN_RATE_BITS, MAX_RATE_BITS } from './bandwidth.js'
export { egressProxyEnv } from './env.js'
// Test and tooling helpers (NetLab, the pure planners) are in '@hypeman-ts/netsetup/testing'.
export { resolveNetworkOptions } from './options.js'
