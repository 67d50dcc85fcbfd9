/**
 * A small busybox image disk for the guest tests, made with tools that are not ours (busybox-static,
 * mkfs.ext4 -d, mkfs.erofs), while the image pipeline is tested elsewhere.
 */
import { chmod, chown, copyFile, mkdir, symlink, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { run } from '@hypeman-ts/common'

export async function makeBusyboxTree(dir: string): Promise<void> {
  for (const d of ['bin', 'etc', 'tmp', 'root', 'home/app', 'data']) await mkdir(join(dir, d), { recursive: true })
  await chmod(join(dir, 'tmp'), 0o1777)
  await copyFile('/bin/busybox', join(dir, 'bin/busybox'))
  await chmod(join(dir, 'bin/busybox'), 0o755)
  const { stdout } = await run('/bin/busybox', ['--list'])
  for (const applet of stdout.trim().split('\n')) if (applet !== 'busybox') await symlink('busybox', join(dir, 'bin', applet))
  await writeFile(join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n')
  await writeFile(join(dir, 'etc/group'), 'root:x:0:\napp:x:1000:\nextra:x:2000:app\n')
  await chown(join(dir, 'home/app'), 1000, 1000)
  await writeFile(join(dir, 'data/file.txt'), 'twelve bytes')
  await symlink('/etc/passwd', join(dir, 'link'))
}

/**
 * Copies Debian's own dynamically linked programs (e.g. /usr/bin/curl, /usr/bin/getent) into the
 * tree at the same paths, with every library `ldd` names: real glibc/OpenSSL consumers in the guest.
 */
export async function addHostPrograms(tree: string, programs: string[]): Promise<void> {
  const files = new Set<string>(programs)
  for (const p of programs) {
    const { stdout } = await run('ldd', [p])
    for (const m of stdout.matchAll(/(?:=> |^\s*)(\/\S+) \(0x/gm)) files.add(m[1]!)
  }
  for (const f of files) {
    await mkdir(join(tree, dirname(f)), { recursive: true })
    await copyFile(f, join(tree, f)) // follows links: the tree gets the files under the names the loader asks for
    await chmod(join(tree, f), 0o755)
  }
}

export async function makeExt4(tree: string, path: string, size = '32M'): Promise<void> {
  await run('mkfs.ext4', ['-q', '-F', '-d', tree, path, size])
}

export async function makeErofs(tree: string, path: string): Promise<void> {
  await run('mkfs.erofs', ['--quiet', path, tree])
}
