/**
 * Running a command inside a named network namespace (`/run/netns/<name>`, as `ip netns` makes
 * them): `nsenter --net=<path> -- cmd args`. nsenter joins the namespace and then execs the
 * command in place (no fork), so the pid spawned is the command's own. Only the network
 * namespace is entered: paths are the host's. One builder for netsetup's commands and the VMMs.
 */
import { ValidationError } from './errors.js'

export const NETNS_DIR = '/run/netns'
const NETNS_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/

/** The name, once it is one `ip netns` could have made; a ValidationError naming `field` otherwise. */
export function checkNetnsName(value: unknown, field = 'netns'): string {
  if (typeof value !== 'string' || !NETNS_RE.test(value)) {
    throw new ValidationError(field, 'expected the name of a network namespace under /run/netns (letters, digits, ".", "_", "-")')
  }
  return value
}

export function netnsPath(netns: string): string {
  return `${NETNS_DIR}/${netns}`
}

/** The argv that runs `cmd args` inside `netns` (as is without one). Pure; table-tested. */
export function netnsArgv(netns: string | undefined, cmd: string, args: readonly string[]): [string, string[]] {
  if (netns === undefined) return [cmd, [...args]]
  return ['nsenter', [`--net=${netnsPath(netns)}`, '--', cmd, ...args]]
}
