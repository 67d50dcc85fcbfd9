/**
 * The lifecycle of an instance after its create: start, stop, kill, pause, resume, standby,
 * restore, delete. Each runs alone per instance (`cx.ops`) and checks the instance's state
 * against transitions.ts before it touches anything, so a retry or a call in the wrong state is a
 * `conflict` that leaves the instance as it was.
 */
import { rename, rm } from 'node:fs/promises'
import { ConflictError, errorMessage, HypemanError, NotSupportedError } from '@hypeman-ts/common'
import { requestGuestStop } from '../guest/index.js'
import { sendIdentity } from './identity.js'
import { boot, finishBoot, rootfsOf, waitForGuest, warmForRestore } from './boot.js'
import type { InstanceContext } from './context.js'
import { undoCreateSteps } from './create.js'
import type { Instance } from './model.js'
import type { InstanceRecord } from './record.js'
import type { Operation } from './transitions.js'
import { reattachNetwork } from './network.js'
import { instanceView, recordFor } from './view.js'

export interface StopOptions {
  /** Grace the program gets between SIGTERM and SIGKILL. Default 10 s. */
  timeoutMs?: number
}

/**
 * Runs `body` alone for the instance (`cx.ops`) once `op` is known to be allowed in its state,
 * then returns the instance as it is.
 */
export async function operate(cx: InstanceContext, idOrName: string, op: Operation, body: (id: string, record: InstanceRecord) => Promise<void>): Promise<Instance> {
  const { id } = await cx.find(idOrName)
  await cx.ops.run(id, async () => body(id, await recordFor(cx, id, op)))
  return instanceView(cx, id)
}

/** Boots a stopped instance again (its overlay keeps what it wrote); a standby one is restored. */
export async function start(cx: InstanceContext, idOrName: string, opts: { signal?: AbortSignal } = {}): Promise<Instance> {
  const { id } = await cx.find(idOrName)
  const booted = await cx.ops.run(id, async () => {
    const record = await recordFor(cx, id, 'start')
    if (record.snapshot) {
      await restoreNow(cx, id, opts.signal)
      return false
    }
    await cx.files.withLock(id, async () => {
      const r = (await cx.files.read(id))!
      // The last VMM is gone but its end was never recorded (this manager was not attached).
      if (r.vmm) await finishBoot(cx, r, 'killed')
      const { diskPath } = await rootfsOf(cx, r)
      await reattachNetwork(cx, r, opts.signal)
      await boot(cx, r, diskPath, opts.signal, 'start')
    })
    return true
  })
  if (booted) await waitForGuest(cx, (await cx.files.read(id))!, opts.signal)
  return instanceView(cx, id)
}

/**
 * Graceful stop: init sends SIGTERM to the program, SIGKILL after the grace, then powers off;
 * if the guest does not answer, ACPI power-off, then the VMM is killed.
 */
export async function stop(cx: InstanceContext, idOrName: string, opts: StopOptions = {}): Promise<Instance> {
  const graceMs = opts.timeoutMs ?? 10_000
  return operate(cx, idOrName, 'stop', async (id) => {
    let vm = cx.live.get(id)
    if (!vm) return // it ended on its own since the state was read
    if (vm.phase === 'paused') {
      // A paused guest cannot act on SIGTERM: let it run to stop properly, as docker does.
      vm = await vm.resume()
      cx.live.update(id, vm)
    }
    await cx.files.log(id, `stop requested (grace ${graceMs} ms)`)
    try {
      await requestGuestStop(cx.files.paths(id).controlSocket, graceMs, { timeoutMs: 5_000 })
      await vm.waitForExit({ timeoutMs: graceMs + 15_000 })
    } catch (err) {
      cx.logger.warn('graceful stop did not finish; powering off', { id, error: errorMessage(err) })
      await vm.shutdown({ timeoutMs: 5_000 }).catch(() => vm!.kill())
    }
    await vm.exited
    await cx.live.recorded(id)
  })
}

/** Freezes the VM's vCPUs (the guest's clock and processes stop until resume). */
export async function pause(cx: InstanceContext, idOrName: string): Promise<Instance> {
  return operate(cx, idOrName, 'pause', async (id) => {
    const vm = cx.live.get(id)
    if (vm?.phase !== 'running') throw new ConflictError(`instance ${idOrName} is not running`, { field: 'state' })
    cx.live.update(id, await vm.pause())
    await cx.files.log(id, 'paused')
  })
}

export async function resume(cx: InstanceContext, idOrName: string): Promise<Instance> {
  return operate(cx, idOrName, 'resume', async (id) => {
    const vm = cx.live.get(id)
    if (vm?.phase !== 'paused') throw new ConflictError(`instance ${idOrName} is not paused`, { field: 'state' })
    cx.live.update(id, await vm.resume())
    await cx.files.log(id, 'resumed')
  })
}

/** Ends the VM at once (SIGKILL to the VMM), also one whose guest can no longer run. */
export async function kill(cx: InstanceContext, idOrName: string): Promise<Instance> {
  return operate(cx, idOrName, 'kill', async (id, record) => {
    const vm = cx.live.get(id)
    if (vm) {
      await vm.kill()
      await vm.exited
      await cx.live.recorded(id)
    } else if (record.vmm) {
      // A VMM this manager is not attached to (state Unknown).
      await cx.driver(record.vmm.driver).destroy(record.vmm)
      await cx.files.withLock(id, async () => {
        const r = (await cx.files.read(id))!
        if (r.vmm) await finishBoot(cx, r, 'killed')
      })
    }
  })
}

/** Removes the instance and everything it made: VMM, sockets, disks, logs. */
export async function deleteInstance(cx: InstanceContext, idOrName: string): Promise<void> {
  const found = await cx.find(idOrName)
  const inFlight = cx.creating.get(found.id)
  if (inFlight) {
    // The create undoes its own steps (policy, address, VMM, files) before the address can go to anyone else.
    inFlight.cancel.abort(new ConflictError(`instance ${found.name} was deleted while it was being created`, { field: 'id' }))
    await inFlight.done
    // Undone and removed by the create itself, unless it finished first.
    if (!(await cx.files.read(found.id))) return
  }
  await cx.ops.run(found.id, () =>
    cx.files.withNamesLock(() =>
      cx.files.withLock(found.id, async () => {
        const record = await cx.files.read(found.id)
        if (!record) return
        record.phase = 'deleting'
        await cx.files.write(record)
        await undoCreateSteps(cx, record)
      }),
    ),
  )
}

/**
 * Snapshots the VM to disk and ends the VMM; `restore` (or `start`) resumes it where it was.
 * The snapshot is written to a staging directory and only becomes the instance's snapshot once
 * it is complete (see `finishBoot`), so a failed standby never costs an existing one.
 */
export async function standby(cx: InstanceContext, idOrName: string): Promise<Instance> {
  return operate(cx, idOrName, 'standby', async (id, record) => {
    if (!cx.driver(record.spec.hypervisor).capabilities.snapshot) {
      throw new NotSupportedError(`${record.spec.hypervisor} cannot snapshot`, { field: 'hypervisor' })
    }
    const vm = cx.live.get(id)
    if (!vm) throw new ConflictError(`instance ${record.name} ended before its standby`, { field: 'state' })
    const staging = cx.files.paths(id).snapshotStaging
    await rm(staging, { recursive: true, force: true })
    const snap = await vm.standby(staging).catch(async (err: unknown) => {
      await rm(staging, { recursive: true, force: true })
      throw err
    })
    await cx.live.recorded(id)
    const r = (await cx.files.read(id))!
    if (!r.snapshot) throw new HypemanError('snapshot_failed', `standby of ${r.name}: the VMM ended but no snapshot was kept`, { step: 'standby' })
    await cx.files.log(id, `standby: ${snap.bytes} bytes in ${Math.round(snap.durationMs)} ms`)
    refillRestoreShape(cx, r)
  })
}

/**
 * A warm VMM for the next restore (or running fork) of the record's machine, spawned a moment
 * from now unless one waits: after each standby, and after each use of one.
 */
export function refillRestoreShape(cx: InstanceContext, record: InstanceRecord): void {
  void warmForRestore(cx, record).catch((err: unknown) => cx.logger.warn('no warm VMM for the restore', { id: record.id, error: errorMessage(err) }))
}

export async function restore(cx: InstanceContext, idOrName: string, opts: { signal?: AbortSignal } = {}): Promise<Instance> {
  return operate(cx, idOrName, 'restore', async (id) => {
    await restoreNow(cx, id, opts.signal)
  })
}

/** Boots the VMM from the instance's snapshot (the caller checked it is Standby). */
async function restoreNow(cx: InstanceContext, id: string, signal?: AbortSignal): Promise<void> {
  await cx.files.withLock(id, async () => {
    const record = (await cx.files.read(id))!
    const { diskPath } = await rootfsOf(cx, record)
    await reattachNetwork(cx, record, signal)
    await boot(cx, record, diskPath, signal, 'restore')
    await consumeSnapshot(cx, id)
    refillRestoreShape(cx, record)
    // A fork restored from its source's snapshot: the guest still is the source.
    if (record.reidentify) await sendIdentity(cx, (await cx.files.read(id))!, signal)
  })
}

/** A snapshot is good for one restore: the disks move on from here (call under the instance lock). */
export async function consumeSnapshot(cx: InstanceContext, id: string): Promise<void> {
  const record = (await cx.files.read(id))!
  record.snapshot = false
  await cx.files.write(record)
  const { snapshot, snapshotConsumed } = cx.files.paths(id)
  // Freeing its RAM file's blocks takes tens of ms: moved aside now, removed after the restore
  // returned (an open removes what a crash left; the next consume or a delete does too).
  await rm(snapshotConsumed, { recursive: true, force: true })
  await rename(snapshot, snapshotConsumed).catch(() => {})
  void rm(snapshotConsumed, { recursive: true, force: true }).catch(() => {})
}
