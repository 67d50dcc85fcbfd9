export * from './types.js'
export * from './errors.js'
export { validateVmSpec, checkSpecFiles, PCI_ADDRESS_RE, type SpecSupport } from './spec.js'
export { composeCmdline } from './cmdline.js'
export { QemuDriver, QEMU_CAPABILITIES, type QemuDriverOptions } from './qemu/driver.js'
export { QemuRunningVm, QemuPausedVm } from './qemu/vm.js'
export { QemuWarmVm, warmShape, warmUnsupported } from './qemu/warm.js'
export { buildQemuArgv, QEMU_MACHINE_CMDLINE, DEFAULT_QBOOT, type QemuArgvContext } from './qemu/argv.js'
export { QmpClient, type QmpConnectOptions, type QmpExecuteOptions } from './qemu/qmp-client.js'
export { probeAccel, type ProbeResult, type ProbeOptions } from './qemu/accel.js'
export { DRIVERS, driverInfo, driverCapabilities, createDriver, type DriverInfo, type CreateDriverOptions } from './registry.js'
export { RestVmmDriver, type RestDriverOptions } from './rest/driver.js'
export { RestRunningVm, RestPausedVm } from './rest/machine.js'
export { RestClient, type ApiCall, type ApiMethod, type RestClientOptions, type CallOptions } from './rest/client.js'
export type { RestDialect, RestRuntime, RestDriverName } from './rest/dialect.js'
export { SNAPSHOT_META_FILE } from './snapshot-meta.js'
export type { RestSnapshotMeta } from './rest/snapshot.js'
export { FirecrackerDriver, type FirecrackerDriverOptions } from './firecracker/driver.js'
export {
  firecrackerDialect,
  FIRECRACKER_CAPABILITIES,
  FIRECRACKER_MACHINE_CMDLINE,
  FIRECRACKER_SNAPSHOT_FILES,
} from './firecracker/plan.js'
export { CloudHypervisorDriver, type CloudHypervisorDriverOptions } from './cloud-hypervisor/driver.js'
export {
  cloudHypervisorDialect,
  CLOUD_HYPERVISOR_CAPABILITIES,
  CLOUD_HYPERVISOR_MACHINE_CMDLINE,
  CLOUD_HYPERVISOR_SNAPSHOT_FILES,
} from './cloud-hypervisor/plan.js'
export { connectVsock, type VsockConnectOptions } from './vsock/connect.js'
// Protocol codecs and pure planners for tests and tools: '@hypeman-ts/vmm-drivers/testing'.
export { findProcessesByArg, killAndWait, processUsage, readStartTime, type ProcessUsage } from './process.js'
