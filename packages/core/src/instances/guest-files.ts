/**
 * Copying files into and out of a running guest (hypeman's `cp`), through the agent's built-ins
 * (guest/src/files.c), so it works on images with no shell, `cat` or `tar`:
 * - `copyTo` streams bytes into one file (created or truncated, then given `mode`);
 * - `mkdir` makes a directory and its missing parents (a directory tree is copied in as mkdir
 *   and copyTo calls, as hypeman's client does);
 * - `copyFrom` reads a file, a symlink or a whole directory tree as entries with their metadata,
 *   from a tar stream the guest writes. Entry paths come from the guest: a caller that writes them
 *   to a host filesystem must treat them as untrusted (no absolute paths, no `..`, no following
 *   links out of the destination), as image layers are.
 */
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { NotFoundError, ValidationError } from '@hypeman-ts/common'
import { extract } from 'tar-stream'
import { type ExecProcess, GuestError } from '../guest/index.js'
import type { InstanceContext } from './context.js'
import { agent } from './guest-access.js'

export interface CopyToOptions {
  /** Permission bits of the file (default 0o644). */
  mode?: number
  signal?: AbortSignal
}

export interface GuestFileEntry {
  /** Relative to the copied path's parent: `name`, or `name/sub/file` below a directory. */
  path: string
  type: 'file' | 'directory' | 'symlink'
  mode: number
  size: number
  mtime: Date
  uid: number
  gid: number
  linkTarget?: string
  /** A file's bytes: read (or resume) it before asking for the next entry. */
  content?: Readable
}

function checkPath(path: unknown): string {
  if (typeof path !== 'string' || !path.startsWith('/')) throw new ValidationError('path', 'must be an absolute path in the guest')
  if (path.includes('\0')) throw new ValidationError('path', 'must not contain NUL bytes')
  return path
}

function checkMode(mode: unknown, fallback: number): string {
  const m = mode ?? fallback
  if (typeof m !== 'number' || !Number.isInteger(m) || m < 0 || m > 0o7777) throw new ValidationError('mode', 'must be an integer permission mode (0 to 0o7777)')
  return m.toString(8)
}

/** The built-in's exit: 0, or a copy_failed naming what the guest said. */
function expectSuccess(exit: { exitCode: number; message: string }, stderr: string, what: string): void {
  if (exit.exitCode === 0) return
  const said = stderr.trim() || exit.message
  throw new GuestError('copy_failed', `${what}: ${said}`, { details: { exitCode: exit.exitCode } })
}

/** Writes `content` to the file `path` in the guest; resolves with the bytes written. */
export async function copyTo(cx: InstanceContext, idOrName: string, path: string, content: Readable | Buffer | string, opts: CopyToOptions = {}): Promise<{ bytesWritten: number }> {
  checkPath(path)
  const mode = checkMode(opts.mode, 0o644)
  const client = await agent(cx, idOrName, 'copy')
  try {
    const proc = client.builtin('write-file', [path, mode], { stdin: true, ...(opts.signal ? { signal: opts.signal } : {}) })
    const out: Buffer[] = []
    const err: Buffer[] = []
    proc.stdout.on('data', (d: Buffer) => out.push(d))
    proc.stderr.on('data', (d: Buffer) => err.push(d))
    const stdin = proc.stdin!
    stdin.on('error', () => {})
    // A guest that fails early (cannot create the file) must not be fed the rest of the source.
    const stopFeeding = new AbortController()
    const source = typeof content === 'string' || Buffer.isBuffer(content) ? [content] : content
    const fed = pipeline(source, stdin, { signal: stopFeeding.signal }).catch((e: unknown) => {
      if (stopFeeding.signal.aborted) return
      proc.kill('SIGKILL')
      throw e
    })
    const [exit] = await Promise.all([proc.exit.finally(() => stopFeeding.abort()), fed])
    expectSuccess(exit, Buffer.concat(err).toString(), `cannot write ${path}`)
    return { bytesWritten: Number(Buffer.concat(out).toString().trim()) }
  } finally {
    client.close()
  }
}

/** Makes directory `path` (and missing parents) in the guest; an existing directory is fine. */
export async function mkdir(cx: InstanceContext, idOrName: string, path: string, opts: { mode?: number } = {}): Promise<void> {
  checkPath(path)
  const mode = checkMode(opts.mode, 0o755)
  const client = await agent(cx, idOrName, 'copy')
  try {
    const r = await collect(client.builtin('mkdir', [path, mode]))
    expectSuccess(r, r.stderr, `cannot create directory ${path}`)
  } finally {
    client.close()
  }
}

/** Runs a built-in to its end: its exit and what it said on stderr. */
export async function collect(proc: ExecProcess): Promise<{ exitCode: number; message: string; stderr: string }> {
  const err: Buffer[] = []
  proc.stdout.resume()
  proc.stderr.on('data', (d: Buffer) => err.push(d))
  const exit = await proc.exit
  return { ...exit, stderr: Buffer.concat(err).toString() }
}

const TYPES: Record<string, GuestFileEntry['type'] | undefined> = { file: 'file', directory: 'directory', symlink: 'symlink' }

/**
 * Reads `path` from the guest: one entry for a file or symlink, the directory and everything
 * below it for a directory. Rejects with not_found when the path does not exist.
 */
export async function* copyFrom(cx: InstanceContext, idOrName: string, path: string, opts: { followLinks?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<GuestFileEntry> {
  checkPath(path)
  const client = await agent(cx, idOrName, 'copy')
  try {
    const info = await client.stat(path, { followLinks: opts.followLinks ?? false })
    if (!info.exists) throw new NotFoundError(`${path} does not exist in the guest`, { field: 'path' })
    const proc = client.builtin('read-tree', [path, opts.followLinks ? '1' : '0'], opts.signal ? { signal: opts.signal } : {})
    const err: Buffer[] = []
    proc.stderr.on('data', (d: Buffer) => err.push(d))
    const tar = extract()
    proc.stdout.pipe(tar)
    try {
      for await (const entry of tar) {
        const h = entry.header
        const type = TYPES[h.type ?? '']
        if (!type) {
          entry.resume()
          continue
        }
        yield {
          path: h.name.replace(/\/$/, ''),
          type,
          mode: h.mode ?? 0,
          size: h.size ?? 0,
          mtime: h.mtime ?? new Date(0),
          uid: h.uid ?? 0,
          gid: h.gid ?? 0,
          ...(h.linkname ? { linkTarget: h.linkname } : {}),
          ...(type === 'file' ? { content: Readable.from(entry) } : {}),
        }
        // A consumer that skipped the content: drain it, so the next entry can come.
        entry.resume()
      }
    } catch (e) {
      proc.kill('SIGKILL')
      throw e
    }
    const exit = await proc.exit
    expectSuccess(exit, Buffer.concat(err).toString(), `cannot read ${path}`)
  } finally {
    client.close()
  }
}
