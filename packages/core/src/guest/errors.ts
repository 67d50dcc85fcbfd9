/**
 * Error codes of the guest side (config disk, agent, control and status channels), on the shared
 * classes of @hypeman-ts/common. Callers match on `code`; bad input uses common's ValidationError.
 */
import { CodedError } from '@hypeman-ts/common'

export type GuestErrorCode =
  | 'agent_disabled' // the instance was created with skipGuestAgent: exec and stat do not exist for it
  | 'agent_unreachable' // no answer from the agent within the deadline (still booting, gone, or another client)
  | 'agent_disconnected' // the connection dropped while a request was in flight
  | 'agent_protocol' // a frame that does not decode: wrong peer or a bug
  | 'agent_request_failed' // the agent answered a request with an error frame
  | 'copy_failed' // the guest could not write or read a path of a copy (the message says why)
  | 'control_unreachable' // the control port did not answer
  | 'control_refused' // init answered a control command with an error
  | 'status_timeout' // the awaited status event did not arrive in time
  | 'bad_config_disk' // a config disk image that does not decode

export class GuestError extends CodedError<GuestErrorCode>() {}
