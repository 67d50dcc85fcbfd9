/**
 * The guest's part of the kernel command line. The machine part (console device, panic=-1, the
 * boot-time trimming measured in DESIGN.md) belongs to the VMM driver (`driver.machineCmdline`),
 * which puts it in front of this and lets a parameter named here replace its own.
 */
export interface CmdlineOptions {
  /** Keep kernel messages below warnings off the serial console (each byte is slow under TCG). Default true. */
  quiet?: boolean
  /** Appended as given, e.g. debugging flags. */
  extra?: readonly string[]
}

export function guestKernelCmdline(opts: CmdlineOptions = {}): string {
  return [...(opts.quiet === false ? [] : ['quiet']), ...(opts.extra ?? [])].join(' ')
}
