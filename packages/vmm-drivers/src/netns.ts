/**
 * Running the VMM inside a named network namespace (`VmSpec.netns`), e.g. the one where netsetup
 * made the TAP, through common's `netnsArgv` (nsenter, which execs the VMM in place): the pid we
 * spawn is the VMM's own, its start time does not change, and its argv still carries our
 * runtime-dir mark, so supervision, attach and destroy work as without a namespace.
 */
import { netnsArgv } from '@hypeman-ts/common'

export { netnsPath } from '@hypeman-ts/common'

/** The command that starts `binary args` in `netns` (as is without one). */
export function vmmCommand(binary: string, args: readonly string[], netns: string | undefined): [string, string[]] {
  return netnsArgv(netns, binary, args)
}
