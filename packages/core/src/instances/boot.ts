/**
 * One boot of an instance's VMM: start it (cold, or from the standby snapshot), wait for the
 * guest's program, watch it, and record its end (the guest's exit report, or why the VMM ended,
 * or the standby snapshot it left). A cold boot decides whether the VM gets the SCSI controller
 * that volumes attached while running need (and always when some are); a restore rebuilds the
 * machine its snapshot came from, hot-plugged disks included (their SCSI targets follow their slots).
 */
import { createHash } from 'node:crypto'
import { rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { errorMessage, HypemanError, NotFoundError, NotSupportedError, pathExists, TimeoutError } from '@hypeman-ts/common'
import { SNAPSHOT_META_FILE, warmShape, warmUnsupported, type AdoptOptions, type DiskSpec, type LiveVm, type PausedVm, type PersistedVm, type RunningVm, type StartOptions, type VmSpec } from '@hypeman-ts/vmm-drivers'
import {
  DISK_SERIAL,
  guestChannels,
  guestDisks,
  readStatusEvents,
  statusMark,
  summarizeStatus,
  tailLines,
  waitForStatusEvent,
  type GuestStatusSummary,
  type GuestVolumeConfig,
  type GuestVolumeDisk,
  hotVolumeOverlaySerial,
  hotVolumeSerial,
  volumeDiskSerial,
  volumeOverlaySerial,
} from '../guest/index.js'
import { nowIso, type InstanceContext } from './context.js'
import type { InstanceVolume } from './params.js'
import { bootWithTemplate, SHARED_DISKS, templatePlan, type StartVm } from './template-boot.js'
import { adoptSpareTap, spareTaps } from './network.js'
import type { InstanceRecord } from './record.js'
import { exitFromGuest } from './state.js'
import type { RefillOptions, WarmClaim } from '../templates/warm-pool.js'

/** Removes the instance's runtime dir and whatever a VMM left in it, and its RAM file. */
export async function destroyRuntime(cx: InstanceContext, id: string): Promise<void> {
  const { runtimeDir, memory } = cx.files.paths(id)
  for (const d of Object.values(cx.opts.drivers)) await d?.destroy({ runtimeDir }).catch(() => {})
  await rm(runtimeDir, { recursive: true, force: true })
  await rm(memory, { force: true })
}

export async function rootfsOf(cx: InstanceContext, record: InstanceRecord): Promise<{ diskPath: string }> {
  const img = record.imageDigest ? await cx.opts.images.store.getRecord(record.imageDigest) : undefined
  if (!img) throw new NotFoundError(`the image disk of instance ${record.name} (${record.imageDigest}) is no longer in the cache`, { field: 'image' })
  return { diskPath: cx.opts.images.store.diskPath(img) }
}

/** A volume's disk files as the VMM gets them. */
export function volumeDisk(cx: InstanceContext, id: string, v: InstanceVolume): GuestVolumeDisk {
  return {
    disk: cx.opts.volumes!.diskPath(v.volumeId),
    readonly: v.readonly,
    ...(v.overlay ? { overlay: volumeOverlayPath(cx, id, v.volumeId) } : {}),
    ...(v.hotplugSlot !== undefined ? { hotplugSlot: v.hotplugSlot } : {}),
  }
}

/** diskIoBps limits every disk the workload's I/O reaches (image, overlay, volumes, hot-plugged ones too); not the config disk. */
export function diskThrottle(record: InstanceRecord): Pick<DiskSpec, 'throttle'> {
  return record.spec.diskIoBytesPerSec ? { throttle: { bytesPerSec: record.spec.diskIoBytesPerSec } } : {}
}

/**
 * Whether a cold boot gets the SCSI controller that volumes attached while running need (a
 * restore rebuilds what the snapshotted boot had: `record.scsiController`).
 */
function wantsScsiController(cx: InstanceContext, record: InstanceRecord): boolean {
  if ((record.spec.volumes ?? []).some((v) => v.hotplugSlot !== undefined)) return true
  return !!cx.opts.volumes && cx.opts.volumeHotplug !== false && cx.driver(record.spec.hypervisor).capabilities.diskHotplug
}

/**
 * The instance's own writable disk over a volume it mounts with an overlay; named by the volume
 * (not its position, which a detach shifts), and removed with the instance dir.
 */
export function volumeOverlayPath(cx: InstanceContext, id: string, volumeId: string): string {
  return join(cx.files.paths(id).dir, `volume-${volumeId}-overlay.ext4`)
}

/** The volumes as the guest mounts them: parents before paths inside them; serials follow the spec's order (hot-attached ones: their slot). */
export function guestVolumes(record: InstanceRecord): GuestVolumeConfig[] {
  const depth = (p: string) => p.split('/').length
  return (record.spec.volumes ?? []).map((v, i) => guestVolume(v, i)).sort((a, b) => depth(a.mountPath) - depth(b.mountPath))
}

/** How the guest mounts the volume at position `i` of the spec. */
export function guestVolume(v: InstanceVolume, i: number): GuestVolumeConfig {
  const hot = v.hotplugSlot
  return {
    serial: hot === undefined ? volumeDiskSerial(i) : hotVolumeSerial(hot),
    mountPath: v.mountPath,
    mode: v.overlay ? 'overlay' : v.readonly ? 'ro' : 'rw',
    ...(v.overlay ? { overlaySerial: hot === undefined ? volumeOverlaySerial(i) : hotVolumeOverlaySerial(hot) } : {}),
    ...(hot === undefined ? {} : { bus: 'scsi' as const }),
  }
}

/** The guest kernel's headers disk (made on first use), or a refusal naming skipKernelHeaders. */
export async function kernelHeadersDisk(cx: InstanceContext, signal?: AbortSignal): Promise<{ path: string }> {
  if (!cx.opts.kernelHeaders) throw new NotSupportedError('skipKernelHeaders: this manager has no kernel headers to give: set skipKernelHeaders to true', { field: 'skipKernelHeaders' })
  return cx.opts.kernelHeaders(signal)
}


/** The instance's passthrough devices and vGPU, as the VMM takes them. */
async function passthroughOf(cx: InstanceContext, record: InstanceRecord): Promise<Pick<VmSpec, 'passthrough'>> {
  const ids = record.spec.devices ?? []
  if (!ids.length && !record.gpu) return {}
  const devices = cx.opts.devices
  if (!devices) throw new NotSupportedError('devices: this manager has no device support', { field: 'devices' })
  return { passthrough: [...(await devices.passthroughSpecs(ids)), ...(record.gpu ? [devices.gpuPassthrough(record.gpu.uuid)] : [])] }
}

/** The VMM spec of the record's machine as it stands (its SCSI controller decided, `record.scsiController`). */
async function vmSpecOf(cx: InstanceContext, record: InstanceRecord, rootfs: string, signal?: AbortSignal): Promise<VmSpec> {
  const spec = record.spec
  const paths = cx.files.paths(record.id)
  const assets = await cx.opts.assets()
  const throttle = diskThrottle(record)
  const kernelHeaders = record.kernelHeaders ? (await kernelHeadersDisk(cx, signal)).path : undefined
  return {
    name: spec.name,
    kernel: assets.kernelPath,
    initrd: assets.initrdPath,
    cmdline: [assets.cmdline, spec.hotplugBytes ? 'memhp_default_state=online' : ''].filter(Boolean).join(' '),
    vcpus: spec.vcpus,
    memoryBytes: spec.memoryBytes,
    // RAM in a tmpfs file of the instance's: a standby streams only the devices and copies the
    // file into the snapshot, a restore copies it back, a fork of a running one copies it.
    ...((cx.driver(spec.hypervisor).capabilities.memoryFile && (await cx.files.ramFileFits(spec.memoryBytes))) ? { memoryFile: { path: paths.memory, shared: true } } : {}),
    ...(spec.hotplugBytes ? { hotplugMemory: { maxBytes: spec.memoryBytes + spec.hotplugBytes } } : {}),
    disks: guestDisks({
      rootfs,
      overlay: paths.overlay,
      config: paths.config,
      volumes: (spec.volumes ?? []).map((v) => volumeDisk(cx, record.id, v)),
      ...(kernelHeaders ? { kernelHeaders } : {}),
    }).map((d) => (d.serial === DISK_SERIAL.config ? d : { ...d, ...throttle })),
    ...(record.scsiController ? { scsiController: true } : {}),
    channels: guestChannels(
      { agentSocket: paths.agentSocket, controlSocket: paths.controlSocket, appLog: paths.appLog, statusLog: paths.statusLog },
      { skipGuestAgent: spec.skipGuestAgent },
    ),
    ...(record.network ? { nics: [{ tap: record.network.tap, mac: record.network.mac }] } : {}),
    // From the record, so a restore gets the very devices the snapshot was taken with.
    ...(await passthroughOf(cx, record)),
    ...(record.network?.netns ? { netns: record.network.netns } : {}),
    consoleLog: paths.consoleLog,
    vmmLog: paths.vmmLog,
    runtimeDir: paths.runtimeDir,
    accel: cx.opts.accel,
  }
}

/** The spec a restore from standby starts: the NIC as the snapshot's VMM had it (a VM once restored from a template keeps the template's MAC). */
function restoreSpec(cx: InstanceContext, record: InstanceRecord, vmSpec: VmSpec): VmSpec {
  const nics = vmSpec.nics?.map((n) => ({ ...n, mac: record.vmmMac ?? n.mac }))
  return { ...vmSpec, ...(nics ? { nics } : {}), restoreFrom: cx.files.paths(record.id).snapshot }
}

/**
 * A restore with no RAM file of its own (no room on the RAM dir's tmpfs for a copy) of a snapshot
 * that keeps the RAM in a file maps that file copy-on-write: read lazily, the snapshot untouched.
 * The guest runs on, its RAM the host's page cache plus what it writes; its next standby streams
 * the RAM, as with anonymous memory. Failing the restore instead would keep the instance on
 * Standby until the host has room.
 */
async function withSnapshotRam(cx: InstanceContext, record: InstanceRecord, s: VmSpec): Promise<VmSpec> {
  if (s.memoryFile || !s.restoreFrom) return s
  const ram = await cx.driver(record.spec.hypervisor).snapshotRamFile?.(s.restoreFrom)
  if (!ram) return s
  await cx.files.log(record.id, `no room for a copy of the guest's RAM on ${cx.files.ramBase}: the snapshot's RAM is mapped copy-on-write`)
  return { ...s, memoryFile: { path: ram, shared: false } }
}

/**
 * The warm-VMM shape of a restore, when one can serve it: not with parts the driver cannot
 * re-point (hot-plugged or throttled disks, devices); with a NIC only on the host network (the
 * warm VMM's spare TAP becomes the instance's).
 */
function warmRestoreKey(cx: InstanceContext, s: VmSpec): string | undefined {
  if (!cx.opts.warm || (s.nics?.length && !cx.opts.network) || warmUnsupported(s)) return undefined
  return `restore-${createHash('sha256').update(warmShape(s)).digest('hex').slice(0, 32)}`
}

/**
 * After a standby: a warm VMM for the instance's restore, so that it skips QEMU's start. Nothing
 * when none can serve it; a failure is the pool's to log.
 */
export async function warmForRestore(cx: InstanceContext, record: InstanceRecord): Promise<void> {
  const w = await restoreShape(cx, record)
  if (w) cx.opts.warm!.refill(w.key, cx.driver(record.spec.hypervisor), w.spec, w.opts)
}

/**
 * A warm VMM of the record's restore shape for a clone of its paused VM (a fork of the running
 * instance): claimed now, so that QEMU starts, and the source's RAM is copied into it, while the
 * fork's steps run. Undefined without a pool or when none can serve the shape.
 */
export async function claimForClone(cx: InstanceContext, record: InstanceRecord, source: PausedVm): Promise<WarmClaim | undefined> {
  const w = await restoreShape(cx, record)
  const ram = source.persisted.spec.memoryFile
  return w ? cx.opts.warm!.claim(w.key, cx.driver(record.spec.hypervisor), w.spec, w.opts, ram?.shared ? ram.path : undefined) : undefined
}

/** The warm pool's key, spec (nothing loaded) and refill options for a restore of the record's machine. */
async function restoreShape(cx: InstanceContext, record: InstanceRecord): Promise<{ key: string; spec: VmSpec; opts: RefillOptions } | undefined> {
  if (!cx.opts.warm) return undefined
  const s = restoreSpec(cx, record, await vmSpecOf(cx, record, (await rootfsOf(cx, record)).diskPath))
  const key = warmRestoreKey(cx, s)
  if (!key) return undefined
  const { restoreFrom: _loadedAtAdoption, ...empty } = s
  const taps = spareTaps(cx)
  return { key, spec: empty, opts: { sharedDisks: SHARED_DISKS, ...(taps ? { taps } : {}) } }
}

/**
 * Starts a VMM by `start` and makes it the instance's: the pid recorded as soon as it exists, its
 * end watched, the boot logged (with `how` it came: a warm VMM, a clone). `fresh`: a boot of its
 * own (not a restore, nor a clone), whose status events are read from where the log stands now.
 */
async function recordedStart(
  cx: InstanceContext,
  record: InstanceRecord,
  s: VmSpec,
  fresh: boolean,
  signal: AbortSignal | undefined,
  start: (opts: StartOptions) => Promise<{ vm: RunningVm; how?: string }>,
): Promise<RunningVm> {
  const paths = cx.files.paths(record.id)
  // Each attempt's events are read from where it began (a failed template restore may have left some).
  if (fresh) record.statusMark = await statusMark(paths.statusLog)
  const { vm, how } = await start({
    ...(signal ? { signal } : {}),
    onSpawn: async (persisted: PersistedVm) => {
      record.vmm = persisted
      await cx.files.write(record)
    },
  })
  record.vmm = vm.persisted
  await cx.files.write(record)
  watch(cx, record.id, vm)
  await cx.files.log(record.id, `${s.restoreFrom ? 'restored' : how?.startsWith('a clone') ? 'cloned' : 'booted'}: VMM pid ${vm.pid} (${vm.accel}${how ? `, ${how}` : ''})`)
  return vm
}

/**
 * The fork's VMM as a clone of its paused source (fork.ts): a warm VMM of the machine (the pool's,
 * else one spawned now) takes the source's guest over a live migration, runs, and is recorded as
 * any boot's. Its disks were copied while the source was paused.
 */
export async function bootClone(cx: InstanceContext, record: InstanceRecord, source: PausedVm, claim?: WarmClaim, signal?: AbortSignal): Promise<RunningVm> {
  const driver = cx.driver(record.spec.hypervisor)
  if (!driver.spawnWarm) throw new NotSupportedError(`${driver.name} cannot clone a running VM`, { field: 'hypervisor' })
  const { restoreFrom: _none, ...s } = restoreSpec(cx, record, await vmSpecOf(cx, record, (await rootfsOf(cx, record)).diskPath, signal))
  const key = warmRestoreKey(cx, { ...s, restoreFrom: '' })
  const migrateFrom = source as unknown as NonNullable<AdoptOptions['migrateFrom']>
  // A source whose RAM is a file of its own: copied in the kernel, only the devices migrate.
  const ram = source.persisted.spec.memoryFile
  const clone: AdoptOptions = { migrateFrom, ...(ram?.shared ? { ramFrom: ram.path } : {}) }
  // A claim made for another machine (the source's shape changed since) is not this one's.
  if (claim && claim.key !== key) await claim.release()
  const mine = claim?.key === key ? claim : undefined
  const hooks = { adoptTap: (spare: string) => adoptSpareTap(cx, record, spare) }
  return recordedStart(cx, record, s, false, signal, async (opts) => {
    const pooled = mine ? await mine.adopt(s, { ...opts, ...clone }, hooks) : key ? await cx.opts.warm!.adopt(key, s, { ...opts, ...clone }, hooks) : undefined
    return { vm: pooled ?? (await (await driver.spawnWarm!(s, { ...opts, now: true })).adopt(s, { ...opts, ...clone })), how: pooled ? 'a clone, in a warm VMM' : 'a clone' }
  })
}

/**
 * What a boot starts from: a fresh overlay disk (`create`), the overlay of earlier boots
 * (`start`), or the standby snapshot (`restore`).
 */
export type BootMode = 'create' | 'start' | 'restore'

/**
 * Starts the VMM for the record's current disks: a restore from its standby snapshot, else (a
 * create) a boot from its shape's template when it can (template-boot.ts), else a cold boot. A
 * template's guest has its root mounted already, on a copy of the template's own overlay disk:
 * an instance whose overlay holds earlier boots' files boots cold.
 */
export async function boot(cx: InstanceContext, record: InstanceRecord, rootfs: string, signal: AbortSignal | undefined, mode: BootMode): Promise<RunningVm> {
  const restore = mode === 'restore'
  const driver = cx.driver(record.spec.hypervisor)
  if (!restore) {
    record.exit = null
    record.startedAt = nowIso()
    record.stoppedAt = null
  }
  if (!restore) record.scsiController = wantsScsiController(cx, record)
  // A boot starts on RAM of its own: nothing a VMM left is carried over.
  await rm(cx.files.paths(record.id).memory, { force: true })
  const vmSpec = await vmSpecOf(cx, record, rootfs, signal)
  const startVm: StartVm = (s, how = {}) =>
    recordedStart(cx, record, s, !restore, signal, async (opts) => {
      const warm = how.adopt ? await how.adopt(opts) : undefined
      if (warm) return { vm: warm, how: 'a warm VMM' }
      await how.beforeStart?.()
      return { vm: await driver.start(s, opts) }
    })
  if (restore) {
    const s = await withSnapshotRam(cx, record, restoreSpec(cx, record, vmSpec))
    const key = warmRestoreKey(cx, s)
    return startVm(s, key ? { adopt: (opts) => cx.opts.warm!.adopt(key, s, opts, { adoptTap: (spare) => adoptSpareTap(cx, record, spare) }) } : {})
  }
  const plan = mode !== 'create' ? undefined : await templatePlan(cx, record, vmSpec).catch((err: unknown) => {
    cx.logger.warn('no boot template for this shape', { id: record.id, error: errorMessage(err) })
    return undefined
  })
  const fromTemplate = plan ? await bootWithTemplate(cx, record, vmSpec, plan, startVm, signal) : undefined
  if (fromTemplate) return fromTemplate
  delete record.vmmMac
  delete record.template
  return startVm(vmSpec)
}

/** Waits until the program started, or the boot ended (program exit or boot error). */
export async function waitForGuest(cx: InstanceContext, record: InstanceRecord, signal?: AbortSignal): Promise<void> {
  const paths = cx.files.paths(record.id)
  const vm = cx.live.get(record.id)
  const ended = new AbortController()
  const onAbort = (): void => ended.abort(signal?.reason)
  signal?.addEventListener('abort', onAbort, { once: true })
  void vm?.exited.then(() => setTimeout(() => ended.abort(new Error('vmm exited')), 500))
  try {
    await waitForStatusEvent(paths.statusLog, ['started', 'exited', 'error'], {
      since: record.statusMark,
      timeoutMs: cx.bootTimeoutMs,
      signal: ended.signal,
    })
  } catch (err) {
    if (signal?.aborted) throw err
    // The VMM ended before the guest said anything: the boot itself failed (see the console log).
    if (ended.signal.aborted) {
      const tail = (await tailLines(paths.consoleLog, 20)).join('\n')
      throw new HypemanError('boot_failed', `the VM ended before the guest program started${tail ? `; console:\n${tail}` : ''}`, { step: 'guest_ready' })
    }
    throw new TimeoutError(`the guest did not start its program within ${cx.bootTimeoutMs} ms`, { step: 'guest_ready', cause: err })
  } finally {
    signal?.removeEventListener('abort', onAbort)
  }
}

export function watch(cx: InstanceContext, id: string, vm: LiveVm): void {
  cx.live.watch(id, vm, (exit) =>
    onVmExit(cx, id, vm.pid, exit.reason).catch((err) => cx.logger.warn('recording a VM exit failed', { id, error: errorMessage(err) })),
  )
}

/** Records a boot's end: the guest's exit report if it made one, else why the VMM ended. */
export async function onVmExit(cx: InstanceContext, id: string, pid: number, reason: string): Promise<void> {
  if (!(await pathExists(cx.files.paths(id).dir))) return // deleted: nothing to record
  try {
    await cx.files.withLock(id, async () => {
      const record = await cx.files.read(id)
      if (!record || record.vmm?.pid !== pid) return // deleted, or a newer boot
      await finishBoot(cx, record, reason)
    })
  } catch (err) {
    // The instance directory went away under us: a delete won the race.
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
}

/**
 * Marks the current boot as ended in the record (call under the instance lock). A complete
 * snapshot in the staging dir becomes the instance's snapshot here, in the same record write
 * that says the VMM is gone, so no reader (nor a crash) sees one without the other.
 */
export async function finishBoot(cx: InstanceContext, record: InstanceRecord, reason: string): Promise<void> {
  const guest = await guestStatus(cx, record)
  record.vmm = null
  if (await promoteStagedSnapshot(cx, record.id)) record.snapshot = true
  // The VMM is gone: its RAM is in the snapshot (a standby) or nobody's state (power-off).
  await rm(cx.files.paths(record.id).memory, { force: true })
  if (!record.snapshot) {
    record.stoppedAt = nowIso()
    record.exit = exitFromGuest(guest) ?? { code: null, message: `the VM ended (${reason}) before the program reported an exit` }
  }
  await cx.files.write(record)
  await cx.files.log(record.id, record.snapshot ? `standby: VMM ended after the snapshot (${reason})` : `stopped: ${record.exit?.message ?? reason} (exit code ${record.exit?.code ?? 'none'})`)
}

/**
 * Moves a standby's staging dir into place when its snapshot is complete (the driver writes
 * snapshot.json last, after the guest's state), and removes an incomplete one.
 */
export async function promoteStagedSnapshot(cx: InstanceContext, id: string): Promise<boolean> {
  const paths = cx.files.paths(id)
  if (!(await pathExists(paths.snapshotStaging))) return false
  if (!(await pathExists(join(paths.snapshotStaging, SNAPSHOT_META_FILE)))) {
    await rm(paths.snapshotStaging, { recursive: true, force: true })
    return false
  }
  await rm(paths.snapshot, { recursive: true, force: true })
  await rename(paths.snapshotStaging, paths.snapshot)
  return true
}

export async function guestStatus(cx: InstanceContext, record: InstanceRecord): Promise<GuestStatusSummary> {
  return summarizeStatus(await readStatusEvents(cx.files.paths(record.id).statusLog, record.statusMark).catch(() => []))
}

