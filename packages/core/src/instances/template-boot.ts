/**
 * Booting from a template instead of the kernel (templates/store.ts). A cold boot of a shape
 * that has no template yet is itself a template boot: init stops before reading the instance's
 * config, the guest is snapshotted there, and the boot goes on. Every later boot of that shape
 * restores the snapshot and hands the guest its own clock and entropy (`go` on the control port);
 * the guest then flushes its disks' caches and reads this instance's config, disks and NIC as a
 * cold boot does.
 *
 * Shapes a template cannot serve boot cold: volumes (the disk set differs per instance), host
 * devices (passed through per instance), memory hotplug, and drivers without snapshots, named
 * channels or RAM in a file. A template that fails to restore is dropped and
 * the boot goes on cold; making one that fails costs the template, never the boot.
 */
import { mkdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { errorMessage } from '@hypeman-ts/common'
import { warmUnsupported, type PersistedVm, type RunningVm, type StartOptions, type VmSpec } from '@hypeman-ts/vmm-drivers'
import { copyDiskSparse, DISK_SERIAL, waitForStatusEvent } from '../guest/index.js'
import { sendGo } from './identity.js'
import { adoptSpareTap, spareTaps } from './network.js'
import type { Template, TemplateStore } from '../templates/store.js'
import { templateKey } from '../templates/store.js'
import type { InstanceContext } from './context.js'
import type { InstanceRecord } from './record.js'

/** Bumped when what a template holds changes meaning (the guest's wait, the `go` message, the root mounted before it). */
const TEMPLATE_FORMAT = 2
/** The template's RAM, next to the stream in its snapshot dir: each instance runs on a copy of it. */
const TEMPLATE_MEMORY_FILE = 'memory'
/** The overlay disk as the template's guest left it, root mounted: each instance boots on a copy. */
const TEMPLATE_OVERLAY_FILE = 'overlay.ext4'

export interface TemplatePlan {
  store: TemplateStore
  key: string
  shape: Record<string, unknown>
  /** The cold boot's command line with the template flags init reads. */
  cmdline: string
}

/** Disks every instance of a shape shares (the image's, the kernel headers'): keyed by identity. */
export const SHARED_DISKS: ReadonlySet<string> = new Set([DISK_SERIAL.rootfs, DISK_SERIAL.headers])

/**
 * Starts a VMM for `spec` and records it on the instance (boot.ts): `adopt` may give one (a warm
 * VMM); otherwise `beforeStart` runs, then the driver starts one.
 */
export type StartVm = (
  spec: VmSpec,
  how?: { adopt?: (opts: StartOptions) => Promise<RunningVm | undefined>; beforeStart?: () => Promise<void> },
) => Promise<RunningVm>

/** The template plan of a cold boot of `spec`, or undefined when its shape cannot use one. */
export async function templatePlan(cx: InstanceContext, record: InstanceRecord, spec: VmSpec): Promise<TemplatePlan | undefined> {
  const store = cx.opts.templates
  const driver = cx.driver(record.spec.hypervisor)
  if (!store || !driver.capabilities.snapshot || !driver.capabilities.namedChannels || !driver.capabilities.memoryFile) return undefined
  if (record.spec.volumes?.length || spec.hotplugMemory || spec.passthrough?.length) return undefined
  const image = record.imageDigest ? await cx.opts.images.store.getRecord(record.imageDigest) : undefined
  if (!image) return undefined
  const headers = (spec.disks ?? []).some((d) => d.serial === DISK_SERIAL.headers)
  const flags = [spec.nics?.length ? 'net' : '', image.disk.format === 'erofs' ? 'erofs' : '', record.spec.skipGuestAgent ? '' : 'agent', headers ? 'headers' : ''].filter(Boolean)
  const cmdline = `${spec.cmdline} hypeman.template=${flags.join('+') || '1'}`
  // A file's identity: rebuilt assets (a new init, another kernel) are another template.
  const file = async (path: string) => {
    const s = await stat(path)
    return [path, s.size, Math.trunc(s.mtimeMs)]
  }
  const shape = {
    format: TEMPLATE_FORMAT,
    driver: driver.name,
    accel: cx.opts.accel,
    imageDigest: record.imageDigest,
    kernel: await file(spec.kernel),
    initrd: await file(spec.initrd!),
    cmdline,
    vcpus: spec.vcpus,
    memoryBytes: spec.memoryBytes,
    // The guest keeps each disk's size from the template: the shared disks by identity, the instance's own by size.
    disks: await Promise.all(
      (spec.disks ?? []).map(async (d) => ({
        serial: d.serial,
        readonly: d.readonly === true,
        throttled: !!d.throttle,
        file: SHARED_DISKS.has(d.serial) ? await file(d.path) : (await stat(d.path)).size,
      })),
    ),
    scsiController: !!spec.scsiController,
    channels: (spec.channels ?? []).map((c) => c.name),
    nics: spec.nics?.length ?? 0,
  }
  return { store, key: templateKey(shape), shape, cmdline }
}

/**
 * Boots `spec` from its shape's template when there is one, else cold while making one; undefined
 * when neither happened (the caller boots cold). The instance's record says which MAC its VMM's
 * NIC has (`vmmMac`): a restore from standby later must pass the same.
 */
export async function bootWithTemplate(
  cx: InstanceContext,
  record: InstanceRecord,
  spec: VmSpec,
  plan: TemplatePlan,
  startVm: StartVm,
  signal?: AbortSignal,
): Promise<RunningVm | undefined> {
  const existing = await plan.store.get(plan.key)
  if (existing) {
    const restored = await restoreTemplate(cx, record, spec, plan, existing, false, startVm, signal)
    if (restored) return restored
  }
  const making = plan.store.beginMaking(plan.key)
  if (!making) return undefined
  const made = await makeTemplate(cx, record, spec, plan, making, startVm, signal)
  if (!made) return undefined
  return restoreTemplate(cx, record, spec, plan, made, true, startVm, signal)
}

/**
 * Boots `spec` cold with its RAM in a shared file, to the template point, and puts it on standby
 * there: the stream holds the devices, the file the RAM. The instance is then restored from the
 * template like every later one. Undefined when that fails (the VM is gone; the caller boots cold).
 */
async function makeTemplate(
  cx: InstanceContext,
  record: InstanceRecord,
  spec: VmSpec,
  plan: TemplatePlan,
  making: { snapshotDir: string },
  startVm: StartVm,
  signal?: AbortSignal,
): Promise<Template | undefined> {
  let vm: RunningVm | undefined
  try {
    await mkdir(making.snapshotDir, { recursive: true })
    // On the instance's own RAM file (tmpfs), which the standby copies into the template; else
    // on the template's file itself, where the standby leaves it.
    vm = await startVm({ ...spec, cmdline: plan.cmdline, memoryFile: spec.memoryFile ?? { path: join(making.snapshotDir, TEMPLATE_MEMORY_FILE), shared: true } })
    const paths = cx.files.paths(record.id)
    const event = await waitForStatusEvent(paths.statusLog, 'template', { since: record.statusMark, timeoutMs: cx.bootTimeoutMs, ...(signal ? { signal } : {}) })
    if (event.type !== 'template') throw new Error(`the guest reported ${event.type} before reaching the template point`)
    // From here the VMM is the template's, not the instance's: its end records nothing on the instance.
    await disown(cx, record)
    await vm.standby(making.snapshotDir)
    vm = undefined
    await copyDiskSparse(cx.files.paths(record.id).overlay, join(making.snapshotDir, TEMPLATE_OVERLAY_FILE), signal)
    const t = await plan.store.commit(plan.key, { shape: plan.shape, mac: spec.nics?.[0]?.mac ?? null })
    await cx.files.log(record.id, `template ${t.key} made (${t.bytes} bytes)`)
    return t
  } catch (err) {
    await plan.store.abandon(plan.key)
    if (vm) await discardVm(cx, record, vm)
    if (signal?.aborted) throw err
    cx.logger.warn('making a boot template failed; booting cold', { id: record.id, error: errorMessage(err) })
    return undefined
  }
}

/** `made`: this instance made the template, so its overlay disk is the template's own. */
async function restoreTemplate(
  cx: InstanceContext,
  record: InstanceRecord,
  spec: VmSpec,
  plan: TemplatePlan,
  t: Template,
  made: boolean,
  startVm: StartVm,
  signal?: AbortSignal,
): Promise<RunningVm | undefined> {
  let vm: RunningVm | undefined
  try {
    // QEMU would make a missing RAM file anew, empty: a guest that then never answers `go`.
    const memory = join(t.snapshotDir, TEMPLATE_MEMORY_FILE)
    const size = await stat(memory).then((st) => st.size, () => -1)
    if (size !== spec.memoryBytes) throw new Error(`its RAM file ${memory} is missing or has the wrong size (${size} bytes)`)
    const overlay = join(t.snapshotDir, TEMPLATE_OVERLAY_FILE)
    const paths = cx.files.paths(record.id)
    const [have, want] = await Promise.all([stat(overlay).then((st) => st.size, () => -1), stat(paths.overlay).then((st) => st.size)])
    if (have !== want) throw new Error(`its overlay disk ${overlay} is missing or has the wrong size (${have} bytes)`)
    record.vmmMac = t.mac
    record.template = t.key
    record.awaitingGo = true
    // The instance's RAM file (boot.ts) gets a copy of the template's (the driver copies it in),
    // so that its standby copies RAM rather than streams it. Without one, the template's file is
    // mapped copy-on-write: read lazily, shared in the page cache by every copy.
    const restoreSpec: VmSpec = {
      ...spec,
      cmdline: plan.cmdline,
      ...(spec.nics ? { nics: spec.nics.map((n) => ({ ...n, mac: t.mac ?? n.mac })) } : {}),
      memoryFile: spec.memoryFile ?? { path: memory, shared: false },
      restoreFrom: t.snapshotDir,
    }
    // A warm VMM with a NIC holds a spare TAP, which becomes the instance's: that needs the host network.
    const warmKey = cx.opts.warm && (!spec.nics?.length || cx.opts.network) && !warmUnsupported(restoreSpec) ? plan.key : undefined
    const moveDisks = [DISK_SERIAL.overlay]
    vm = await startVm(restoreSpec, {
      // A warm VMM has copies of the template's overlay and RAM of its own: they become this instance's.
      ...(warmKey ? { adopt: (opts: StartOptions) => cx.opts.warm!.adopt(warmKey, restoreSpec, { ...opts, moveDisks }, { adoptTap: (spare) => adoptSpareTap(cx, record, spare) }) } : {}),
      ...(made ? {} : { beforeStart: () => copyDiskSparse(overlay, paths.overlay, signal) }),
    })
    await sendGo(cx, record, signal)
    await plan.store.touch(t)
    await cx.files.log(record.id, `restored from template ${t.key}`)
    if (warmKey) {
      // The next one is spawned once this guest's program runs, not while it boots.
      const settled = waitForStatusEvent(paths.statusLog, ['started', 'exited', 'error'], { since: record.statusMark, timeoutMs: cx.bootTimeoutMs, signal: cx.opts.warm!.closing })
      const taps = spareTaps(cx)
      cx.opts.warm!.refill(warmKey, cx.driver(record.spec.hypervisor), restoreSpec, { sharedDisks: SHARED_DISKS, seed: { [DISK_SERIAL.overlay]: overlay }, after: settled, ...(taps ? { taps } : {}) })
    }
    return vm
  } catch (err) {
    delete record.vmmMac
    delete record.template
    delete record.awaitingGo
    if (vm) await discardVm(cx, record, vm)
    else await cx.files.write(record)
    if (signal?.aborted) throw err
    await plan.store.drop(t.key, `restoring it failed: ${errorMessage(err)}`)
    await cx.opts.warm?.drop(t.key)
    return undefined
  }
}

/** Records that the running VMM is no longer the instance's: its end then records nothing. */
async function disown(cx: InstanceContext, record: InstanceRecord): Promise<PersistedVm | null> {
  const persisted = record.vmm
  record.vmm = null
  delete record.awaitingGo
  await cx.files.write(record)
  cx.live.forget(record.id)
  return persisted
}

/** Ends a VMM this boot gives up on. */
async function discardVm(cx: InstanceContext, record: InstanceRecord, vm: RunningVm): Promise<void> {
  const persisted = (await disown(cx, record)) ?? vm.persisted
  await vm.kill().catch(() => {})
  await cx.driver(persisted.driver).destroy(persisted).catch(() => {})
}
