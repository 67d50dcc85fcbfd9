export * from './errors.js'
export { DISK_SERIAL, PORT_NAME, volumeDiskSerial, volumeOverlaySerial, hotVolumeSerial, hotVolumeOverlaySerial, DEFAULT_PATH, GUEST_PROTOCOL_VERSION, type PortName } from './constants.js'
export { guestDisks, guestChannels, copyDiskSparse, createOverlayDisk, hotVolumeDisks, type GuestDiskPaths, type GuestChannelPaths, type GuestVolumeDisk } from './disks.js'
export { VOLUMES_FEATURE, DISK_SERIAL_RE, type GuestVolumeConfig } from './volume-config.js'
export {
  encodeGuestConfig,
  packConfigImage,
  decodeGuestConfig,
  readGuestConfigDisk,
  guestConfigEntries,
  writeGuestConfigDisk,
  rewriteGuestConfigVolumes,
  KERNEL_HEADERS_FEATURE,
  CONFIG_MAGIC,
  CONFIG_FORMAT_VERSION,
  CONFIG_HEADER_SIZE,
  CONFIG_MAX_PAYLOAD,
  type GuestConfig,
  type DecodedGuestConfig,
  type RootfsType,
} from './config-disk.js'
export { checkNetworkConfig, NETWORK_FEATURE, MAX_DNS_SERVERS, type GuestNetworkConfig } from './network-config.js'
export { checkEgressConfig, checkCaBundle, EGRESS_FEATURE, PROXY_ENV_NAMES, MAX_CA_BUNDLE_BYTES, type GuestEgressConfig } from './egress-config.js'
export { checkExecSize, MAX_ARG_STRLEN, MAX_EXEC_ARGS_BYTES } from './exec-limits.js'
export { resolveProgram, resolveArgv, buildGuestEnv, type ImageRuntimeConfig, type ProgramOverrides, type ResolvedProgram } from './program.js'
export { encodeTlv, decodeTlv, TlvView, type TlvEntry, type TlvRecord, type TlvValue } from './tlv.js'
export {
  FrameType,
  FrameDecoder,
  encodeFrame,
  encodeExecRequest,
  decodeExit,
  encodeStatRequest,
  decodeStatResult,
  decodeError,
  pathInfoToWire,
  FRAME_HEADER_SIZE,
  FRAME_MAX_PAYLOAD,
  type Frame,
  type ExecRequest,
  type ExecExit,
  type PathInfo,
} from './agent-protocol.js'
export { GuestAgentClient, ExecProcess, type AgentConnectOptions, type ExecOptions, type ExecResult } from './agent-client.js'
export {
  parseStatusEvents,
  readStatusEvents,
  waitForStatusEvent,
  statusMark,
  summarizeStatus,
  lastBoot,
  type GuestStatusEvent,
  type GuestStatusType,
  type GuestStatusSummary,
  type WaitStatusOptions,
} from './status.js'
export { tailLines, followLog, type FollowOptions } from './app-log.js'
export { sendControlCommand, requestGuestStop, signalGuestProgram, pingGuestControl, type ControlOptions } from './control.js'
