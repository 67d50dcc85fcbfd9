/** The kernel command line every driver passes: its machine part, then the caller's. */

const paramKey = (arg: string) => arg.split('=', 1)[0] as string

/**
 * The machine part, then the caller's. A parameter the caller sets (by name, e.g. `console=hvc0`
 * or `panic=-1`) replaces the machine's, so a caller that already builds a full command line
 * gets no duplicates. Quoted values with spaces are not split apart by the machine part.
 */
export function composeCmdline(machine: string, caller: string): string {
  const callerArgs = caller.trim() === '' ? [] : caller.trim().split(/\s+/)
  const callerKeys = new Set(callerArgs.map(paramKey))
  const machineArgs = machine.split(/\s+/).filter((a) => a !== '' && !callerKeys.has(paramKey(a)))
  return [...machineArgs, caller.trim()].filter((a) => a !== '').join(' ')
}
