/**
 * The Instance as callers see it: its state derived on every read from what the VMM says and
 * what the guest reported (state.ts), never stored, and the check every operation makes against
 * that state first (transitions.ts).
 */
import { formatRate, withDeadline } from '@hypeman-ts/common'
import type { VmState } from '@hypeman-ts/vmm-drivers'
import { guestStatus } from './boot.js'
import type { InstanceContext } from './context.js'
import type { Instance } from './model.js'
import { guestEnv } from './network.js'
import type { InstanceRecord } from './record.js'
import { deriveState, exitFromGuest } from './state.js'
import { assertCanRun, type Operation } from './transitions.js'

/**
 * The instance's record, once `op` is known to be allowed in its current state. Call inside
 * `cx.ops.run`: the state cannot change under the caller except by the VM ending on its own.
 */
export async function recordFor(cx: InstanceContext, id: string, op: Operation): Promise<InstanceRecord> {
  const record = await cx.find(id)
  // Until create returns, the instance is the create's: it is Created whatever its VMM does.
  assertCanRun(op, record.phase === 'creating' ? { name: record.name, state: 'Created' } : await toInstance(cx, record))
  return (await cx.files.read(id)) ?? record
}

/** The instance as it is now, by id or name. */
export async function instanceView(cx: InstanceContext, idOrName: string): Promise<Instance> {
  return toInstance(cx, await cx.find(idOrName))
}

async function vmmState(cx: InstanceContext, record: InstanceRecord): Promise<VmState | Error> {
  if (!record.vmm) return 'exited'
  const vm = cx.live.get(record.id)
  if (vm) {
    try {
      return await vm.state()
    } catch (err) {
      // A failed query is often the VMM going away: give its exit a moment to show.
      const ended = await withDeadline(vm.exited, 50, 'the VMM to exit', 'state').then(() => true, () => false)
      return ended ? 'exited' : (err as Error)
    }
  }
  const driver = cx.driver(record.vmm.driver)
  if (!driver.isAlive(record.vmm)) return 'exited'
  return new Error('the VMM runs but this manager is not attached to it')
}

export async function toInstance(cx: InstanceContext, record: InstanceRecord): Promise<Instance> {
  let vmm = await vmmState(cx, record)
  if (vmm === 'exited' && record.vmm) {
    // The VM just ended: let its exit handler record how before describing the instance.
    await cx.live.recorded(record.id)
    record = (await cx.files.read(record.id)) ?? record
    vmm = await vmmState(cx, record)
  }
  const guest = await guestStatus(cx, record)
  const { state, stateError } = deriveState({ phase: record.phase, hasVmm: record.vmm !== null, vmm, guest, snapshot: record.snapshot })
  const s = record.spec
  const ended = state === 'Stopped' || state === 'Standby'
  const exit = ended ? (record.exit ?? exitFromGuest(guest)) : null
  return {
    id: record.id,
    createdAt: record.createdAt,
    image: s.image,
    name: record.name,
    state,
    ...(s.diskIoBps ? { diskIoBps: s.diskIoBps } : {}),
    env: guestEnvShown(record),
    exitCode: exit?.code ?? null,
    exitMessage: exit?.message ?? null,
    ...(record.gpu ? { gpu: { profile: record.gpu.profile, mdevUuid: record.gpu.uuid } } : {}),
    hasSnapshot: record.snapshot,
    ...(s.hotplugSize ? { hotplugSize: s.hotplugSize } : {}),
    hypervisor: s.hypervisor,
    network: record.network
      ? {
          enabled: true,
          name: 'default',
          ip: record.network.ip,
          mac: record.network.mac,
          bandwidthDownload: s.network.bandwidthDownload ?? formatRate(record.network.downloadBitsPerSec),
          bandwidthUpload: s.network.bandwidthUpload ?? formatRate(record.network.uploadBitsPerSec),
        }
      : { enabled: false, ip: null, mac: null },
    overlaySize: s.overlaySize,
    size: s.size,
    startedAt: record.startedAt,
    stateError: stateError ?? null,
    stoppedAt: record.stoppedAt,
    tags: s.tags,
    vcpus: s.vcpus,
    volumes: (s.volumes ?? []).map((v) => ({
      volumeId: v.volumeId,
      mountPath: v.mountPath,
      readonly: v.readonly,
      ...(v.overlay ? { overlay: true, overlaySize: v.overlaySize! } : {}),
    })),
    ...(s.devices?.length ? { devices: [...s.devices] } : {}),
  }
}

/** What the guest sees, placeholders included; never a real credential value. */
function guestEnvShown(record: InstanceRecord): Record<string, string> {
  const env = guestEnv(record)
  for (const name of Object.keys(record.spec.credentials)) env[name] = '<placeholder>'
  return env
}
