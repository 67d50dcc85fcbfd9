/**
 * Reading kernel images, pure: where a bzImage keeps its compressed vmlinux, and whether an ELF
 * vmlinux can be booted directly (PVH entry note), which is how QEMU/Cloud Hypervisor load it.
 */
import { AssetError } from './errors.js'

export const LZ4_LEGACY_MAGIC = Buffer.from([0x02, 0x21, 0x4c, 0x18])

export interface KernelPayload {
  offset: number
  /** Compressed bytes, without the 4-byte size the kernel build appends. */
  length: number
  /** Size of the decompressed vmlinux, from that appended field. */
  uncompressedSize: number
  compression: 'lz4' | 'gzip' | 'zstd' | 'xz' | 'unknown'
}

export function isElf(buf: Buffer): boolean {
  return buf.length >= 4 && buf[0] === 0x7f && buf.toString('latin1', 1, 4) === 'ELF'
}

/**
 * Locates the payload through the boot protocol header (≥ 2.08: payload_offset/payload_length),
 * so the exact compressed stream is handed to the decompressor with no trailing bytes.
 */
export function locateKernelPayload(img: Buffer): KernelPayload {
  if (img.length < 0x250 || img.toString('latin1', 0x202, 0x206) !== 'HdrS') {
    throw new AssetError('invalid_kernel', 'not a bzImage (no "HdrS" boot header)')
  }
  const protocol = img.readUInt16LE(0x206)
  if (protocol < 0x208) throw new AssetError('invalid_kernel', `bzImage boot protocol ${protocol.toString(16)} predates payload fields (2.08)`)
  const setupSects = img[0x1f1] || 4
  const payloadOffset = img.readUInt32LE(0x248)
  const payloadLength = img.readUInt32LE(0x24c)
  const offset = (setupSects + 1) * 512 + payloadOffset
  if (payloadLength < 8 || offset + payloadLength > img.length) throw new AssetError('invalid_kernel', 'bzImage payload lies outside the file')
  const head = img.subarray(offset, offset + 4)
  const compression = head.equals(LZ4_LEGACY_MAGIC)
    ? 'lz4'
    : head[0] === 0x1f && head[1] === 0x8b
      ? 'gzip'
      : head.equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))
        ? 'zstd'
        : head[0] === 0xfd && head.toString('latin1', 1, 4) === '7zX'
          ? 'xz'
          : 'unknown'
  return {
    offset,
    length: payloadLength - 4,
    uncompressedSize: img.readUInt32LE(offset + payloadLength - 4),
    compression,
  }
}

const PT_NOTE = 4
const XEN_ELFNOTE_PHYS32_ENTRY = 18

/** True when a 64-bit little-endian ELF carries the Xen PVH entry note QEMU's direct boot needs. */
export function hasPvhEntry(elf: Buffer): boolean {
  if (!isElf(elf) || elf[4] !== 2 /* 64-bit */ || elf[5] !== 1 /* LE */) return false
  const phoff = Number(elf.readBigUInt64LE(0x20))
  const phentsize = elf.readUInt16LE(0x36)
  const phnum = elf.readUInt16LE(0x38)
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize
    if (ph + 56 > elf.length || elf.readUInt32LE(ph) !== PT_NOTE) continue
    const off = Number(elf.readBigUInt64LE(ph + 8))
    const size = Number(elf.readBigUInt64LE(ph + 32))
    let p = off
    while (p + 12 <= Math.min(off + size, elf.length)) {
      const namesz = elf.readUInt32LE(p)
      const descsz = elf.readUInt32LE(p + 4)
      const type = elf.readUInt32LE(p + 8)
      const name = elf.toString('latin1', p + 12, p + 12 + namesz).replace(/\0+$/, '')
      if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY) return true
      p += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    }
  }
  return false
}
