/**
 * Fork, as hypeman defines it (`POST /instances/{id}/fork`): a new instance that starts from the
 * source's disks, and from a Standby source also from its memory.
 *
 *   - Stopped source: its writable disks are copied; the fork boots like any instance (from its
 *     shape's template when there is one).
 *   - Standby source: its disks and its snapshot are copied; restored, the fork goes on from the
 *     source's moment and is then given its own identity over the control port (`identity`:
 *     clock, entropy, MAC, address, hostname, machine-id, env of new processes).
 *   - Running source, with `fromRunning`: the source is put on standby, forked, and restored.
 *
 * The fork is created through the create's recorded steps (same names, so delete and the crash
 * reconcile undo a half-made fork as they undo a create), then brought to `targetState`; a fork
 * that cannot get there is deleted, and the source is restored whatever happened.
 */
import { copyFile, link, mkdir, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { createId } from '@paralleldrive/cuid2'
import { ConflictError, errorMessage, NotSupportedError, ValidationError } from '@hypeman-ts/common'
import { warmUnsupported } from '@hypeman-ts/vmm-drivers'
import type { WarmClaim } from '../templates/warm-pool.js'
import { copyDiskSparse, readGuestConfigDisk, writeGuestConfigDisk } from '../guest/index.js'
import { bootClone, claimForClone, guestVolumes, volumeOverlayPath } from './boot.js'
import { nowIso, type InstanceContext } from './context.js'
import { egress, instanceDir, network, runCreate, type CreateStepDef } from './create.js'
import { deleteInstance, refillRestoreShape, restore, standby, start, stop } from './lifecycle.js'
import { sendIdentity } from './identity.js'
import type { Instance, InstanceState } from './model.js'
import { guestNetwork } from './network.js'
import { validateName } from './params.js'
import { newRecord, type InstanceRecord } from './record.js'
import { assertCanRun } from './transitions.js'
import { instanceView, toInstance } from './view.js'

export interface ForkParams {
  name: string
  /** Fork a Running source: standby, fork, restore. Without it a Running source is a conflict. */
  fromRunning?: boolean
  /** Default: the source's state when the fork began (Running for a Running source). */
  targetState?: 'Running' | 'Standby' | 'Stopped'
}

const TARGETS = ['Running', 'Standby', 'Stopped'] as const

function validateForkParams(input: unknown): Required<Pick<ForkParams, 'name' | 'fromRunning'>> & Pick<ForkParams, 'targetState'> {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw new ValidationError('params', 'must be an object')
  const p = input as Record<string, unknown>
  for (const key of Object.keys(p)) if (!['name', 'fromRunning', 'targetState'].includes(key)) throw new ValidationError(key, 'is not a fork parameter')
  const name = validateName(p.name)
  if (p.fromRunning !== undefined && typeof p.fromRunning !== 'boolean') throw new ValidationError('fromRunning', 'must be true or false')
  if (p.targetState !== undefined && !TARGETS.includes(p.targetState as never)) throw new ValidationError('targetState', `must be one of ${TARGETS.join(', ')}`)
  return { name, fromRunning: p.fromRunning === true, ...(p.targetState ? { targetState: p.targetState as ForkParams['targetState'] } : {}) }
}

/** The source's read-only volumes, attached to the fork too (an overlay mount gets a copy of the source's layer). */
const forkVolumes: CreateStepDef = {
  name: 'volumes',
  recordFirst: true,
  async run({ cx, record, forkOf }, signal) {
    record.spec.volumes = await cx.opts.volumes!.attach(record.id, record.spec.volumes ?? [])
    for (const v of record.spec.volumes) {
      if (v.overlay) await copyDiskSparse(volumeOverlayPath(cx, forkOf!.id, v.volumeId), volumeOverlayPath(cx, record.id, v.volumeId), signal)
    }
  },
  undo: async ({ cx, record }) => cx.opts.volumes?.release(record.id),
}

/** The writable disk, and a Standby source's snapshot with it: both from the same moment. */
const forkDisks: CreateStepDef = {
  name: 'overlay_disk',
  async run({ cx, record, forkOf }, signal) {
    const from = cx.files.paths(forkOf!.id)
    const to = cx.files.paths(record.id)
    await copyDiskSparse(from.overlay, to.overlay, signal)
    if (forkOf!.snapshot) {
      // Links, not copies: a snapshot's files (its RAM too) are never written again (a standby
      // writes a new dir, a restore copies the RAM out and removes its dir), so source and fork
      // can share them until each has restored.
      await mkdir(to.snapshot)
      for (const name of await readdir(from.snapshot)) await link(join(from.snapshot, name), join(to.snapshot, name))
    }
    if (forkOf!.snapshot || forkOf!.vmm) {
      // The program in the snapshot (or the paused VM a clone copies) was started in the source's
      // boot: its events are the fork's history too.
      await copyFile(from.statusLog, to.statusLog)
      record.statusMark = forkOf!.statusMark
    }
  },
}

/** The source's program and env, with the fork's name, machine-id, network and placeholders. */
const forkConfig: CreateStepDef = {
  name: 'config_disk',
  async run(c) {
    const { cx, record, forkOf } = c
    const source = await readGuestConfigDisk(cx.files.paths(forkOf!.id).config)
    const { requires: _requires, network: _network, egress: _egress, volumes: _volumes, ...kept } = source
    await writeGuestConfigDisk(cx.files.paths(record.id).config, {
      ...kept,
      env: { ...source.env, ...c.guestEnv },
      hostname: record.spec.name,
      ...(record.machineId ? { machineId: record.machineId } : {}),
      ...(c.attachment ? { network: guestNetwork(c.attachment) } : {}),
      ...(c.egress ? { egress: c.egress } : {}),
      ...(record.spec.volumes?.length ? { volumes: guestVolumes(record) } : {}),
    })
  },
}

/** The fork exists whole: from here delete and reconcile treat it as any instance. */
const forkReady: CreateStepDef = {
  name: 'guest_ready',
  durable: true,
  async run({ record }) {
    record.phase = 'ready'
  },
}

/** The create's recorded steps a fork runs (its VMM is started after, by the state it goes to). */
function forkSteps(record: InstanceRecord): CreateStepDef[] {
  const n = record.spec.network
  return [
    instanceDir,
    ...(record.spec.volumes?.length ? [forkVolumes] : []),
    forkDisks,
    ...(n.enabled ? [network] : []),
    ...(n.enabled && n.egress.enabled ? [egress] : []),
    forkConfig,
    forkReady,
  ]
}

/** The fork's record: the source's spec and image under a new id, name and identity. */
function forkRecord(source: InstanceRecord, name: string, clone = false): InstanceRecord {
  const spec = structuredClone(source.spec)
  spec.name = name
  const record = newRecord(createId(), spec, nowIso())
  record.imageDigest = source.imageDigest
  // The machine's device set as the source's last boot had it: a restore of its snapshot rebuilds that machine.
  if (source.kernelHeaders !== undefined) record.kernelHeaders = source.kernelHeaders
  if (source.scsiController !== undefined) record.scsiController = source.scsiController
  if (source.snapshot || clone) {
    if (source.snapshot) record.snapshot = true
    // The snapshot's (or the clone's) NIC is the source's: its VMM gets the same MAC, and the guest takes the fork's.
    record.vmmMac = source.vmmMac ?? source.network?.mac ?? null
    record.reidentify = true
  }
  return record
}

export async function fork(cx: InstanceContext, idOrName: string, params: ForkParams): Promise<Instance> {
  const p = validateForkParams(params)
  const source = await cx.find(idOrName)
  const before = await toInstance(cx, source)
  assertCanRun('fork', before)
  if (before.state === 'Running' && !p.fromRunning) {
    throw new ConflictError(`cannot fork instance ${source.name}: it is Running (set fromRunning to put it on standby for the fork)`, { field: 'state' })
  }
  if ((source.spec.volumes ?? []).some((v) => !v.readonly)) {
    throw new ConflictError(`cannot fork instance ${source.name}: it has a read-write volume attached (one writer at a time)`, { field: 'volumes' })
  }
  if (source.spec.devices?.length || source.spec.gpu) {
    throw new NotSupportedError(`cannot fork instance ${source.name}: host devices and vGPUs are its own`, { field: source.spec.devices?.length ? 'devices' : 'gpu' })
  }
  if (await cx.records().then((all) => all.some((r) => r.name === p.name && r.phase !== 'deleting'))) {
    throw new ConflictError(`an instance named "${p.name}" already exists`, { field: 'name' })
  }
  const target: InstanceState = p.targetState ?? (before.state === 'Standby' ? 'Standby' : before.state === 'Running' ? 'Running' : 'Stopped')

  const wasRunning = before.state === 'Running'
  // A clone needs a VMM the driver can spawn ahead and point at the fork's files.
  const live = cx.live.get(source.id)
  if (wasRunning && target === 'Running' && cx.driver(source.spec.hypervisor).spawnWarm && live && !warmUnsupported(live.spec)) return forkByClone(cx, source.id, p.name)
  if (wasRunning) await standby(cx, source.id)
  let made: Instance
  try {
    made = await cx.ops.run(source.id, async () => {
      // Under the source's queue: no lifecycle operation changes its disks while they are copied.
      const now = (await cx.files.read(source.id))!
      const record = forkRecord(now, p.name)
      return runCreate(cx, record, forkSteps(record), { forkOf: now })
    })
  } catch (err) {
    if (wasRunning) await restore(cx, source.id)
    throw err
  }
  await cx.files.log(made.id, `forked from ${source.name} (${source.id}), ${before.state}`)
  // The source comes back while the fork gets to its state: two restores at once, not one after the other.
  const sourceBack = wasRunning ? restore(cx, source.id).then(() => undefined, (err: unknown) => err) : Promise.resolve(undefined)
  try {
    await bringTo(cx, made.id, target)
  } catch (err) {
    // From here a failure deletes the fork, as a create that fails leaves nothing.
    await deleteInstance(cx, made.id).catch(() => {})
    await sourceBack
    throw err
  }
  const sourceErr = await sourceBack
  if (sourceErr) {
    // The source stays on Standby (a failed restore keeps its snapshot); the fork goes, as a failed fork leaves nothing.
    await deleteInstance(cx, made.id).catch(() => {})
    throw sourceErr
  }
  return instanceView(cx, made.id)
}

/**
 * A Running fork of a Running source, without a snapshot on disk: the source is paused, the fork
 * made from its disks, and its guest copied into the fork's VMM by live migration (bootClone);
 * then the source goes on and the fork is given its identity. The source is paused for the fork's
 * steps and the copy, and runs again whatever happened; a failure deletes the fork.
 */
async function forkByClone(cx: InstanceContext, sourceId: string, name: string): Promise<Instance> {
  let forkId: string | undefined
  try {
    await cx.ops.run(sourceId, () =>
      cx.files.withLock(sourceId, async () => {
        const vm = cx.live.get(sourceId)
        if (vm?.phase !== 'running') throw new ConflictError(`instance ${sourceId} ended before its fork`, { field: 'state' })
        const paused = await vm.pause()
        cx.live.update(sourceId, paused)
        let claim: WarmClaim | undefined
        try {
          const now = (await cx.files.read(sourceId))!
          // The fork's VMM starts, and gets the source's RAM, while the fork's steps run.
          claim = await claimForClone(cx, now, paused)
          const record = forkRecord(now, name, true)
          forkId = record.id
          await runCreate(cx, record, forkSteps(record), { forkOf: now })
          await cx.files.withLock(record.id, async () => {
            const r = (await cx.files.read(record.id))!
            r.startedAt = nowIso()
            await bootClone(cx, r, paused, claim)
            refillRestoreShape(cx, r)
          })
        } finally {
          await paused.resume().then(
            (running) => cx.live.update(sourceId, running),
            (err: unknown) => cx.logger.warn('the fork\'s source did not resume', { id: sourceId, error: errorMessage(err) }),
          )
          // A claim the clone did not take (a step failed) ends, after the source is back.
          await claim?.release()
        }
      }),
    )
    await cx.files.log(forkId!, `forked from ${sourceId}, Running, by a live copy of its guest`)
    await sendIdentity(cx, (await cx.files.read(forkId!))!)
  } catch (err) {
    if (forkId) await deleteInstance(cx, forkId).catch(() => {})
    throw err
  }
  return instanceView(cx, forkId!)
}

async function bringTo(cx: InstanceContext, id: string, target: InstanceState): Promise<void> {
  const state = (await instanceView(cx, id)).state
  if (state === target) return
  if (state === 'Stopped' && target === 'Running') await start(cx, id)
  else if (state === 'Stopped' && target === 'Standby') {
    await start(cx, id)
    await standby(cx, id)
  } else if (state === 'Standby' && target === 'Running') await restore(cx, id)
  else if (state === 'Standby' && target === 'Stopped') {
    await restore(cx, id)
    await stop(cx, id)
  }
}

