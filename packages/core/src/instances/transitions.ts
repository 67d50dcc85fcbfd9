/**
 * Which operation may run in which state. Every lifecycle and guest-access operation checks this
 * table first, before it touches anything the instance has (its VMM, its snapshot, its disks), so
 * an operation that cannot run rejects at once with `conflict` naming the state.
 *
 * The same rules as hypeman's state machine (lib/instances/state.go), widened where the VMM can
 * do it safely: stop, pause and standby also act on a guest that is still booting (Initializing),
 * standby on a paused VM, start of a Standby instance restores it, and kill ends a VMM whose guest
 * can no longer run (Unknown).
 */
import { ConflictError } from '@hypeman-ts/common'
import type { InstanceState } from './model.js'

export type Operation = 'start' | 'stop' | 'kill' | 'pause' | 'resume' | 'standby' | 'restore' | 'exec' | 'stat' | 'copy' | 'update' | 'attach_volume' | 'detach_volume' | 'fork'

const BOOTED: readonly InstanceState[] = ['Running', 'Initializing']

export const ALLOWED_STATES: Readonly<Record<Operation, readonly InstanceState[]>> = {
  start: ['Stopped', 'Standby'],
  stop: [...BOOTED, 'Paused', 'Shutdown'],
  kill: [...BOOTED, 'Paused', 'Shutdown', 'Unknown'],
  pause: BOOTED,
  resume: ['Paused'],
  standby: [...BOOTED, 'Paused'],
  restore: ['Standby'],
  exec: BOOTED,
  stat: BOOTED,
  copy: BOOTED,
  // Anything but a create in flight: a stopped or standby instance takes the change at its next boot.
  update: ['Initializing', 'Running', 'Paused', 'Shutdown', 'Stopped', 'Standby', 'Unknown'],
  // A snapshot fixes a Standby instance's disks; a running one gets them hot-plugged (instances/volumes.ts).
  attach_volume: ['Stopped', 'Running'],
  detach_volume: ['Stopped', 'Running'],
  // A Running source needs `fromRunning` (fork.ts): standby, fork, restore.
  fork: ['Stopped', 'Standby', 'Running'],
}

/** Throws `conflict` (field `state`, details `{ operation, state, allowed }`) unless `op` may run in `state`. */
export function assertCanRun(op: Operation, inst: { name: string; state: InstanceState }): void {
  const allowed = ALLOWED_STATES[op]
  if (allowed.includes(inst.state)) return
  throw new ConflictError(`cannot ${op} instance ${inst.name}: it is ${inst.state} (${op} needs ${allowed.join(' or ')})`, {
    field: 'state',
    details: { operation: op, state: inst.state, allowed: [...allowed] },
  })
}
