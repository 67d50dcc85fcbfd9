/** Reads an image disk back into a directory with tools that are not ours, to check its content. */
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'

export async function extractDisk(disk: string, format: 'ext4' | 'erofs'): Promise<string> {
  const out = await mkdtemp(join(tmpdir(), 'disk-tree-'))
  if (format === 'ext4') await run('debugfs', ['-R', `rdump / ${out}`, disk])
  else await run('fsck.erofs', [`--extract=${out}`, '--overwrite', '--preserve', disk])
  return out
}

/**
 * Inode number and mode of a path inside an ext4 image, from debugfs (rdump copies hardlinks as
 * separate files and drops setuid bits, so those are read from the filesystem itself).
 */
export async function ext4Stat(disk: string, path: string): Promise<{ inode: number; mode: number }> {
  const { stdout } = await run('debugfs', ['-R', `stat ${path}`, disk])
  const m = /Inode:\s*(\d+)\s+Type:\s*\S+\s+Mode:\s*([0-7]+)/.exec(stdout)
  if (!m) throw new Error(`debugfs could not stat ${path}: ${stdout.slice(0, 200)}`)
  return { inode: Number(m[1]), mode: Number.parseInt(m[2]!, 8) }
}
