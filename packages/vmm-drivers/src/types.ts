/**
 * The contract every hypervisor driver implements. It is shaped so that QEMU (QMP), Cloud
 * Hypervisor and Firecracker (REST over a unix socket) and vz can all sit behind it: what one of
 * them cannot do is a capability flag, never a silently ignored field.
 */
import type { Socket } from 'node:net'

export type DriverName = 'qemu' | 'cloud-hypervisor' | 'firecracker' | 'vz'

/** What the caller asks for. `auto` probes KVM with a deadline and falls back to TCG with a warning. */
export type Accel = 'kvm' | 'tcg' | 'auto'
/** What the VM actually runs with. */
export type ResolvedAccel = 'kvm' | 'tcg'

export interface DiskThrottle {
  /** Total (read + write) bytes per second. */
  bytesPerSec?: number
  /** Total (read + write) I/O operations per second. */
  iopsPerSec?: number
}

export interface DiskSpec {
  /** Host path of the disk image. */
  path: string
  /**
   * The guest finds the disk by this, under /sys/block/vd* /serial, never by order
   * (`hm-rootfs`, `hm-overlay`, `hm-config`, `hm-vol-<n>`). At most 20 characters of [A-Za-z0-9._-].
   */
  serial: string
  readonly?: boolean
  /** Default `raw`. */
  format?: 'raw' | 'qcow2'
  throttle?: DiskThrottle
  /**
   * `scsi`: a disk on the VM's SCSI controller (`VmSpec.scsiController`) at target `scsiId`, the
   * kind `hotplugDisk` adds and `unplugDisk` removes while the VM runs. The guest finds it by the
   * same serial (SCSI VPD page 0x80). A restore must list it with the same `scsiId`: the saved
   * device state is matched by SCSI address. Default `virtio-blk` (one PCI device per disk).
   */
  bus?: 'virtio-blk' | 'scsi'
  /** SCSI target, 0-255, unique on the controller; required with `bus: 'scsi'`. */
  scsiId?: number
}

export interface NicSpec {
  /** An existing TAP interface (made by netsetup, with vnet_hdr); the driver never creates it. */
  tap: string
  /** Unicast MAC, `aa:bb:cc:dd:ee:ff`. */
  mac: string
}

/**
 * Where a named channel's host side lives. `socket`: the VMM listens on a unix socket, one
 * client at a time, and a client may disconnect and connect again. `file`: everything the guest
 * writes is appended to the file (the guest cannot read from it).
 */
export type ChannelBackend = { kind: 'socket'; path: string } | { kind: 'file'; path: string }

export interface ChannelSpec {
  /** The guest finds the port by this name, e.g. under /sys/class/virtio-ports/* /name for QEMU. */
  name: string
  backend: ChannelBackend
}

/**
 * A host device given to the guest whole through VFIO: a PCI function bound to vfio-pci, or a
 * mediated device (a vGPU slice). The caller binds and creates them; the driver only hands them
 * to the VMM.
 */
export interface PassthroughDeviceSpec {
  /**
   * The device's sysfs directory: `/sys/bus/pci/devices/0000:01:00.0` for a PCI function,
   * `/sys/bus/mdev/devices/<uuid>` for an mdev.
   */
  sysfsPath: string
  /** A PCI function's address (`0000:01:00.0`); absent for an mdev, which has none. */
  pciAddress?: string
}

export interface HotplugMemorySpec {
  /** Upper bound of boot memory plus hotplugged memory, in bytes. */
  maxBytes: number
  /** Number of hotplug slots (QEMU DIMM slots). Default 8. */
  slots?: number
}

/**
 * A virtio-vsock device (Cloud Hypervisor, Firecracker). The host side is a unix socket the VMM
 * listens on (`<runtimeDir>/vsock.sock`); a host-initiated connection to guest port P writes
 * `CONNECT P\n` and gets `OK <host port>\n` back. Guest-initiated connections to host port P
 * go to a unix socket the host listens on at `<runtimeDir>/vsock.sock_P` (not managed here).
 */
export interface VsockSpec {
  /** The guest's context id (3 or more). Default 3; the VMMs' unix-socket vsock keeps it local to the VM. */
  cid?: number
  /** Guest ports by name: `connectChannel(name)` opens a stream to that port (e.g. `{ 'hypeman.agent': 1024 }`). */
  ports?: Record<string, number>
}

export interface VmSpec {
  /** Shown in process listings and logs. [A-Za-z0-9._-], at most 64. */
  name?: string
  /** Uncompressed ELF vmlinux (PVH) for direct kernel boot. */
  kernel: string
  initrd?: string
  /**
   * The caller's part of the kernel command line. The driver puts its machine-specific part in
   * front (console device, boot-time trimming); see the driver's `machineCmdline`.
   */
  cmdline?: string
  vcpus: number
  /** Boot memory in bytes, a whole number of MiB. */
  memoryBytes: number
  /**
   * Guest RAM in a file instead of anonymous memory. `shared`: the guest's writes go to the file
   * (put it on tmpfs: on a disk filesystem every first touch of a page allocates a block, and
   * dirty pages are written back), a standby streams only the devices and copies the file into
   * the snapshot, sparse, and a restore copies the snapshot's RAM into it. Not shared: the file is
   * the snapshot's own RAM file, mapped copy-on-write (read lazily, shared in the page cache by
   * every VM that maps it). QEMU only (`capabilities.memoryFile`).
   */
  memoryFile?: { path: string; shared: boolean }
  hotplugMemory?: HotplugMemorySpec
  disks?: DiskSpec[]
  /**
   * A SCSI controller for `bus: 'scsi'` disks, present from boot so that disks can be added and
   * removed while the VM runs without PCI hot-plug (drivers with `capabilities.diskHotplug`).
   */
  scsiController?: boolean
  nics?: NicSpec[]
  channels?: ChannelSpec[]
  /**
   * A vsock device, for drivers whose `capabilities.agentTransport` is `vsock` (QEMU here refuses
   * it: this host's kernel has no vhost-vsock).
   */
  vsock?: VsockSpec
  /** Host devices passed through VFIO, for drivers with `capabilities.passthrough`. */
  passthrough?: PassthroughDeviceSpec[]
  /** The guest's serial console (kernel messages) is appended to this file. */
  consoleLog: string
  /** The VMM's own stdout/stderr. Default `<runtimeDir>/vmm.log`. */
  vmmLog?: string
  /**
   * A directory for the VMM's control socket and pidfile. Kept short: unix socket paths are
   * limited to 107 bytes. The driver creates it if needed and never deletes it (only its own files in it).
   */
  runtimeDir: string
  /** Default `auto`. */
  accel?: Accel
  /**
   * Run the VMM inside this named network namespace (`/run/netns/<name>`), where its TAPs are.
   * Only the network namespace is entered; every path in the spec is the host's.
   */
  netns?: string
  /** A snapshot directory written by `standby()`: boot from it instead of cold-booting the kernel. */
  restoreFrom?: string
}

export interface DriverCapabilities {
  pause: boolean
  /** standby (snapshot to a directory, then the VMM ends) and restore (`VmSpec.restoreFrom`). */
  snapshot: boolean
  hotplugMemory: boolean
  /** `VmSpec.memoryFile`. */
  memoryFile: boolean
  diskThrottle: boolean
  /** The guest can tell disks apart by `DiskSpec.serial`; when false it sees them in `disks` order. */
  diskSerial: boolean
  /** Any number of named channels (`VmSpec.channels`). */
  namedChannels: boolean
  /** The `VmSpec.channels` backends the driver accepts (empty: no channels at all). */
  channelBackends: readonly ChannelBackend['kind'][]
  /** How a guest agent reaches the host: a named socket-backed channel, or a vsock port (`VmSpec.vsock`). */
  agentTransport: 'virtio-serial' | 'vsock'
  accels: readonly ResolvedAccel[]
  /**
   * What `shutdown()` asks the guest with before it forces the end: the ACPI power button, or
   * Ctrl+Alt+Del (Firecracker: the guest reboots, which ends the VMM).
   */
  gracefulShutdown: 'acpi-power-button' | 'ctrl-alt-del' | 'none'
  /** `resizeMemory` can also give memory back (virtio-mem); otherwise it only grows. */
  memoryShrink: boolean
  /** `VmSpec.passthrough`: VFIO devices (PCI functions, mdevs). */
  passthrough: boolean
  /** `scsiController`, `bus: 'scsi'` disks, and `hotplugDisk`/`unplugDisk` on a live VM. */
  diskHotplug: boolean
}

/**
 * What the VMM says now. `shutdown`: the guest stopped but the process is still up (transient;
 * the process ends right after). `crashed`: the process is up but the guest cannot run (guest
 * panic, emulation failure, disk I/O error).
 */
export type VmState = 'running' | 'paused' | 'shutdown' | 'crashed' | 'exited'

/**
 * Why the VMM process ended. `poweroff`: the guest powered off. `reboot`: the guest rebooted,
 * which ends the VM (no reboot loops). `panic`: the guest kernel panicked. `quit`: the host asked
 * the VMM to quit. `standby`: ended after a snapshot. `signal`: the VMM got a catchable signal and
 * ended. `killed`: the process vanished without saying why (SIGKILL, crash), `code`/`signal` tell
 * more when we are its parent.
 */
export type ExitReason = 'poweroff' | 'reboot' | 'panic' | 'quit' | 'standby' | 'signal' | 'killed'

export interface ExitInfo {
  reason: ExitReason
  /** Exit code of the VMM process; null when it was killed by a signal or we are not its parent. */
  code: number | null
  signal: string | null
  /** The VMM's own word for it (QEMU's SHUTDOWN reason, e.g. `guest-shutdown`), when it said one. */
  vmmReason?: string
  /** `shutdown()` had to force the end after its deadline. */
  forced?: boolean
  /** ISO time at which the exit was observed. */
  at: string
}

export type VmEvent =
  | { type: 'state'; state: VmState; at: string }
  /** A raw event from the VMM (a QMP event for QEMU: STOP, RESUME, SHUTDOWN, POWERDOWN ...). */
  | { type: 'vmm'; name: string; data: Record<string, unknown>; at: string }
  | { type: 'exit'; exit: ExitInfo }

/**
 * Everything needed to find a running VM again from another process. JSON-safe: the caller
 * persists it (atomically) and passes it to `attach()` or `destroy()` later.
 */
export interface PersistedVm {
  driver: DriverName
  version: 1
  pid: number
  /** Process start time from /proc/<pid>/stat, so a reused pid is never mistaken for the VMM. */
  pidStartTime: number
  /** The VMM's control socket (QMP for QEMU, the REST API socket for Cloud Hypervisor/Firecracker). */
  controlSocket: string
  accel: ResolvedAccel
  spec: VmSpec
}

export interface SnapshotInfo {
  dir: string
  /** Bytes written (guest memory and device state). */
  bytes: number
  /** From the pause to the snapshot being complete on disk. */
  durationMs: number
  createdAt: string
}

export interface ShutdownOptions {
  /** How long the guest gets to power off after the request. Default 10 s. */
  timeoutMs?: number
}

export interface WaitOptions {
  timeoutMs?: number
  signal?: AbortSignal
}

export interface VmTimings {
  /** From spawning the process to its control socket answering. */
  readyMs: number
  /** For a restore: from spawning the process to the guest running again. */
  restoreMs?: number
}

/** What every handle offers, whatever state it was returned in. */
export interface VmHandleBase extends AsyncDisposable {
  readonly driver: DriverName
  readonly pid: number
  readonly accel: ResolvedAccel
  readonly spec: VmSpec
  /** Persist this to find the VM again after a restart of the host process. */
  readonly persisted: PersistedVm
  readonly timings: VmTimings
  /** Settles (never rejects) when the VMM process has ended and its runtime files are removed. */
  readonly exited: Promise<ExitInfo>
  /** Asks the VMM now. `exited` once the process is gone. */
  state(): Promise<VmState>
  /** Asks the guest to power off (ACPI power button), then forces the end after the deadline. */
  shutdown(opts?: ShutdownOptions): Promise<ExitInfo>
  /** Ends the VMM at once (SIGKILL). */
  kill(): Promise<ExitInfo>
  /** Resolves with the exit; a TimeoutError/AbortedError when the wait is given up (the VM keeps running). */
  waitForExit(opts?: WaitOptions): Promise<ExitInfo>
  /** Subscribes to events; returns the unsubscribe function. */
  onEvent(listener: (event: VmEvent) => void): () => void
  /**
   * Sets guest memory to `totalBytes` (boot plus hotplugged), up to `spec.hotplugMemory.maxBytes`.
   * Grow only unless `capabilities.memoryShrink`; the guest must online the new memory (Linux:
   * `memhp_default_state=online`, or virtio-mem for Firecracker).
   */
  resizeMemory(totalBytes: number): Promise<{ memoryBytes: number }>
  /**
   * Adds a `bus: 'scsi'` disk to the running (or paused) VM, throttled as `disk.throttle` says;
   * `persisted.spec.disks` lists it afterwards, so persist `persisted` again. Needs
   * `capabilities.diskHotplug` and a VM started with `scsiController`.
   */
  hotplugDisk(disk: DiskSpec): Promise<void>
  /**
   * Removes the hot-pluggable disk with this serial and waits until the VMM let go of its file
   * (the guest should have stopped using it: it sees the disk vanish). Persist `persisted` again.
   */
  unplugDisk(serial: string, opts?: WaitOptions): Promise<void>
  /**
   * Connects to a socket-backed channel (or, on vsock drivers, a named `VmSpec.vsock` port) by
   * name, retrying until `timeoutMs` (default 5 s).
   */
  connectChannel(name: string, opts?: WaitOptions): Promise<Socket>
  /** Closes our control connection and stops watching; the VM keeps running. */
  detach(): Promise<void>
}

export interface RunningVm extends VmHandleBase {
  /** The state the VM was in when this handle was returned; `state()` asks the VMM now. */
  readonly phase: 'running'
  pause(): Promise<PausedVm>
  /** Pauses, writes a snapshot into `dir` (created if needed), and ends the VMM. */
  standby(dir: string): Promise<SnapshotInfo & { exit: ExitInfo }>
  /** Writes a snapshot into `dir` and resumes: the VMM goes on. */
  snapshot(dir: string): Promise<SnapshotInfo>
}

export interface PausedVm extends VmHandleBase {
  readonly phase: 'paused'
  resume(): Promise<RunningVm>
  standby(dir: string): Promise<SnapshotInfo & { exit: ExitInfo }>
  /** Writes a snapshot into `dir`; the VM stays paused. */
  snapshot(dir: string): Promise<SnapshotInfo>
}

export type LiveVm = RunningVm | PausedVm

export interface StartOptions {
  signal?: AbortSignal
  /** Deadline for the VMM to answer on its control socket (and, for a restore, to finish loading). Default 15 s. */
  readyTimeoutMs?: number
  /**
   * Called right after the process exists, before it is ready, so the caller can persist the pid
   * and find the process after a crash mid-start. If it throws, the start fails and the process is killed.
   */
  onSpawn?: (persisted: PersistedVm) => void | Promise<void>
}

export interface AttachOptions {
  signal?: AbortSignal
  readyTimeoutMs?: number
}

/** Names a VM to `destroy()`: its persisted record, or just the runtime dir it was started with. */
export type DestroyTarget = PersistedVm | { runtimeDir: string }

export interface VmmDriver {
  readonly name: DriverName
  readonly capabilities: DriverCapabilities
  /** The machine-specific head of the kernel command line that `start()` puts before `spec.cmdline`. */
  readonly machineCmdline: string
  /** The host programs it runs (its VMM binary): a manager checks them on PATH when it opens. */
  readonly programs?: readonly string[]
  /** Boots (or restores) a VM; resolves once the guest is running. Nothing is left behind when it throws. */
  start(spec: VmSpec, opts?: StartOptions): Promise<RunningVm>
  /** Finds a VM again from persisted data; throws `vmm_not_running` when its process is gone. */
  attach(persisted: PersistedVm, opts?: AttachOptions): Promise<LiveVm>
  /** Cheap check without talking to the VMM: the pid is alive and is still the same process. */
  isAlive(persisted: PersistedVm): boolean
  /** Kills the VMM if it still runs and removes its runtime files. Idempotent; for reconcile after a crash. */
  destroy(target: DestroyTarget): Promise<void>
  /** Resolves `auto` to what this host can run (probing KVM with a deadline, cached). */
  resolveAccel(accel: Accel): Promise<ResolvedAccel>
  /**
   * The file a snapshot keeps the guest RAM in, when it keeps it in one (drivers with
   * `capabilities.memoryFile`): a restore maps it copy-on-write (`memoryFile`, not shared) or
   * a copy of it. Undefined when the RAM is in the stream or the dir holds no snapshot of this driver.
   */
  snapshotRamFile?(dir: string): Promise<string | undefined>
  /**
   * Spawns a VMM before it is needed, paused, on files of its own (a pool's slot), with
   * `spec.restoreFrom` loaded already when given; `WarmVm.adopt` later makes it another spec's
   * VM. Drivers without it start every VM with `start`.
   */
  spawnWarm?(spec: VmSpec, opts?: SpawnWarmOptions): Promise<WarmVm>
}

export interface SpawnWarmOptions extends Pick<StartOptions, 'signal' | 'readyTimeoutMs'> {
  /**
   * Spawned for an adoption that follows at once (a clone with no pooled VMM): at the normal CPU
   * priority. Otherwise it waits at the lowest.
   */
  now?: boolean
  /**
   * For a clone of a paused VM whose RAM is a shared file (`AdoptOptions.ramFrom`): that file,
   * copied into this VMM's RAM file while the VMM starts. An adoption with the same `ramFrom`
   * then does not copy it again. Needs a shared `memoryFile` of the same size and no `restoreFrom`.
   */
  ramFrom?: string
}

export interface AdoptOptions extends StartOptions {
  /**
   * Serials of disks whose warm file becomes the VM's: moved to the spec's path (replacing what
   * is there) rather than the VM re-pointed at the file already there.
   */
  moveDisks?: readonly string[]
  /**
   * Copy the guest from this paused VM of the same machine (QEMU: live migration over a unix
   * socket, raw QMP through `execute`) instead of loading a snapshot: a clone. The source stays
   * paused, the caller resumes it; its disks must have been copied to the spec's while it was.
   */
  migrateFrom?: { execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> }
  /**
   * With `migrateFrom`: the paused source's RAM file (its `memoryFile`, shared). The RAM is copied
   * from it in the kernel and only the devices' state is migrated, instead of streaming every page.
   */
  ramFrom?: string
}

/**
 * A VMM waiting to become some VM (VmmDriver.spawnWarm). Its process carries the mark of the
 * runtime dir it was spawned with, not of the VM it becomes: a caller that pools them reaps the
 * ones no VM record names.
 */
export interface WarmVm {
  readonly pid: number
  /** The spec it was spawned with (its own paths). */
  readonly spec: VmSpec
  /** Resolves when the process ended (before or after its adoption). */
  readonly exited: Promise<unknown>
  /**
   * Makes it `spec`'s VM and runs it: `spec` may differ from the spawned one only in its own
   * files (the paths of disks, channels, logs, runtime dir), in its NICs' TAP names (the caller
   * renamed the TAP the VMM holds to the spec's), and in `restoreFrom` when nothing was
   * loaded at spawn. Once it throws the process is gone; a warm VM is adopted at most once.
   */
  adopt(spec: VmSpec, opts?: AdoptOptions): Promise<RunningVm>
  /**
   * Starts copying `from` (a paused VM's shared RAM file) into this VMM's RAM file now, ahead of
   * its adoption as that VM's clone (`AdoptOptions.ramFrom` the same path), which then waits for
   * the copy instead of making it (and fails if it failed). Resolves when the copy is done.
   * Drivers without shared RAM files do not have it.
   */
  preloadRam?(from: string): Promise<void>
  /** Ends the process and removes its runtime files. */
  discard(): Promise<void>
}
