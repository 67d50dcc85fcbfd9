/** File helpers for state that must survive a crash: a reader sees the old file or the new one, never half. */
import { randomBytes } from 'node:crypto'
import { open, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { run } from './run.js'

/** `sizeBytes`: the file's length, larger than the data; the rest reads as zeros and takes no space. */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644, sizeBytes?: number): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`)
  const fh = await open(tmp, 'w', mode)
  try {
    await fh.writeFile(data)
    if (sizeBytes !== undefined && sizeBytes > data.length) await fh.truncate(sizeBytes)
    await fh.sync()
  } finally {
    await fh.close()
  }
  try {
    await rename(tmp, path)
  } catch (err) {
    await rm(tmp, { force: true })
    throw err
  }
  await syncDir(dirname(path))
}

export async function writeJsonAtomic(path: string, value: unknown, mode = 0o644): Promise<void> {
  await writeFileAtomic(path, `${JSON.stringify(value, null, 2)}\n`, mode)
}

/** Opens the file for reading, or gives undefined when it does not exist (yet). */
export async function openIfExists(path: string): Promise<FileHandle | undefined> {
  try {
    return await open(path, 'r')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

/** Reads a JSON file; `undefined` when it does not exist. */
export async function readJsonIfExists<T>(path: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

/** Makes a rename or create durable: the directory entry itself must reach the disk. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

export async function pathExists(path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT' || code === 'ENOTDIR') return false
    throw err
  }
}

/**
 * Copies a file keeping it sparse: holes stay holes, and a reflink is used where the filesystem
 * has them (cp: SEEK_DATA and copy_file_range, in the kernel). `zerosToHoles` also reads every
 * data block to turn runs of zeros into holes (slower: for disk images, where mkfs wrote zeros).
 * An existing `to` is overwritten in place, as the same inode: what maps it sees the new content.
 * `lowPriority`: at nice 19.
 */
export async function copySparse(from: string, to: string, opts: { zerosToHoles?: boolean; signal?: AbortSignal; lowPriority?: boolean } = {}): Promise<void> {
  await runCopy(['cp', `--sparse=${opts.zerosToHoles ? 'always' : 'auto'}`, '--reflink=auto', '--', from, to], opts)
}

/**
 * Writes `from`'s data into `to` in place: `to` is neither truncated nor re-created, so its size
 * never changes while the copy runs (QEMU refuses a RAM file whose size is not the guest's when
 * it opens it, and may open it mid-copy). `to` must be a file of `from`'s size holding only holes
 * (a sparse file just sized): `from`'s holes and zero blocks are skipped, and stay holes there.
 * Slower than copySparse (every block of `from` is read), ≈ 65 ms for 75 MB in 256 MiB on tmpfs.
 */
export async function copyIntoHoles(from: string, to: string, opts: { signal?: AbortSignal; lowPriority?: boolean } = {}): Promise<void> {
  const [a, b] = await Promise.all([stat(from), stat(to)])
  if (a.size !== b.size) throw new Error(`cannot copy ${from} (${a.size} bytes) into ${to} (${b.size} bytes) in place: the sizes differ`)
  await runCopy(['dd', `if=${from}`, `of=${to}`, 'bs=64K', 'conv=notrunc,sparse', 'status=none'], opts)
}

/** A copy command; `lowPriority`: at nice 19, as work ahead of need (a warm VMM's RAM) yields the CPU to what runs now. */
async function runCopy(argv: string[], opts: { signal?: AbortSignal; lowPriority?: boolean }): Promise<void> {
  const [cmd, ...args] = opts.lowPriority ? ['nice', '-n', '19', ...argv] : argv
  await run(cmd!, args, opts.signal ? { signal: opts.signal } : {})
}

/** Flushes a file's data to the disk (fdatasync). */
export async function syncFile(path: string): Promise<void> {
  const fh = await open(path, 'r+')
  try {
    await fh.datasync()
  } finally {
    await fh.close()
  }
}
