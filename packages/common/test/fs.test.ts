import { randomBytes } from 'node:crypto'
import { mkdtemp, open, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { copyIntoHoles, copySparse } from '../src/index.js'

const MiB = 2 ** 20
let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-fs-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

/** An 8 MiB file that is mostly holes: random data at 1 MiB and 5 MiB, a block of written zeros at 3 MiB. */
async function sparseSource(name: string): Promise<string> {
  const path = join(dir, name)
  const f = await open(path, 'w')
  try {
    await f.truncate(8 * MiB)
    await f.write(randomBytes(256 * 1024), 0, 256 * 1024, 1 * MiB)
    await f.write(Buffer.alloc(256 * 1024), 0, 256 * 1024, 3 * MiB)
    await f.write(randomBytes(100_000), 0, 100_000, 5 * MiB + 12_345)
  } finally {
    await f.close()
  }
  return path
}

async function sized(name: string, bytes: number): Promise<string> {
  const path = join(dir, name)
  const f = await open(path, 'w')
  await f.truncate(bytes).finally(() => f.close())
  return path
}

describe('copySparse', () => {
  it('copies the content, keeps holes, and overwrites an existing file as the same inode', async () => {
    const from = await sparseSource('cs-from')
    const to = await sized('cs-to', 1234)
    const ino = (await stat(to)).ino
    await copySparse(from, to)
    expect((await readFile(to)).equals(await readFile(from))).toBe(true)
    const st = await stat(to)
    expect(st.ino).toBe(ino)
    expect(st.size).toBe(8 * MiB)
    expect(st.blocks * 512).toBeLessThan(2 * MiB)
  })
})

describe('copyIntoHoles', () => {
  it('writes the data into a sized sparse file in place: same inode, same size, holes kept', async () => {
    const from = await sparseSource('ih-from')
    const to = await sized('ih-to', 8 * MiB)
    const ino = (await stat(to)).ino
    // A reader that has the file open sees the copy: nothing replaced it.
    const held = await open(to, 'r')
    try {
      await copyIntoHoles(from, to)
      const through = Buffer.alloc(8 * MiB)
      await held.read(through, 0, through.length, 0)
      expect(through.equals(await readFile(from))).toBe(true)
    } finally {
      await held.close()
    }
    const st = await stat(to)
    expect(st.ino).toBe(ino)
    expect(st.size).toBe(8 * MiB)
    // The two data runs (≈ 356 KB), not the 8 MiB, nor the block of zeros.
    expect(st.blocks * 512).toBeLessThan(MiB)
  })

  it('refuses files of different sizes, naming both, and leaves the target as it was', async () => {
    const from = await sparseSource('ih-from2')
    const to = await sized('ih-to2', 4 * MiB)
    await expect(copyIntoHoles(from, to)).rejects.toThrow(/ih-from2 \(8388608 bytes\) into .*ih-to2 \(4194304 bytes\)/)
    const st = await stat(to)
    expect(st.size).toBe(4 * MiB)
    expect(st.blocks).toBe(0)
  })

  it('refuses a missing target rather than creating it', async () => {
    const from = await sparseSource('ih-from3')
    await expect(copyIntoHoles(from, join(dir, 'nope'))).rejects.toThrow(/ENOENT/)
  })
})
