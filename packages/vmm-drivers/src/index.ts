export * from './types.js'
export * from './errors.js'
export { validateVmSpec, checkSpecFiles } from './spec.js'
export { vmmCommand, netnsPath } from './netns.js'
export { QemuDriver, QEMU_CAPABILITIES, type QemuDriverOptions } from './qemu/driver.js'
export { QemuRunningVm, QemuPausedVm, mapQemuStatus, mapShutdownReason } from './qemu/vm.js'
export { buildQemuArgv, composeCmdline, QEMU_MACHINE_CMDLINE, DEFAULT_QBOOT, qemuOptValue, type QemuArgvContext } from './qemu/argv.js'
export { QmpClient, type QmpConnectOptions, type QmpExecuteOptions } from './qemu/qmp-client.js'
export {
  QmpDecoder,
  encodeQmpCommand,
  classifyQmp,
  type QmpMessage,
  type QmpEvent,
  type QmpGreeting,
  type QmpReturn,
  type QmpErrorReply,
} from './qemu/qmp-codec.js'
export { probeAccel, probeFirmware, type ProbeResult, type ProbeOptions } from './qemu/accel.js'
