/**
 * The read-only disk an image boots from, built from its unpacked root with the standard tools:
 * ext4 via `mkfs.ext4 -d` (sized from the content) or erofs via `mkfs.erofs`.
 * bench/README.md has the measurements behind the default.
 */
import { lstat, readdir, stat, truncate } from 'node:fs/promises'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { ImageError } from '../errors.js'

export type DiskFormat = 'ext4' | 'erofs'
export const DISK_FORMATS: readonly DiskFormat[] = ['ext4', 'erofs']

const BLOCK = 4096
const INODE_SIZE = 256

export interface TreeUsage {
  /** Data blocks the tree needs, in bytes (each file and directory rounded up to whole blocks). */
  blockBytes: number
  inodes: number
}

/** Walks a tree (without following links) to size a filesystem for it. */
export async function measureTree(dir: string): Promise<TreeUsage> {
  let blockBytes = BLOCK
  let inodes = 1
  const seen = new Set<number>()
  const walk = async (d: string): Promise<void> => {
    for (const ent of await readdir(d, { withFileTypes: true })) {
      const p = join(d, ent.name)
      const st = await lstat(p)
      if (st.nlink > 1 && !ent.isDirectory()) {
        if (seen.has(st.ino)) continue
        seen.add(st.ino)
      }
      inodes++
      if (ent.isDirectory()) {
        blockBytes += BLOCK
        await walk(p)
      } else if (ent.isFile()) {
        blockBytes += Math.ceil(st.size / BLOCK) * BLOCK
      } else if (ent.isSymbolicLink() && st.size >= 60) {
        blockBytes += BLOCK // short targets live inside the inode
      }
    }
  }
  await walk(dir)
  return { blockBytes, inodes }
}

/**
 * Size for an ext4 filesystem holding `usage`: the data, an inode table with spare inodes,
 * about 2% for bitmaps, group descriptors and extent trees, and a fixed 16 MiB floor. It is a
 * read-only disk, so headroom buys nothing at run time; mkfs is retried larger if it runs out.
 */
export function ext4Size(usage: TreeUsage): { bytes: number; inodes: number } {
  const inodes = Math.ceil(usage.inodes * 1.1) + 256
  const raw = usage.blockBytes + inodes * INODE_SIZE
  const bytes = Math.max(16 * 1024 * 1024, Math.ceil((raw * 1.04 + 4 * 1024 * 1024) / BLOCK) * BLOCK)
  return { bytes, inodes }
}

export function mkfsExt4Args(src: string, out: string, size: { bytes: number; inodes: number }, label = 'hm-rootfs'): string[] {
  return [
    '-F', '-q', '-t', 'ext4',
    '-b', String(BLOCK),
    '-I', String(INODE_SIZE),
    '-N', String(size.inodes),
    '-m', '0',
    // No journal on a read-only disk; no reserved GDT blocks, it will never be resized online.
    '-O', '^has_journal,^resize_inode',
    '-E', 'root_owner=0:0',
    '-L', label,
    '-d', src,
    out,
    `${Math.ceil(size.bytes / 1024)}k`,
  ]
}

export function mkfsErofsArgs(src: string, out: string): string[] {
  return ['--quiet', '-Eforce-inode-compact', out, src]
}

function noSpace(err: unknown): boolean {
  return /Could not allocate|No space left|Could not allocate inode|ENOSPC|too many inodes|Could not allocate block/i.test(String((err as Error).message))
}

/**
 * Builds the disk file `out` from directory `src`; returns its size in bytes. `usage` (an upper
 * bound, e.g. counted while unpacking) saves walking the tree to size an ext4 disk.
 */
export async function buildDisk(format: DiskFormat, src: string, out: string, opts: { signal?: AbortSignal; usage?: TreeUsage; label?: string } = {}): Promise<number> {
  const { signal } = opts
  if (format === 'erofs') {
    await run('mkfs.erofs', mkfsErofsArgs(src, out), { signal, step: 'image.disk' })
    return (await stat(out)).size
  }
  let size = ext4Size(opts.usage ?? (await measureTree(src)))
  for (let attempt = 1; ; attempt++) {
    try {
      await truncate(out, 0).catch(() => {})
      await run('mkfs.ext4', mkfsExt4Args(src, out, size, opts.label), { signal, step: 'image.disk' })
      return (await stat(out)).size
    } catch (err) {
      if (attempt >= 3 || !noSpace(err)) {
        throw new ImageError('image_build_failed', `building the ${format} disk failed: ${(err as Error).message}`, { cause: err, step: 'image.disk' })
      }
      size = { bytes: Math.ceil((size.bytes * 1.5) / BLOCK) * BLOCK, inodes: Math.ceil(size.inodes * 1.5) }
    }
  }
}
