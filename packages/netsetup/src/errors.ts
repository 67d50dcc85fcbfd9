/**
 * The error codes of netsetup. Callers branch on `code`; `step` names the part of an operation
 * that failed (`bridge`, `rules`, `links`, `shaping`, `sysctl`, `state`). Bad options are common's
 * ValidationError naming the field (`subnet`, `egress.proxy.httpPort` ...); a subnet change while
 * addresses are handed out, or two instance ids whose short ids collide, is a ConflictError; a
 * failed `ip`/`tc`/`nft` call surfaces as common's CommandError (argv + stderr) inside `cause`.
 */
import { CodedError } from '@hypeman-ts/common'

export type NetworkErrorCode =
  /** Every address of the subnet is handed out. */
  | 'address_pool_exhausted'
  /** A change to the kernel's networking failed; `step` says which, `cause` has the command's error. */
  | 'network_setup_failed'
  /** The allocation file exists but is not one we can use (corrupt, or another version). */
  | 'network_state_invalid'

export class NetworkError extends CodedError<NetworkErrorCode>() {}
