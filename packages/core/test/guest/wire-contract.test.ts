/**
 * The host/guest wire contract is written twice, in TypeScript (src/guest) and in the guest
 * init's C (guest/src). This test reads the C sources and fails when the two disagree: port
 * names, disk serials, frame types and sizes, the config disk's header, the default PATH, the
 * protocol version, and every record key the host writes being one the guest reads.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { CONFIG_FORMAT_VERSION, CONFIG_HEADER_SIZE, CONFIG_MAGIC, CONFIG_MAX_PAYLOAD, guestConfigEntries } from '../../src/guest/config-disk.js'
import { DEFAULT_PATH, DISK_SERIAL, GUEST_PROTOCOL_VERSION, PORT_NAME } from '../../src/guest/constants.js'
import { encodeExecRequest, encodeHello, encodeResize, encodeSignal, encodeStatRequest, FRAME_HEADER_SIZE, FRAME_MAX_PAYLOAD, FrameType } from '../../src/guest/agent-protocol.js'
import { decodeTlv, type TlvEntry } from '../../src/guest/tlv.js'
import { makeCa } from './pki.js'

const SRC = new URL('../../guest/src/', import.meta.url).pathname
const files = readdirSync(SRC).filter((f) => /\.[ch]$/.test(f))
const source = (f: string) => readFileSync(join(SRC, f), 'utf8')
const all = files.map(source).join('\n')

/** The value of a `#define NAME value` anywhere in the guest sources, as C would read it. */
function define(name: string): string | number {
  const m = new RegExp(`^#define ${name}\\s+(.+)$`, 'm').exec(all)
  if (!m) throw new Error(`no #define ${name} in guest/src`)
  const v = m[1]!.trim()
  if (v.startsWith('"')) return JSON.parse(v) as string
  const shift = /^\((\d+)u? << (\d+)\)$/.exec(v)
  if (shift) return Number(shift[1]) * 2 ** Number(shift[2])
  if (/^\d+$/.test(v)) return Number(v)
  throw new Error(`#define ${name} ${v}: not a value this test reads`)
}

describe('the guest init and the host agree on', () => {
  it('port names and disk serials', () => {
    expect({ agent: define('PORT_AGENT'), app: define('PORT_APP'), status: define('PORT_STATUS'), control: define('PORT_CONTROL') }).toEqual(PORT_NAME)
    // The kernel headers disk's serial reaches the guest in its config (`kernel_headers`) too; a template mounts it before it has one.
    expect({ rootfs: define('DISK_ROOTFS'), overlay: define('DISK_OVERLAY'), config: define('DISK_CONFIG'), headers: define('DISK_HEADERS') }).toEqual(DISK_SERIAL)
  })

  it('the agent frames', () => {
    expect(define('FRAME_HEADER')).toBe(FRAME_HEADER_SIZE)
    expect(define('FRAME_MAX_PAYLOAD')).toBe(FRAME_MAX_PAYLOAD)
    const body = /enum frame_type \{([^}]*)\}/.exec(source('agent.h'))![1]!
    const c = Object.fromEntries([...body.matchAll(/F_([A-Z_]+) = (0x[0-9a-f]+)/g)].map((m) => [m[1]!.replaceAll('_', '').toLowerCase(), Number(m[2])]))
    const ts = Object.fromEntries(Object.entries(FrameType).map(([k, v]) => [k.toLowerCase(), v]))
    expect(c).toEqual(ts)
  })

  it('the config disk header, the default PATH and the protocol version', () => {
    expect([define('CONFIG_MAGIC'), define('CONFIG_HEADER_SIZE'), define('CONFIG_FORMAT_VERSION'), define('CONFIG_MAX_PAYLOAD')]).toEqual([
      CONFIG_MAGIC,
      CONFIG_HEADER_SIZE,
      CONFIG_FORMAT_VERSION,
      CONFIG_MAX_PAYLOAD,
    ])
    expect(define('DEFAULT_PATH')).toBe(DEFAULT_PATH)
    expect(define('HM_VERSION')).toBe(GUEST_PROTOCOL_VERSION)
  })

  it('every record key the host writes is one the guest reads', async () => {
    const read = (f: string) => new Set([...source(f).matchAll(/tlv_key_is\(&?\w+, "([^"]+)"\)/g)].map((m) => m[1]!))
    const keys = (entries: readonly TlvEntry[] | Buffer) => new Set((Buffer.isBuffer(entries) ? decodeTlv(entries) : entries).map((e) => (Array.isArray(e) ? e[0] : (e as { key: string }).key)))
    const dir = await mkdtemp(join(tmpdir(), 'hm-contract-'))
    try {
      const ca = await makeCa(dir, 'contract-ca')
      // Every field set, so every key the host can write is written.
      const config = guestConfigEntries({
        argv: ['true'],
        env: { A: 'b' },
        workdir: '/w',
        user: 'app',
        hostname: 'h',
        rootfsType: 'erofs',
        skipGuestAgent: true,
        stopGraceMs: 5000,
        network: { mac: '52:54:00:12:34:56', address: '10.0.0.2', prefixLength: 24, gateway: '10.0.0.1', dns: ['10.0.0.1'], mtu: 1400 },
        egress: { caBundlePem: ca.pem, proxyEnv: { HTTP_PROXY: 'http://10.0.0.1:1' } },
      })
      expect(keys(config).size).toBeGreaterThanOrEqual(15)
      expect([...keys(config)].filter((k) => !read('config.c').has(k))).toEqual([])
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
    const agentRequests = [
      encodeExecRequest({ argv: ['true'], env: { A: 'b' }, cwd: '/', user: 'app', tty: true, rows: 1, cols: 1, stdin: true, timeoutMs: 1 }),
      encodeStatRequest('/', true),
      encodeHello('n'),
      encodeSignal(15),
      encodeResize(1, 1),
    ]
    const written = new Set(agentRequests.flatMap((b) => [...keys(b)]))
    expect(written.size).toBeGreaterThanOrEqual(12)
    expect([...written].filter((k) => !read('agent.c').has(k))).toEqual([])
  })
})
