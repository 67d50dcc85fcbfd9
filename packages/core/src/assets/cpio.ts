/**
 * A cpio "newc" archive writer, the format the kernel unpacks as an initramfs. Pure: entries in,
 * bytes out. Each entry is a 110-byte ASCII-hex header, the NUL-terminated name padded to 4
 * bytes, then the data padded to 4 bytes; a `TRAILER!!!` entry ends the archive.
 */

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Buffer; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'chardev'; path: string; major: number; minor: number; mode?: number }

const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const S_IFLNK = 0o120000
const S_IFCHR = 0o020000

const hex8 = (n: number) => n.toString(16).padStart(8, '0')
const pad4 = (n: number) => (4 - (n % 4)) % 4

function header(f: { ino: number; mode: number; nlink: number; size: number; rmaj: number; rmin: number; nameLen: number }): Buffer {
  const fields = [
    f.ino, f.mode, 0 /* uid */, 0 /* gid */, f.nlink, 0 /* mtime: fixed, so equal inputs give equal bytes */,
    f.size, 0, 0 /* dev major/minor */, f.rmaj, f.rmin, f.nameLen, 0 /* check */,
  ]
  return Buffer.from(`070701${fields.map(hex8).join('')}`, 'ascii')
}

export function encodeCpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = []
  let ino = 1
  const push = (name: string, mode: number, data: Buffer, nlink: number, rmaj = 0, rmin = 0) => {
    const nameBuf = Buffer.from(`${name}\0`, 'utf8')
    const h = header({ ino: ino++, mode, nlink, size: data.length, rmaj, rmin, nameLen: nameBuf.length })
    parts.push(h, nameBuf, Buffer.alloc(pad4(h.length + nameBuf.length)), data, Buffer.alloc(pad4(data.length)))
  }
  for (const e of entries) {
    const name = e.path.replace(/^\/+/, '').replace(/\/+$/, '')
    if (name === '' || name.split('/').some((s) => s === '..' || s === '')) throw new RangeError(`bad cpio path ${e.path}`)
    switch (e.type) {
      case 'dir':
        push(name, S_IFDIR | (e.mode ?? 0o755), Buffer.alloc(0), 2)
        break
      case 'file':
        push(name, S_IFREG | (e.mode ?? 0o644), e.data, 1)
        break
      case 'symlink':
        push(name, S_IFLNK | 0o777, Buffer.from(e.target, 'utf8'), 1)
        break
      case 'chardev':
        push(name, S_IFCHR | (e.mode ?? 0o600), Buffer.alloc(0), 1, e.major, e.minor)
        break
    }
  }
  push('TRAILER!!!', 0, Buffer.alloc(0), 1)
  return Buffer.concat(parts)
}
