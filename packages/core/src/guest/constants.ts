/**
 * Names both sides of the guest boundary agree on. The VMM driver creates disks and ports with
 * these names; the guest init finds them by name, never by order (guest/README.md, "Channels").
 */

/** virtio-blk `serial=` values the guest looks for under /sys/block/vd*\/serial. */
export const DISK_SERIAL = {
  /** The image's read-only ext4 or erofs disk. */
  rootfs: 'hm-rootfs',
  /** The per-instance writable ext4 disk holding the overlay's upper and work dirs. */
  overlay: 'hm-overlay',
  /** The config disk written by writeGuestConfigDisk. */
  config: 'hm-config',
  /** The guest kernel's headers (read-only ext4, shared; assets/headers.ts), unless skipKernelHeaders. */
  headers: 'hm-headers',
} as const

/** Serial of the n-th volume's disk (the create's `volumes[n]`). */
export const volumeDiskSerial = (n: number): string => `hm-vol-${n}`
/** Serial of the instance's writable disk over the n-th volume, when it is mounted with `overlay`. */
export const volumeOverlaySerial = (n: number): string => `hm-volov-${n}`
/**
 * Serials of a volume attached while running (a SCSI disk) and of its overlay disk: by the slot it
 * got then, which no other attach or detach changes (positions shift; the guest saw this serial).
 */
export const hotVolumeSerial = (slot: number): string => `hm-hvol-${slot}`
export const hotVolumeOverlaySerial = (slot: number): string => `hm-hvolov-${slot}`

/** virtio-serial port names (QEMU `virtserialport name=`), found in the guest under /sys/class/virtio-ports. */
export const PORT_NAME = {
  /** Socket-backed, QEMU is the server: the agent protocol (exec, stat, ping). */
  agent: 'hypeman.agent',
  /** File-backed: the program's stdout and stderr, i.e. the instance's app log. */
  app: 'hypeman.app',
  /** File-backed: init's JSON-lines status events. */
  status: 'hypeman.status',
  /** Socket-backed, QEMU is the server: graceful stop and signals, served by init itself. */
  control: 'hypeman.control',
} as const

export type PortName = (typeof PORT_NAME)[keyof typeof PORT_NAME]

/** The PATH docker gives a container whose image sets none. */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/** Version string the guest reports in HELLO_ACK, PONG and the boot event. */
export const GUEST_PROTOCOL_VERSION = '1'

