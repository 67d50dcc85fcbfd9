/**
 * Create: validate, reserve the name, then an ordered list of reversible steps (common's step
 * runner), each recorded in the instance record as it finishes. A failure or a cancel undoes the
 * finished steps newest first; `delete` and the reconcile after a crash walk the recorded steps
 * back through the same undos (`undoCreateSteps`).
 *
 *   instance_dir → volumes → devices → gpu → [image ∥ overlay_disk] → network → egress → config_disk → vmm → guest_ready
 *
 * A variant edits the list by step name: without volumes there is no `volumes` step, without
 * passthrough devices no `devices` step, without a vGPU no `gpu` step, without networking no
 * `network` step, without mediated egress no `egress` step.
 */
import { mkdir, rm } from 'node:fs/promises'
import { createId } from '@paralleldrive/cuid2'
import {
  ConflictError,
  errorMessage,
  HypemanError,
  NotSupportedError,
  runSteps,
  StepsFailedError,
  undoSteps,
  ValidationError,
  withoutSteps,
  type Step,
  type StepList,
  type StepRecord,
} from '@hypeman-ts/common'
import { egressProxyEnv, type NetworkAttachment } from '@hypeman-ts/netsetup'
import { createOverlayDisk, DISK_SERIAL, resolveProgram, writeGuestConfigDisk, type GuestConfig } from '../guest/index.js'
import type { ImageRecord } from '../images/store.js'
import { boot, destroyRuntime, guestVolumes, kernelHeadersDisk, volumeOverlayPath, waitForGuest } from './boot.js'
import { nowIso, type InstanceContext } from './context.js'
import type { Instance } from './model.js'
import { attachNetwork, detachNetwork, guestEnv, guestNetwork, registerEgress, unregisterEgress } from './network.js'
import { validateCreateParams, type CreateInstanceParams, type InstanceSpec } from './params.js'
import { newRecord, type CreateStep, type InstanceRecord } from './record.js'
import { toInstance } from './view.js'

export interface CreateOptions {
  signal?: AbortSignal
  /** Return only once the program started (Running) or ended. Default true. */
  waitForRunning?: boolean
}

/** What the steps of one create share: the record, and what earlier steps found for later ones. */
export interface CreateRun {
  cx: InstanceContext
  record: InstanceRecord
  waitForRunning: boolean
  img?: ImageRecord
  diskPath?: string
  attachment?: NetworkAttachment
  guestEnv: Record<string, string>
  egress?: GuestConfig['egress']
  /** A fork's source (fork.ts), as it was when the fork began. */
  forkOf?: InstanceRecord
}

export type CreateStepDef = Step<CreateRun> & { name: CreateStep }

/** The image's Entrypoint/Cmd/Env/WorkingDir/User in the shape the program resolver reads. */
function runtimeConfig(img: ImageRecord): Parameters<typeof resolveProgram>[0] {
  const c = img.config
  return {
    Entrypoint: c.entrypoint,
    Cmd: c.cmd,
    Env: Object.entries(c.env).map(([k, v]) => `${k}=${v}`),
    ...(c.workingDir ? { WorkingDir: c.workingDir } : {}),
    ...(c.user ? { User: c.user } : {}),
  }
}

export const instanceDir: CreateStepDef = {
  name: 'instance_dir',
  // Done by `reserve` under the names lock, before the run; here for its undo.
  run: async () => {},
  undo: async ({ cx, record }) => {
    // A fork's VMM has no `vmm` step; and an adopted warm VMM carries its slot's mark, not this
    // runtime dir's: each is ended by its recorded pid.
    const vm = cx.live.forget(record.id)
    if (vm) await vm.kill().catch(() => {})
    if (record.vmm) await cx.driver(record.vmm.driver).destroy(record.vmm).catch(() => {})
    await destroyRuntime(cx, record.id)
    // Volumes attached after create (attachVolume) have no `volumes` step to undo: released here.
    await cx.opts.volumes?.release(record.id)
    await rm(cx.files.paths(record.id).dir, { recursive: true, force: true })
  },
}

/**
 * Records the attachments in the volumes (names resolved to ids, conflicts refused under the
 * volumes lock), then makes the instance's writable disk over each overlay-mounted one. Recorded
 * first: a crash mid-attach must still be released by reconcile.
 */
const volumes: CreateStepDef = {
  name: 'volumes',
  recordFirst: true,
  async run({ cx, record }, signal) {
    const spec = record.spec
    spec.volumes = await cx.opts.volumes!.attach(record.id, spec.volumes ?? [])
    for (const v of spec.volumes) {
      if (v.overlay) await createOverlayDisk(volumeOverlayPath(cx, record.id, v.volumeId), v.overlayBytes!, { signal })
    }
  },
  // The overlay disks live in the instance dir, which `instance_dir`'s undo removes.
  undo: async ({ cx, record }) => cx.opts.volumes?.release(record.id),
}

/**
 * Claims the registered devices (names resolved to ids, conflicts refused under the devices
 * lock) and moves each to vfio-pci. Recorded first: a crash mid-bind must still give them back.
 */
const devices: CreateStepDef = {
  name: 'devices',
  recordFirst: true,
  async run({ cx, record }) {
    record.spec.devices = await cx.opts.devices!.claim(record.id, record.spec.devices ?? [])
  },
  undo: async ({ cx, record }) => cx.opts.devices?.release(record.id),
}

/** Makes the vGPU; its UUID is in the record before the kernel is asked, so the undo finds it. */
const gpu: CreateStepDef = {
  name: 'gpu',
  recordFirst: true,
  async run({ cx, record }) {
    await cx.opts.devices!.createGpu(record.spec.gpu!.profile, async (mdev) => {
      record.gpu = mdev
      await cx.files.write(record)
    })
  },
  undo: async ({ cx, record }) => {
    if (record.gpu) await cx.opts.devices?.removeGpu(record.gpu.uuid)
  },
}

const image: CreateStepDef = {
  name: 'image',
  async run(c, signal) {
    const { cx, record } = c
    const spec = record.spec
    // As `docker run` does: an image already in the cache is used as it is, no registry round trip.
    const cached = await cx.opts.images.get(spec.image).catch(() => undefined)
    const usable = cached?.status === 'ready' && (!spec.platform || cached.platform === spec.platform)
    const img = usable ? cached : await cx.opts.images.pull({ name: spec.image, ...(spec.platform ? { platform: spec.platform } : {}) }, { signal })
    const ready = await cx.opts.images.resolveReady(img.name)
    c.img = ready.record
    c.diskPath = ready.diskPath
    record.imageDigest = ready.record.digest
  },
}

/** The writable layer needs nothing from the image: it is made while the image is resolved. */
const overlayDisk: CreateStepDef = {
  name: 'overlay_disk',
  run: ({ cx, record }, signal) => createOverlayDisk(cx.files.paths(record.id).overlay, record.spec.overlayBytes, { signal }),
}

export const network: CreateStepDef = {
  name: 'network',
  // A crash mid-attach must still be detached by reconcile.
  recordFirst: true,
  async run(c, signal) {
    c.attachment = await attachNetwork(c.cx, c.record, signal)
  },
  undo: ({ cx, record }) => detachNetwork(cx, record),
}

export const egress: CreateStepDef = {
  name: 'egress',
  recordFirst: true,
  async run(c) {
    const registered = await registerEgress(c.cx, c.record)
    Object.assign(c.guestEnv, registered.placeholders)
    c.egress = { caBundlePem: (await c.cx.opts.egress!.get()).caPem, proxyEnv: egressProxyEnv(c.attachment!) }
  },
  undo: ({ cx, record }) => unregisterEgress(cx, record),
}

const configDisk: CreateStepDef = {
  name: 'config_disk',
  run: async (c) => {
    const spec = c.record.spec
    await writeGuestConfigDisk(c.cx.files.paths(c.record.id).config, {
      ...resolveProgram(runtimeConfig(c.img!), { entrypoint: spec.entrypoint, cmd: spec.cmd, env: c.guestEnv }, spec.name),
      hostname: spec.name,
      ...(c.record.machineId ? { machineId: c.record.machineId } : {}),
      rootfsType: c.img!.disk.format,
      skipGuestAgent: spec.skipGuestAgent,
      ...(c.attachment ? { network: guestNetwork(c.attachment) } : {}),
      ...(c.egress ? { egress: c.egress } : {}),
      ...(spec.volumes?.length ? { volumes: guestVolumes(c.record) } : {}),
      ...(c.record.kernelHeaders ? { kernelHeadersSerial: DISK_SERIAL.headers } : {}),
    })
  },
}

const vmm: CreateStepDef = {
  name: 'vmm',
  // The process exists before `start` resolves (its pid is persisted at spawn): a crash in
  // between must still end it.
  recordFirst: true,
  async run(c, signal) {
    const { cx, record } = c
    const spec = record.spec
    await cx.files.log(record.id, `create: image ${spec.image} (${c.img!.digest}), ${spec.vcpus} vCPU, ${spec.size} memory`)
    await boot(cx, record, c.diskPath!, signal, 'create')
  },
  undo: async ({ cx, record }) => {
    const vm = cx.live.forget(record.id)
    if (vm) await vm.kill().catch(() => {})
    if (record.vmm) await cx.driver(record.vmm.driver).destroy(record.vmm)
  },
}

const guestReady: CreateStepDef = {
  name: 'guest_ready',
  durable: true,
  async run(c, signal) {
    if (c.waitForRunning) await waitForGuest(c.cx, c.record, signal)
    signal.throwIfAborted()
    c.record.phase = 'ready'
  },
}

/** Every create step, in order; `delete` and reconcile undo the recorded ones through this list. */
const ALL_STEPS: StepList<CreateRun> = [instanceDir, volumes, devices, gpu, [image, overlayDisk], network, egress, configDisk, vmm, guestReady]

/** The steps a create of this record runs. */
function stepsFor(record: InstanceRecord): StepList<CreateRun> {
  const n = record.spec.network
  return withoutSteps(ALL_STEPS, [
    ...(record.spec.volumes?.length ? [] : ['volumes']),
    ...(record.spec.devices?.length ? [] : ['devices']),
    ...(record.spec.gpu ? [] : ['gpu']),
    ...(n.enabled ? [] : ['network']),
    ...(n.enabled && n.egress.enabled ? [] : ['egress']),
  ])
}

function stepRecord(cx: InstanceContext, record: InstanceRecord): StepRecord {
  return { done: record.steps, persist: () => cx.files.write(record) }
}

/** Undoes the steps the record says a create finished, newest first (delete, a crashed create). */
export async function undoCreateSteps(cx: InstanceContext, record: InstanceRecord): Promise<void> {
  await undoSteps(ALL_STEPS, { cx, record, waitForRunning: false, guestEnv: {} }, stepRecord(cx, record), ({ step, cause }) =>
    cx.logger.warn('undoing a create step failed; the next open retries it', { id: record.id, step, error: errorMessage(cause) }),
  )
}

/** Devices and the vGPU, checked before anything exists; the steps check again under the lock. */
async function checkPassthrough(cx: InstanceContext, spec: InstanceSpec): Promise<void> {
  if (!spec.devices?.length && !spec.gpu) return
  const field = spec.devices?.length ? 'devices' : 'gpu'
  if (!cx.opts.devices) throw new NotSupportedError(`${field}: this manager has no device support`, { field })
  if (!cx.driver(spec.hypervisor).capabilities.passthrough) {
    throw new NotSupportedError(`${field}: the ${spec.hypervisor} driver cannot pass host devices through (no VFIO)`, { field })
  }
  if (spec.devices?.length) await cx.opts.devices.claim('', spec.devices, { dryRun: true })
  if (spec.gpu) await cx.opts.devices.checkGpu(spec.gpu.profile)
}

export async function createInstance(cx: InstanceContext, params: CreateInstanceParams, opts: CreateOptions = {}): Promise<Instance> {
  const spec = validateCreateParams(params, cx.opts.defaults)
  cx.driver(spec.hypervisor)
  if (spec.volumes?.length) {
    if (!cx.opts.volumes) throw new NotSupportedError('volumes: this manager has no volume store', { field: 'volumes' })
    // Unknown volumes and held ones are refused before anything exists; the step checks again under the lock.
    await cx.opts.volumes.attach('', spec.volumes, { dryRun: true })
  }
  await checkPassthrough(cx, spec)
  // Before anything of the instance exists: a kernel without headers is refused here, and on a
  // machine setup did not prepare, the first create that wants headers pays their download and mkfs.
  if (!spec.skipKernelHeaders) await kernelHeadersDisk(cx, opts.signal)
  const record = newRecord(createId(), spec, nowIso())
  return runCreate(cx, record, stepsFor(record), {}, opts)
}

/**
 * Reserves the record's name, then runs `steps` as a create (recorded, undone on failure or cancel,
 * cancelled by a delete): the create of `createInstance`, and a fork's (fork.ts).
 */
export async function runCreate(
  cx: InstanceContext,
  record: InstanceRecord,
  steps: StepList<CreateRun>,
  extra: Pick<CreateRun, 'forkOf'>,
  opts: CreateOptions = {},
): Promise<Instance> {
  const spec = record.spec
  const id = record.id
  const cancel = new AbortController()
  const signal = opts.signal ? AbortSignal.any([opts.signal, cancel.signal]) : cancel.signal
  let settled!: () => void
  const done = new Promise<void>((resolve) => (settled = resolve))
  await cx.files
    .withNamesLock(async () => {
      if ((await cx.records()).some((r) => r.name === spec.name && r.phase !== 'deleting')) {
        throw new ConflictError(`an instance named "${spec.name}" already exists`, { field: 'name' })
      }
      await mkdir(cx.files.paths(id).dir, { recursive: true, mode: 0o700 })
      record.steps.push('instance_dir')
      await cx.files.write(record)
      // Before the lock is let go, so no delete can see the record and miss the create.
      cx.creating.set(id, { cancel, done })
    })
    .catch((err: unknown) => {
      cx.creating.delete(id)
      settled()
      throw err
    })

  const run: CreateRun = { cx, record, waitForRunning: opts.waitForRunning !== false, guestEnv: guestEnv(record), ...extra }
  try {
    await runSteps(steps, run, stepRecord(cx, record), {
      signal,
      onUndoError: ({ step, cause }) => cx.logger.warn('undoing a create step failed; the next open retries it', { id, step, error: errorMessage(cause) }),
    })
  } catch (caught) {
    const failed = caught as StepsFailedError
    // Cancelled by a delete: that is what happened, whichever way the step noticed.
    const err: unknown = cancel.signal.aborted ? cancel.signal.reason : failed.cause
    if (err instanceof ValidationError) throw err
    const code = err instanceof HypemanError ? err.code : 'create_failed'
    throw new HypemanError(code, `create ${spec.name}: step ${failed.step} failed: ${errorMessage(err)}`, {
      step: failed.step,
      cause: err,
      ...(err instanceof HypemanError && err.field ? { field: err.field } : {}),
    })
  } finally {
    cx.creating.delete(id)
    settled()
  }
  return toInstance(cx, (await cx.files.read(id))!)
}
