/**
 * An instance's state, derived from what the VMM says and what the guest reported, never stored:
 * a stored state goes stale the moment a VM powers off on its own.
 */
import type { VmState } from '@hypeman-ts/vmm-drivers'
import type { GuestStatusSummary } from '../guest/index.js'
import type { InstanceState } from './model.js'

export interface StateInputs {
  phase: 'creating' | 'ready' | 'deleting'
  /** Whether a VMM was ever spawned for the current boot (the record holds its pid). */
  hasVmm: boolean
  /** What the VMM says now; `exited` when its process is gone; an Error when it cannot be asked. */
  vmm: VmState | Error
  guest: GuestStatusSummary
  snapshot: boolean
}

export function deriveState(s: StateInputs): { state: InstanceState; stateError?: string } {
  if (!s.hasVmm) {
    if (s.phase === 'creating') return { state: 'Created' }
    return { state: s.snapshot ? 'Standby' : 'Stopped' }
  }
  if (s.vmm instanceof Error) return { state: 'Unknown', stateError: `failed to query VMM: ${s.vmm.message}` }
  switch (s.vmm) {
    case 'running':
      return { state: s.guest.started && !s.guest.exit ? 'Running' : 'Initializing' }
    case 'paused':
      return { state: 'Paused' }
    case 'shutdown':
      return { state: 'Shutdown' }
    case 'crashed':
      return { state: 'Unknown', stateError: 'the VMM is up but the guest cannot run (guest panic or emulation failure)' }
    case 'exited':
      return { state: s.snapshot ? 'Standby' : 'Stopped' }
  }
}

/** The exit code and message of a boot, from the guest's own report or, failing that, the VMM's end. */
export function exitFromGuest(guest: GuestStatusSummary): { code: number | null; message: string | null } | null {
  if (guest.exit) return { code: guest.exit.code, message: guest.exit.message }
  if (guest.error) return { code: null, message: `guest boot failed at ${guest.error.step}: ${guest.error.message}` }
  return null
}
