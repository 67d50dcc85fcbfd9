/**
 * After a crash of the host process, and at close: what this manager finds on disk is made whole
 * again. Half-done creates are undone through their recorded steps, running VMMs are attached
 * again, the end of those that died meanwhile is recorded, and whatever belongs to no instance
 * (directories, runtime dirs, network allocations) is removed.
 */
import { rm } from 'node:fs/promises'
import { errorMessage } from '@hypeman-ts/common'
import { destroyRuntime, finishBoot, watch } from './boot.js'
import type { InstanceContext } from './context.js'
import { undoCreateSteps } from './create.js'
import { consumeSnapshot } from './lifecycle.js'
import { registerEgress } from './network.js'
import { sendGo, sendIdentity } from './identity.js'

/**
 * After a crash of the host process: finishes or undoes what was in flight, reattaches to VMMs
 * that still run, records the end of those that do not, and removes anything that belongs to
 * no instance (directories, runtime dirs, VMM processes).
 */
export async function reconcile(cx: InstanceContext): Promise<{ reattached: number; stopped: number; removed: number }> {
  const stats = { reattached: 0, stopped: 0, removed: 0 }
  const known = new Set<string>()
  for (const id of await cx.files.ids()) {
    const record = await cx.files.read(id).catch(() => undefined)
    if (!record) {
      await destroyRuntime(cx, id)
      await rm(cx.files.paths(id).dir, { recursive: true, force: true })
      stats.removed++
      continue
    }
    if (record.phase !== 'ready') {
      // A create or a delete that did not finish: undone through the steps it recorded.
      await undoCreateSteps(cx, record)
      stats.removed++
      continue
    }
    known.add(id)
    await rm(cx.files.paths(id).snapshotConsumed, { recursive: true, force: true })
    if (!record.vmm || cx.live.get(id)) continue
    const driver = cx.driver(record.vmm.driver)
    if (driver.isAlive(record.vmm)) {
      try {
        const vm = await driver.attach(record.vmm)
        watch(cx, id, vm)
        // A VMM runs only after a standby ended it, so one running with a snapshot recorded is
        // the restore from it, cut short before it consumed the snapshot: the disks moved on.
        if (record.snapshot) await cx.files.withLock(id, () => consumeSnapshot(cx, id))
        // A boot from a template whose `go` never went out: the guest still waits for it.
        if (record.awaitingGo) await sendGo(cx, record)
        if (record.reidentify && !record.snapshot) await sendIdentity(cx, record)
        stats.reattached++
        continue
      } catch (err) {
        cx.logger.warn('could not reattach to a VMM; ending it', { id, error: errorMessage(err) })
      }
    }
    await driver.destroy(record.vmm).catch(() => {})
    await cx.files.withLock(id, () => finishBoot(cx, record, 'killed'))
    stats.stopped++
  }
  for (const id of await cx.files.runtimeIds()) {
    if (known.has(id)) continue
    await destroyRuntime(cx, id)
    stats.removed++
  }
  // RAM files hold guest memory on tmpfs: none stays without a VMM that runs on it.
  for (const id of await cx.files.ramIds()) {
    const record = known.has(id) ? await cx.files.read(id) : undefined
    if (!record?.vmm) await rm(cx.files.paths(id).memory, { force: true })
  }
  if (cx.opts.network && (await cx.opts.network.exists())) {
    await (await cx.opts.network.get()).reconcile(known)
    // The proxy's policies live in memory: give the ones of running VMs back.
    for (const id of known) {
      const record = await cx.files.read(id)
      if (record?.vmm && record.network && record.spec.network.egress.enabled) await registerEgress(cx, record)
    }
  }
  return stats
}

/**
 * Forgets the VMs without stopping them: they keep running and a later open reattaches. The
 * runtime dirs (sockets) of instances with no VMM go, and the run base with them once empty.
 */
export async function detachAll(cx: InstanceContext): Promise<void> {
  for (const vm of cx.live.forgetAll()) await vm.detach().catch(() => {})
  for (const id of await cx.files.runtimeIds()) {
    const record = await cx.files.read(id).catch(() => undefined)
    if (!record?.vmm) await destroyRuntime(cx, id)
  }
  await cx.files.removeRunBaseIfEmpty()
}
