/**
 * The error codes of the VMM drivers. Callers branch on `code`; `step` names the part of a
 * lifecycle operation that failed (e.g. `qemu.spawn`, `qmp.connect`, `restore.incoming`).
 * Bad input is a plain ValidationError naming the field (e.g. `disks[1].serial`), a feature a
 * driver lacks is a NotSupportedError, a deadline is a TimeoutError: all from common.
 */
import { CodedError, HypemanError, type HypemanErrorOptions } from '@hypeman-ts/common'

export type VmmErrorCode =
  /** The VMM process could not be started or died before it was ready; `details.vmmLog` has its last output. */
  | 'vmm_start_failed'
  /** The operation needs a live VMM and the process is gone (or the pid now belongs to someone else). */
  | 'vmm_not_running'
  /** The VM is in a state where the operation makes no sense (e.g. resume of a running VM). */
  | 'invalid_state'
  /** The requested accelerator cannot be used on this host. */
  | 'accel_unavailable'
  /** A snapshot could not be written, or a snapshot directory is not usable for a restore. */
  | 'snapshot_failed'
  | 'restore_failed'
  /** The VMM's control connection broke or spoke something that is not its protocol. */
  | 'control_closed'
  | 'control_protocol'

export class VmmError extends CodedError<VmmErrorCode>() {}

/** The control connection is gone, whichever channel it was (QMP, REST): usually the VMM is ending. */
export function isControlClosed(err: unknown): boolean {
  return err instanceof HypemanError && err.code === 'control_closed'
}

/** QEMU answered a QMP command with an error; `qmpClass` is QEMU's class (e.g. `GenericError`, `DeviceNotFound`). */
export class QmpCommandError extends HypemanError {
  declare readonly code: 'qmp_error'
  readonly command: string
  readonly qmpClass: string
  constructor(command: string, qmpClass: string, desc: string, opts: HypemanErrorOptions = {}) {
    super('qmp_error', `QMP ${command} failed: ${qmpClass}: ${desc}`, opts)
    this.command = command
    this.qmpClass = qmpClass
  }
}

/**
 * A Cloud Hypervisor or Firecracker REST call answered with an error status. `status` is the
 * HTTP status, `body` the VMM's error body as it sent it (parsed JSON when it was JSON), and
 * `vmmMessage` its words (Firecracker's `fault_message`, Cloud Hypervisor's text). `step` names
 * the operation (e.g. `firecracker.putGuestDriveByID`).
 */
export class VmmApiError extends HypemanError {
  declare readonly code: 'vmm_api_error'
  readonly method: string
  readonly path: string
  readonly status: number
  readonly body: unknown
  readonly vmmMessage: string
  constructor(call: { method: string; path: string }, status: number, body: unknown, vmmMessage: string, opts: HypemanErrorOptions = {}) {
    super('vmm_api_error', `${call.method} ${call.path} answered ${status}${vmmMessage ? `: ${vmmMessage}` : ''}`, opts)
    this.method = call.method
    this.path = call.path
    this.status = status
    this.body = body
    this.vmmMessage = vmmMessage
  }
}
