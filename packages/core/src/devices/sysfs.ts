/**
 * The slice of sysfs that passthrough reads and writes, under a root that is `/sys` on a host
 * and a fabricated tree in tests. Reads are of the kernel's one-value files and symlinks; a write
 * is one `write(2)` of a short value into an existing attribute, never a create: a kernel file
 * that is missing (a driver not loaded) must fail, as it does on a real sysfs.
 */
import { constants } from 'node:fs'
import { readdir, readFile, readlink, writeFile } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { errorMessage, pathExists } from '@hypeman-ts/common'

export interface SysfsOptions {
  /** Default `/sys`. */
  root?: string
  /**
   * Called after each write with the path relative to the root and the value. For a fabricated
   * sysfs, where nothing acts on a write: the test plays the kernel here (moves a device's
   * `driver` link on bind, makes an mdev's directory on `create`).
   */
  onWrite?: (path: string, value: string) => void | Promise<void>
}

export class Sysfs {
  readonly root: string
  readonly #onWrite: SysfsOptions['onWrite']

  constructor(opts: SysfsOptions = {}) {
    this.root = opts.root ?? '/sys'
    this.#onWrite = opts.onWrite
  }

  path(...parts: string[]): string {
    return join(this.root, ...parts)
  }

  /** A one-value file, trimmed; undefined when absent. */
  async read(rel: string): Promise<string | undefined> {
    try {
      return (await readFile(this.path(rel), 'utf8')).trim()
    } catch (err) {
      if (isMissing(err)) return undefined
      throw err
    }
  }

  /** The last component of a symlink's target (`driver` → `nvidia`, `iommu_group` → `82`); undefined when absent. */
  async linkName(rel: string): Promise<string | undefined> {
    try {
      return basename(await readlink(this.path(rel)))
    } catch (err) {
      if (isMissing(err)) return undefined
      throw err
    }
  }

  async list(rel: string): Promise<string[]> {
    try {
      return (await readdir(this.path(rel))).sort()
    } catch (err) {
      if (isMissing(err)) return []
      throw err
    }
  }

  exists(rel: string): Promise<boolean> {
    return pathExists(this.path(rel))
  }

  /**
   * The kernel answers a refused write with an errno (EBUSY, EINVAL, ENODEV, ...): thrown as
   * `onError`'s typed error, with the path, the value and the errno in the message.
   */
  async write(rel: string, value: string, onError: (message: string, cause: unknown) => Error): Promise<void> {
    try {
      // O_TRUNC as a shell's `echo >` does (sysfs ignores it; a plain file keeps only this value).
      await writeFile(this.path(rel), value, { flag: constants.O_WRONLY | constants.O_TRUNC })
      await this.#onWrite?.(rel, value)
    } catch (err) {
      throw onError(`writing ${JSON.stringify(value.trim())} to ${this.path(rel)} failed: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`, err)
    }
  }
}

function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code
  return code === 'ENOENT' || code === 'ENOTDIR' || code === 'EINVAL'
}
