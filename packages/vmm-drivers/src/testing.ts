/**
 * '@hypeman-ts/vmm-drivers/testing': the pure pieces behind the drivers (protocol codecs, argv
 * and API planners, fingerprints), for tests and tools, kept out of the main entry so that the
 * public API is what a user should call.
 */
export { vmmCommand } from './netns.js'
export { mapQemuStatus, mapShutdownReason } from './qemu/vm.js'
export { qemuOptValue } from './qemu/argv.js'
export { QmpDecoder, encodeQmpCommand, classifyQmp, type QmpMessage, type QmpEvent, type QmpGreeting, type QmpReturn, type QmpErrorReply } from './qemu/qmp-codec.js'
export { probeFirmware } from './qemu/accel.js'
export { parseBody, vmmMessageOf } from './rest/client.js'
export { restRuntime, REST_RUNTIME_FILES } from './rest/dialect.js'
export { REST_SNAPSHOT_META_FILE, REST_SNAPSHOT_FORMAT, restMachineFingerprint } from './rest/snapshot.js'
export { hotplugLayout as firecrackerHotplugLayout } from './firecracker/plan.js'
export { cloudHypervisorVmConfig } from './cloud-hypervisor/plan.js'
export { AckDecoder, encodeConnect, type AckResult } from './vsock/handshake.js'
