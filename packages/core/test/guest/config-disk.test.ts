import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  CONFIG_HEADER_SIZE,
  decodeGuestConfig,
  encodeGuestConfig,
  packConfigImage,
  writeGuestConfigDisk,
  type GuestConfig,
} from '../../src/guest/config-disk.js'
import { encodeTlv } from '../../src/guest/tlv.js'
import { guestInitBinary } from './helpers.js'

const full: GuestConfig = {
  argv: ['/bin/sh', '-c', 'echo "a b"; exit 3', ''],
  env: { PATH: '/usr/bin:/bin', FOO: 'bar=baz', EMPTY: '', UNICODE: 'ü ✓' },
  workdir: '/srv/app',
  user: 'app:staff',
  hostname: 'web-1',
  rootfsType: 'erofs',
  skipGuestAgent: true,
  stopGraceMs: 2500,
}

let dir: string
let init: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-cfg-'))
  init = await guestInitBinary()
})
afterAll(() => rm(dir, { recursive: true, force: true }))

/** The guest's own parser (init's host-side `parse-config`), fed the bytes we wrote. */
async function parseInGuestCode(img: Buffer): Promise<string> {
  const path = join(dir, `img-${Math.random().toString(36).slice(2)}`)
  await writeFile(path, img)
  return (await run(init, ['parse-config', path])).stdout
}

describe('config disk encoding', () => {
  it('lays out magic, version, length, CRC and pads to 4 KiB', () => {
    const img = encodeGuestConfig(full)
    expect(img.toString('ascii', 0, 8)).toBe('HMCONFIG')
    expect(img.readUInt32LE(8)).toBe(1)
    const len = img.readUInt32LE(12)
    expect(img.readUInt32LE(16)).toBe(crc32(img.subarray(CONFIG_HEADER_SIZE, CONFIG_HEADER_SIZE + len)))
    expect(img.length % 4096).toBe(0)
    expect(img.subarray(CONFIG_HEADER_SIZE + len).every((b) => b === 0)).toBe(true)
  })

  it('round-trips through its own decoder', () => {
    expect(decodeGuestConfig(encodeGuestConfig(full))).toEqual({ ...full, requires: [] })
  })

  it('decodes the defaults the guest applies when keys are absent', () => {
    expect(decodeGuestConfig(encodeGuestConfig({ argv: ['true'], env: {} }))).toEqual({
      argv: ['true'],
      env: {},
      workdir: '/',
      user: '',
      hostname: 'hypeman',
      rootfsType: 'ext4',
      skipGuestAgent: false,
      stopGraceMs: 10_000,
      requires: [],
    })
  })

  it.each<[string, Partial<GuestConfig>, string]>([
    ['empty argv', { argv: [] }, 'argv'],
    ['empty program name', { argv: [''] }, 'argv'],
    ['NUL in an argument', { argv: ['sh', 'a\0b'] }, 'argv[1]'],
    ['env name with =', { env: { 'A=B': '1' } }, 'env.A=B'],
    ['empty env name', { env: { '': '1' } }, 'env.'],
    ['NUL in an env value', { env: { A: 'x\0' } }, 'env.A'],
    ['relative workdir', { workdir: 'srv' }, 'workdir'],
    ['user with two colons', { user: 'a:b:c' }, 'user'],
    ['hostname with a space', { hostname: 'a b' }, 'hostname'],
    ['hostname too long', { hostname: 'a'.repeat(65) }, 'hostname'],
    ['unknown rootfs type', { rootfsType: 'xfs' as never }, 'rootfsType'],
    ['negative grace', { stopGraceMs: -1 }, 'stopGraceMs'],
  ])('rejects %s, naming the field', (_name, patch, field) => {
    expect(() => encodeGuestConfig({ argv: ['true'], env: {}, ...patch })).toThrowError(expect.objectContaining({ code: 'invalid_input', field }))
  })

  it('rejects corrupt images when decoding', () => {
    const img = encodeGuestConfig(full)
    const flipped = Buffer.from(img)
    flipped[CONFIG_HEADER_SIZE + 3]! ^= 0xff
    expect(() => decodeGuestConfig(flipped)).toThrowError(expect.objectContaining({ code: 'bad_config_disk' }))
    expect(() => decodeGuestConfig(Buffer.alloc(4096))).toThrowError(/bad magic/)
  })

  it('writes the image atomically to a file', async () => {
    const path = join(dir, 'config.img')
    await writeGuestConfigDisk(path, full)
    expect(decodeGuestConfig(await readFile(path)).argv).toEqual(full.argv)
  })
})

describe('the guest init parses what the host writes', () => {
  it('reads every field the way the encoder meant it', async () => {
    expect(await parseInGuestCode(encodeGuestConfig(full))).toBe(
      [
        'argv=/bin/sh',
        'argv=-c',
        'argv=echo "a b"; exit 3',
        'argv=',
        'env=PATH=/usr/bin:/bin',
        'env=FOO=bar=baz',
        'env=EMPTY=',
        'env=UNICODE=ü ✓',
        'workdir=/srv/app',
        'user=app:staff',
        'hostname=web-1',
        'rootfs_fstype=erofs',
        'skip_agent=1',
        'stop_grace_ms=2500',
        '',
      ].join('\n'),
    )
  })

  it('applies the same defaults as the TypeScript decoder', async () => {
    expect(await parseInGuestCode(encodeGuestConfig({ argv: ['true'], env: {} }))).toBe(
      'argv=true\nworkdir=/\nuser=\nhostname=hypeman\nrootfs_fstype=ext4\nskip_agent=0\nstop_grace_ms=10000\n',
    )
  })

  it('skips keys it does not know, so optional keys can be added later', async () => {
    const img = packConfigImage(encodeTlv([['argv', 'true'], ['future_option', 'x']]))
    expect(await parseInGuestCode(img)).toContain('argv=true\n')
  })

  it.each<[string, Buffer, RegExp]>([
    ['a feature it lacks (requires)', packConfigImage(encodeTlv([['argv', 'true'], ['requires', 'network']])), /requires feature "network"/],
    ['a checksum mismatch', (() => {
      const img = encodeGuestConfig({ argv: ['true'], env: {} })
      img[CONFIG_HEADER_SIZE]! ^= 1
      return img
    })(), /checksum mismatch/],
    ['a truncated record', packConfigImage(encodeTlv([['argv', 'true']]).subarray(0, 8)), /truncated record/],
    ['no program', packConfigImage(encodeTlv([['workdir', '/']])), /argv is empty/],
    ['a NUL inside a string', packConfigImage(encodeTlv([['argv', Buffer.from('a\0b')]])), /bad value for key argv/],
    ['an env entry without =', packConfigImage(encodeTlv([['argv', 'true'], ['env', 'NOVALUE']])), /NAME=value/],
    ['an unknown rootfs type', packConfigImage(encodeTlv([['argv', 'true'], ['rootfs_fstype', 'xfs']])), /ext4 or erofs/],
    ['another format version', (() => {
      const img = encodeGuestConfig({ argv: ['true'], env: {} })
      img.writeUInt32LE(2, 8)
      return img
    })(), /format version 2/],
  ])('refuses %s', async (_name, img, message) => {
    await expect(parseInGuestCode(img)).rejects.toThrowError(message)
  })
})
