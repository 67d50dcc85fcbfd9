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
export { NetLab, type NetLabOptions, type LabGuest, type LabProcess } from './lab.js'
// Lower level, pure, exported for tests and tools.
export { buildRuleset, buildTeardown, type RulesetSpec, type RulesetGuest } from './nft.js'
export { planShaping, htbQuantum, parseQdiscs, type ShapingSpec } from './tc.js'
export { planGuestLinks, planDeleteLinks, orphanLinks, parseLinks, type LinkState } from './links.js'
export { linkNames, shortId, parseLinkName, type LinkNames } from './names.js'
export { parseSubnet, nextFreeAddress, macForAddress, type Subnet } from './addresses.js'
export { netnsArgv, NetnsRunner } from './exec.js'
export { parseResolvConf } from './resolvers.js'
