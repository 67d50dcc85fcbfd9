/**
 * Running the VMM inside a named network namespace (`VmSpec.netns`), e.g. the one where netsetup
 * made the TAP: the process is started as `nsenter --net=/run/netns/<name> -- <vmm> <args>`.
 * nsenter joins the namespace and then execs the VMM in place (no fork), so the pid we spawn is
 * the VMM's own, its start time does not change, and its argv still carries our runtime-dir
 * mark; supervision, attach and destroy work as without a namespace. Only the network namespace
 * is entered: paths (disks, sockets, logs) are the host's.
 */
export const NETNS_DIR = '/run/netns'
export const NETNS_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/

export function netnsPath(netns: string): string {
  return `${NETNS_DIR}/${netns}`
}

/** The command that starts `binary args` in `netns` (as is without one). Pure; table-tested. */
export function vmmCommand(binary: string, args: readonly string[], netns: string | undefined): [string, string[]] {
  if (netns === undefined) return [binary, [...args]]
  return ['nsenter', [`--net=${netnsPath(netns)}`, '--', binary, ...args]]
}
