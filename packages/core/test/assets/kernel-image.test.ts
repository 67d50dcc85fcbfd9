// bzImage unpacking and vmlinux checks: a bzImage assembled here around an LZ4 payload made by the
// real lz4 CLI (the kernel build's own tool and format), and the cached Debian vmlinux.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { defaultCacheDir } from '../../src/assets/ensure.js'
import { hasPvhEntry, isElf, locateKernelPayload } from '../../src/assets/kernel-image.js'
import { checkVmlinux, extractVmlinux, listCachedKernels, parseCloudKernelDepends } from '../../src/assets/kernel.js'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-kimg-'))
})
afterAll(() => rm(dir, { recursive: true, force: true }))

/** A minimal ELF64 with one PT_NOTE holding the given notes, padded with a recognisable body. */
function fakeElf(notes: { name: string; type: number }[], bodySize = 300_000): Buffer {
  const noteBufs = notes.map(({ name, type }) => {
    const n = Buffer.from(`${name}\0`)
    const h = Buffer.alloc(12)
    h.writeUInt32LE(n.length, 0)
    h.writeUInt32LE(4, 4)
    h.writeUInt32LE(type, 8)
    return Buffer.concat([h, n, Buffer.alloc((4 - (n.length % 4)) % 4), Buffer.alloc(4, 0xaa)])
  })
  const notesBuf = Buffer.concat(noteBufs)
  const ehdr = Buffer.alloc(64)
  Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]).copy(ehdr)
  ehdr.writeBigUInt64LE(64n, 0x20) // phoff
  ehdr.writeUInt16LE(56, 0x36) // phentsize
  ehdr.writeUInt16LE(1, 0x38) // phnum
  const phdr = Buffer.alloc(56)
  phdr.writeUInt32LE(4, 0) // PT_NOTE
  phdr.writeBigUInt64LE(120n, 8) // offset
  phdr.writeBigUInt64LE(BigInt(notesBuf.length), 32) // filesz
  const body = Buffer.alloc(bodySize)
  for (let i = 0; i < body.length; i++) body[i] = (i * 7) % 251
  return Buffer.concat([ehdr, phdr, notesBuf, body])
}

/** A bzImage shell: boot header with payload_offset/length, the payload, then trailing code. */
function fakeBzImage(payload: Buffer, uncompressedSize: number, setupSects = 3): Buffer {
  const setup = Buffer.alloc((setupSects + 1) * 512)
  setup[0x1f1] = setupSects
  setup.write('HdrS', 0x202, 'latin1')
  setup.writeUInt16LE(0x20f, 0x206)
  const payloadOffset = 0x200
  const withSize = Buffer.concat([payload, Buffer.alloc(4)])
  withSize.writeUInt32LE(uncompressedSize, payload.length)
  setup.writeUInt32LE(payloadOffset, 0x248)
  setup.writeUInt32LE(withSize.length, 0x24c)
  return Buffer.concat([setup, Buffer.alloc(payloadOffset, 0x90), withSize, Buffer.from('trailing decompressor code')])
}

async function lz4Legacy(data: Buffer): Promise<Buffer> {
  await writeFile(join(dir, 'plain'), data)
  await run('lz4', ['-l', '-f', '-q', join(dir, 'plain'), join(dir, 'plain.lz4')])
  return readFile(join(dir, 'plain.lz4'))
}

describe('bzImage payload', () => {
  it('is found through the boot header and unpacked by lz4 to the exact vmlinux', async () => {
    const elf = fakeElf([{ name: 'Xen', type: 18 }])
    const img = fakeBzImage(await lz4Legacy(elf), elf.length)
    const p = locateKernelPayload(img)
    expect(p).toMatchObject({ compression: 'lz4', uncompressedSize: elf.length, offset: 4 * 512 + 0x200 })
    await writeFile(join(dir, 'vmlinuz'), img)
    await extractVmlinux(join(dir, 'vmlinuz'), join(dir, 'vmlinux'))
    expect((await readFile(join(dir, 'vmlinux'))).equals(elf)).toBe(true)
  })

  it('refuses a payload whose unpacked size differs from the recorded one', async () => {
    const elf = fakeElf([{ name: 'Xen', type: 18 }])
    await writeFile(join(dir, 'lying'), fakeBzImage(await lz4Legacy(elf), elf.length + 1))
    await expect(extractVmlinux(join(dir, 'lying'), join(dir, 'out'))).rejects.toMatchObject({ code: 'invalid_kernel', message: expect.stringContaining('the image says') })
  })

  it('refuses an unpacked kernel without a PVH entry', async () => {
    const elf = fakeElf([{ name: 'Xen', type: 17 }, { name: 'GNU', type: 18 }])
    await writeFile(join(dir, 'nopvh'), fakeBzImage(await lz4Legacy(elf), elf.length))
    await expect(extractVmlinux(join(dir, 'nopvh'), join(dir, 'out2'))).rejects.toMatchObject({ code: 'invalid_kernel', message: expect.stringContaining('PVH') })
  })

  it.each<[string, Buffer, string]>([
    ['gzip', Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0]), 'gzip'],
    ['zstd', Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]), 'zstd'],
  ])('names a %s payload and refuses to unpack it', async (_n, head, compression) => {
    const img = fakeBzImage(head, 100)
    expect(locateKernelPayload(img).compression).toBe(compression)
    await writeFile(join(dir, `k-${compression}`), img)
    await expect(extractVmlinux(join(dir, `k-${compression}`), join(dir, 'o'))).rejects.toMatchObject({ code: 'invalid_kernel', field: 'kernel.image' })
  })

  it('refuses files that are not bzImages', () => {
    expect(() => locateKernelPayload(Buffer.alloc(4096))).toThrowError(expect.objectContaining({ code: 'invalid_kernel' }))
    const old = fakeBzImage(Buffer.alloc(16), 16)
    old.writeUInt16LE(0x206, 0x206)
    expect(() => locateKernelPayload(old)).toThrow(/predates/)
  })
})

describe('vmlinux checks', () => {
  it('accepts the cached Debian vmlinux as a PVH-bootable ELF', async () => {
    const kernel = (await listCachedKernels(defaultCacheDir()))[0]
    expect(kernel, 'a kernel in the cache (scripts/setup)').toBeDefined()
    await checkVmlinux(kernel!.vmlinux)
  })

  it('tells ELF files and PVH notes apart', () => {
    expect(isElf(fakeElf([]))).toBe(true)
    expect(isElf(Buffer.from('MZ\0\0'))).toBe(false)
    expect(hasPvhEntry(fakeElf([{ name: 'Xen', type: 18 }]))).toBe(true)
    expect(hasPvhEntry(fakeElf([{ name: 'Xen', type: 5 }]))).toBe(false)
    expect(hasPvhEntry(Buffer.from('not an elf at all'))).toBe(false)
  })
})

describe('apt metapackage', () => {
  it.each<[string, ReturnType<typeof parseCloudKernelDepends>]>([
    ['Package: linux-image-cloud-amd64\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n', { package: 'linux-image-6.1.0-56-cloud-amd64', version: '6.1.0-56-cloud-amd64', packageVersion: '6.1.192-2' }],
    ['Depends: linux-image-6.12.9+bpo-cloud-amd64\n', { package: 'linux-image-6.12.9+bpo-cloud-amd64', version: '6.12.9+bpo-cloud-amd64' }],
    ['Depends: linux-image-6.1.0-9-cloud-amd64-unsigned (= 1), linux-image-6.1.0-9-cloud-amd64 (= 2)\n', { package: 'linux-image-6.1.0-9-cloud-amd64', version: '6.1.0-9-cloud-amd64', packageVersion: '2' }],
    ['Package: something\n', undefined],
  ])('parses %j', (text, expected) => {
    expect(parseCloudKernelDepends(text)).toEqual(expected)
  })
})
