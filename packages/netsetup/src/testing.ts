/**
 * '@hypeman-ts/netsetup/testing': what tests and tools use, kept out of the main entry so that
 * the public API is what a user should call. NetLab builds throwaway hosts in network namespaces;
 * the planners are the pure builders behind HostNetwork (nft documents, tc and ip batches).
 */
export { NetLab, type NetLabOptions, type LabGuest, type LabProcess } from './lab.js'
export { buildRuleset, buildTeardown, type RulesetSpec, type RulesetGuest } from './nft.js'
export { planShaping, htbQuantum, parseQdiscs, type ShapingSpec } from './tc.js'
export { planGuestLinks, planDeleteLinks, orphanLinks, parseLinks, type LinkState } from './links.js'
export { linkNames, shortId, parseLinkName, type LinkNames } from './names.js'
export { parseSubnet, nextFreeAddress, macForAddress, type Subnet } from './addresses.js'
export { netnsArgv, NetnsRunner } from './exec.js'
export { parseResolvConf } from './resolvers.js'
