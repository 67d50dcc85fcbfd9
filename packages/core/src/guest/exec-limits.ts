/**
 * What the guest's execve takes, checked on the host so that a too-large command line or
 * environment is a typed error naming the field, not a program that dies with "argument list
 * too long" (exit 126) inside the guest. Linux (fs/exec.c) refuses one string longer than
 * MAX_ARG_STRLEN (32 pages, NUL included) and argv plus envp, pointers included, beyond a
 * quarter of the stack limit: 2 MiB under the guest's default 8 MiB. Half of that is ours to
 * give; the rest stays for the image's own env and args and what init adds.
 */
import { ValidationError } from '@hypeman-ts/common'

export const MAX_ARG_STRLEN = 32 * 4096
export const MAX_EXEC_ARGS_BYTES = 1024 * 1024

const POINTER = 8

/** Throws a ValidationError naming the first string or list that the guest could not exec. */
export function checkExecSize(lists: readonly { field: string; values: readonly string[] }[], env: Readonly<Record<string, string>>, envField = 'env'): void {
  let total = 0
  for (const { field, values } of lists) {
    values.forEach((v, i) => {
      const bytes = Buffer.byteLength(v) + 1
      if (bytes > MAX_ARG_STRLEN) throw new ValidationError(`${field}[${i}]`, `is ${bytes - 1} bytes; the guest's execve takes at most ${MAX_ARG_STRLEN - 1} per argument`)
      total += bytes + POINTER
    })
  }
  for (const [name, value] of Object.entries(env)) {
    const bytes = Buffer.byteLength(name) + 1 + Buffer.byteLength(value) + 1
    if (bytes > MAX_ARG_STRLEN) {
      throw new ValidationError(`${envField}.${name}`, `is ${bytes - 1} bytes as NAME=value; the guest's execve takes at most ${MAX_ARG_STRLEN - 1} per variable (pass large data as a file or a volume)`)
    }
    total += bytes + POINTER
  }
  if (total > MAX_EXEC_ARGS_BYTES) {
    const what = lists.map((l) => l.field).concat(envField).join(', ')
    throw new ValidationError(envField, `${what} add up to ${total} bytes; the guest's execve takes at most ${MAX_EXEC_ARGS_BYTES} (pass large data as a file or a volume)`)
  }
}
