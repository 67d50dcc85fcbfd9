/**
 * One running VM through the official SDK: cp over the WebSocket with the SDK's own helpers
 * (`cpToInstance`, `cpFromInstance`: a file and a directory tree round-tripped with their bytes
 * and modes, a symlink, file bytes that look like the protocol's JSON, backpressure towards a
 * client that stops reading, the refusals), stats, and
 * an update of a key no credential binds.
 */
import { createHash, randomBytes } from 'node:crypto'
import { chmod, lstat, mkdir, mkdtemp, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises'
import { once } from 'node:events'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { BadRequestError } from '@onkernel/hypeman'
import { cpFromInstance, cpToInstance } from '@onkernel/hypeman/lib/cp'
import { BUSYBOX, specValidator, startServer, type TestServer } from './support/server.js'

let t: TestServer
let id: string
let local: string
const valid = specValidator()
const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex')
const big = randomBytes(2 * 1024 * 1024 + 3)
// Whole-file JSON that means something in the protocol: a client that took it for a message would end early.
const LOOKS_LIKE_THE_END = '{"type":"end","final":true}'
const cfg = () => ({ baseURL: t.base, apiKey: t.token })
const sh = async (script: string) => (await t.hm.instances.exec(id, { argv: ['sh', '-c', script] })).stdout.toString().trim()
const mode = async (p: string) => ((await stat(p)).mode & 0o777).toString(8)

beforeAll(async () => {
  t = await startServer()
  local = await mkdtemp(join(tmpdir(), 'hm-server-cp-'))
  id = (await t.client.instances.create({ name: 'srv-files', image: BUSYBOX, cmd: ['sleep', '3600'], network: { enabled: false } })).id
})
afterAll(async () => {
  await t?.close()
  if (local) await rm(local, { recursive: true, force: true })
})

describe('cp to an instance (SDK cpToInstance)', () => {
  it('writes a file with its bytes and mode', async () => {
    const src = join(local, 'big.bin')
    await writeFile(src, big)
    await chmod(src, 0o640)
    await cpToInstance(cfg(), { instanceId: id, srcPath: src, dstPath: '/tmp/big.bin' })
    expect(await sh('sha256sum /tmp/big.bin; stat -c %a /tmp/big.bin')).toBe(`${sha(big)}  /tmp/big.bin\n640`)
  })

  it('copies a directory tree (directories, modes, an empty file, JSON-looking content), by name too', async () => {
    const tree = join(local, 'tree')
    await mkdir(join(tree, 'sub', 'deeper'), { recursive: true })
    await writeFile(join(tree, 'run.sh'), '#!/bin/sh\necho hi\n', { mode: 0o755 })
    await writeFile(join(tree, 'sub', 'secret'), 'shh\n', { mode: 0o600 })
    await writeFile(join(tree, 'sub', 'deeper', 'empty'), '')
    await writeFile(join(tree, 'sub', 'end.json'), LOOKS_LIKE_THE_END)
    await chmod(join(tree, 'sub'), 0o750)
    await cpToInstance(cfg(), { instanceId: 'srv-files', srcPath: tree, dstPath: '/tmp/tree' })
    const listing = await sh('cd /tmp/tree && find . | sort | while read f; do echo "$f $(stat -c %a "$f") $(stat -c %s "$f")"; done; cat sub/end.json')
    expect(listing.split('\n')).toEqual([
      expect.stringMatching(/^\. 755 /),
      expect.stringMatching(/^\.\/run\.sh 755 18$/),
      expect.stringMatching(/^\.\/sub 750 /),
      expect.stringMatching(/^\.\/sub\/deeper 755 /),
      './sub/deeper/empty 644 0',
      `./sub/end.json 644 ${LOOKS_LIKE_THE_END.length}`,
      './sub/secret 600 4',
      LOOKS_LIKE_THE_END,
    ])
  })

  it('fails with the guest\'s reason when the file cannot be written', async () => {
    const src = join(local, 'small.txt')
    await writeFile(src, 'x')
    await expect(cpToInstance(cfg(), { instanceId: id, srcPath: src, dstPath: '/tmp/big.bin/under-a-file' })).rejects.toThrow(/Copy failed: .*under-a-file/)
    await expect(cpToInstance(cfg(), { instanceId: id, srcPath: src, dstPath: 'relative' })).rejects.toThrow(/Copy failed: .*absolute/)
  })

  it('refuses a large file at once and lets its socket go (not held paused with the rest unread)', async () => {
    const src = join(local, 'large-refused.bin')
    await writeFile(src, Buffer.alloc(16 * 1024 * 1024, 7))
    await expect(cpToInstance(cfg(), { instanceId: id, srcPath: src, dstPath: '/tmp/big.bin/under-a-file' })).rejects.toThrow(/Copy failed/)
    const since = Date.now()
    while (t.server.app.websocketServer.clients.size > 0 && Date.now() - since < 5_000) await sleep(50)
    expect(t.server.app.websocketServer.clients.size).toBe(0)
  })
})

describe('cp from an instance (SDK cpFromInstance)', () => {
  it('reads a file back byte for byte, into the destination directory under its name, with mode and mtime', async () => {
    const dst = join(local, 'back-file')
    await cpFromInstance(cfg(), { instanceId: id, srcPath: '/tmp/big.bin', dstPath: dst })
    expect(sha(await readFile(join(dst, 'big.bin')))).toBe(sha(big))
    expect(await mode(join(dst, 'big.bin'))).toBe('640')
    const guestMtime = Number(await sh('stat -c %Y /tmp/big.bin'))
    expect(Math.floor((await stat(join(dst, 'big.bin'))).mtimeMs / 1000)).toBe(guestMtime)
  })

  it('reads the tree back as it went in, a relative symlink as a symlink', async () => {
    await sh('ln -s secret /tmp/tree/sub/link')
    const dst = join(local, 'back-tree')
    await cpFromInstance(cfg(), { instanceId: id, srcPath: '/tmp/tree', dstPath: dst })
    const root = join(dst, 'tree')
    expect(await readFile(join(root, 'run.sh'), 'utf8')).toBe('#!/bin/sh\necho hi\n')
    expect(await readFile(join(root, 'sub', 'secret'), 'utf8')).toBe('shh\n')
    expect(await readFile(join(root, 'sub', 'end.json'), 'utf8')).toBe(LOOKS_LIKE_THE_END)
    expect(await readFile(join(root, 'sub', 'deeper', 'empty'), 'utf8')).toBe('')
    expect([await mode(join(root, 'run.sh')), await mode(join(root, 'sub', 'secret')), await mode(join(root, 'sub'))]).toEqual(['755', '600', '750'])
    expect((await lstat(join(root, 'sub', 'link'))).isSymbolicLink()).toBe(true)
    expect(await readlink(join(root, 'sub', 'link'))).toBe('secret')
  })

  it('holds about a MiB, not the file, for a client that stops reading (backpressure), then delivers it all', async () => {
    const size = 32 * 1024 * 1024
    await sh(`dd if=/dev/zero of=/tmp/large bs=1M count=32 2>/dev/null`)
    const ws = new WebSocket(`${t.base.replace('http', 'ws')}/instances/${id}/cp`, { headers: { authorization: `Bearer ${t.token}` } })
    await once(ws, 'open')
    let received = 0
    const finalEnd = new Promise<void>((resolve) =>
      ws.on('message', (d: Buffer, isBinary) => {
        if (isBinary) received += d.length
        else if ((JSON.parse(d.toString()) as { final?: boolean }).final) resolve()
      }),
    )
    ws.send(JSON.stringify({ direction: 'from', guest_path: '/tmp/large' }))
    // The client reads nothing: the kernel's buffers fill, then the server's own.
    const tcp = (ws as unknown as { _socket: import('node:net').Socket })._socket
    tcp.pause()
    const serverBuffered = () => Math.max(0, ...[...t.server.app.websocketServer.clients].map((c) => c.bufferedAmount))
    const filled = Date.now()
    while (serverBuffered() < 512 * 1024 && Date.now() - filled < 60_000) await sleep(50)
    let most = 0
    for (let i = 0; i < 20; i++, await sleep(100)) most = Math.max(most, serverBuffered())
    expect(most).toBeGreaterThanOrEqual(512 * 1024)
    expect(most).toBeLessThan(2 * 1024 * 1024)
    tcp.resume()
    await finalEnd
    expect(received).toBe(size)
    ws.close()
  })

  it('survives clients that go away mid-copy, either way, and copies on', async () => {
    const url = `${t.base.replace('http', 'ws')}/instances/${id}/cp`
    const headers = { authorization: `Bearer ${t.token}` }
    const inward = new WebSocket(url, { headers })
    await once(inward, 'open')
    inward.send(JSON.stringify({ direction: 'to', guest_path: '/tmp/partial', mode: 0o644 }))
    inward.send(randomBytes(512 * 1024))
    await sleep(200)
    inward.terminate()
    const outward = new WebSocket(url, { headers })
    await once(outward, 'open')
    outward.send(JSON.stringify({ direction: 'from', guest_path: '/tmp/large' }))
    await once(outward, 'message')
    outward.terminate()
    await sleep(500)
    const src = join(local, 'after.txt')
    await writeFile(src, 'still here\n')
    await cpToInstance(cfg(), { instanceId: id, srcPath: src, dstPath: '/tmp/after.txt' })
    expect(await sh('cat /tmp/after.txt')).toBe('still here')
  })

  it('fails naming the path that does not exist', async () => {
    await expect(cpFromInstance(cfg(), { instanceId: id, srcPath: '/nope', dstPath: join(local, 'nope') })).rejects.toThrow(/Copy error at \/nope: .*does not exist/)
  })
})

describe('stats', () => {
  it('reports the VMM\'s use and what the instance was given, in the spec\'s shape', async () => {
    const s = await t.client.instances.stats('srv-files')
    valid('InstanceStats', s)
    expect(s).toMatchObject({ instance_id: id, instance_name: 'srv-files', allocated_vcpus: 1, allocated_memory_bytes: 256 * 1024 * 1024, network_rx_bytes: 0, network_tx_bytes: 0 })
    expect(s.cpu_seconds).toBeGreaterThan(0)
    expect(s.memory_rss_bytes).toBeGreaterThan(0)
    expect(s.memory_vms_bytes).toBeGreaterThanOrEqual(s.memory_rss_bytes)
    expect(s.memory_utilization_ratio).toBeCloseTo(s.memory_rss_bytes / s.allocated_memory_bytes)
  })
})

describe('update', () => {
  it('refuses a key no credential binds with 400 naming env.KEY', async () => {
    const err = (await t.client.instances.update(id, { env: { GREETING: 'x' } }).catch((e: unknown) => e)) as BadRequestError
    expect(err).toBeInstanceOf(BadRequestError)
    expect(err.error).toMatchObject({ code: 'invalid_input', details: [{ code: 'field', message: 'env.GREETING' }] })
  })
})

describe('a stopped instance', () => {
  it('refuses cp with 409 before the upgrade', async () => {
    await t.client.instances.stop(id)
    await expect(cpFromInstance(cfg(), { instanceId: id, srcPath: '/tmp', dstPath: join(local, 'x') })).rejects.toThrow(/409/)
  })
})
