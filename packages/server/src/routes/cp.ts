/**
 * GET /instances/{id}/cp over a WebSocket, hypeman's protocol (not in the OpenAPI file; its
 * server is cmd/api/api/cp.go, its client the SDK's lib/cp.ts). One socket copies one file or
 * makes one directory inward, or reads one path (a whole tree) outward:
 *
 * 1. before the upgrade: auth, then the instance is resolved and must be running (404/409 otherwise);
 * 2. the client's first message is text JSON `{direction: "to"|"from", guest_path, is_dir?, mode?, follow_links?}`;
 * 3. *to*: the file's bytes as binary messages, then text `{"type":"end"}`; the server answers
 *    `{"type":"result", success, error?, bytes_written?}` (`is_dir`: a mkdir, no bytes);
 * 4. *from*: per entry `{"type":"header", path, mode, is_dir, is_symlink?, link_target?, size, mtime, uid?, gid?}`,
 *    a file's bytes as binary messages, then `{"type":"end", final}`; `final` is true on the last
 *    entry's end only. `path` is relative to the copied path's parent (`name`, `name/sub/file`),
 *    `mtime` in Unix seconds, `mode` the permission bits;
 * 5. a failure is `{"type":"error", message, path?}`;
 * 6. after its last message the server waits (10 s at most) for the client to close the socket.
 *
 * Bytes stream through in both directions: a slow guest pauses the client's socket, a slow
 * client pauses the read in the guest. No file is ever held whole in memory.
 */
import { PassThrough } from 'node:stream'
import { finished } from 'node:stream/promises'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { RawData, WebSocket } from 'ws'
import { errorMessage, NotSupportedError, ValidationError } from '@hypeman-ts/common'
import type { GuestFileEntry } from '@hypeman-ts/core'
import { guestSocketCheck, instanceIdOf, parseFirstMessage, toBuffer } from './guest-socket.js'
import type { RouteContext } from './types.js'

export interface CpRequest {
  direction: 'to' | 'from'
  guestPath: string
  isDir: boolean
  /** Absent: the guest's default (0644 for a file, 0755 for a directory), as hypeman reads 0. */
  mode?: number
  followLinks: boolean
}

/** The first message, checked field by field (it is outside the OpenAPI file, so not checked by schema). */
export function parseCpRequest(text: string): CpRequest {
  const r = parseFirstMessage(text)
  if (r.direction !== 'to' && r.direction !== 'from') throw new ValidationError('direction', `must be "to" or "from"`)
  if (typeof r.guest_path !== 'string' || r.guest_path === '') throw new ValidationError('guest_path', 'must be a path in the guest')
  const flag = (field: 'is_dir' | 'follow_links'): boolean => {
    const v = r[field] ?? false
    if (typeof v !== 'boolean') throw new ValidationError(field, 'must be true or false')
    return v
  }
  const mode = r.mode ?? 0
  if (!Number.isInteger(mode) || (mode as number) < 0) throw new ValidationError('mode', 'must be a permission mode (an integer)')
  // hypeman's archive mode (the Go CLI's `cp -a`) sets ownership; core's copy cannot yet.
  for (const field of ['uid', 'gid'] as const) {
    if (r[field] !== undefined && r[field] !== null && r[field] !== 0) throw new NotSupportedError(`${field}: setting ownership is not supported by hypeman-ts yet`, { field })
  }
  return {
    direction: r.direction,
    guestPath: r.guest_path,
    isDir: flag('is_dir'),
    followLinks: flag('follow_links'),
    ...(mode !== 0 ? { mode: mode as number } : {}),
  }
}

/** Past this much unsent (or unwritten) data, the sending side waits. */
const HIGH_WATER = 1024 * 1024

export function registerCp(app: FastifyInstance, { hm }: RouteContext): void {
  app.get('/instances/:id/cp', { websocket: true, preHandler: guestSocketCheck(hm, 'copy') }, (socket: WebSocket, req: FastifyRequest) => {
    const id = instanceIdOf(req)
    const ac = new AbortController()
    socket.once('close', () => ac.abort())
    socket.once('message', (data: RawData, isBinary: boolean) => {
      let request: CpRequest
      try {
        if (isBinary) throw new ValidationError('request', 'the first message must be JSON text')
        request = parseCpRequest(toBuffer(data).toString('utf8'))
      } catch (err) {
        return finish(socket, { type: 'error', message: errorMessage(err) })
      }
      // Synchronously: the SDK sends the file's bytes right behind the request.
      const copy = request.direction === 'to' ? copyIn(request) : copyOut(request)
      copy.then(
        (last) => finish(socket, last),
        (err: unknown) => finish(socket, { type: 'error', message: errorMessage(err), path: request.guestPath }),
      )
    })

    /** Client → guest: the bytes flow through a bounded stream into core's copyTo (or a mkdir). */
    function copyIn(r: CpRequest): Promise<Record<string, unknown>> {
      const incoming = new PassThrough({ highWaterMark: HIGH_WATER })
      let ended = false
      socket.on('message', (d: RawData, binary: boolean) => {
        if (binary) {
          // After a refusal core's copy has let go of the stream: the rest of the file is dropped
          // (a write to it would fail, and pause a socket no drain would ever resume).
          if (incoming.destroyed || incoming.writableEnded) return
          if (!incoming.write(toBuffer(d))) socket.pause()
        } else if (isEndMessage(d)) {
          ended = true
          incoming.end()
        }
        // Other text messages are ignored, as hypeman does.
      })
      incoming.on('drain', () => socket.resume())
      // Its reader (core's copy, or the wait for the end) sees a failure through its own pipeline;
      // after a refusal there is no reader left, and an unheard 'error' would take the server down.
      incoming.on('error', () => {})
      socket.once('close', () => {
        if (!ended) incoming.destroy(new Error('the client closed the connection before the end of the transfer'))
      })
      const mode = r.mode !== undefined ? { mode: r.mode } : {}
      // The guest's own refusals (no such directory, a file in the way) are a result, as hypeman's
      // agent answers them; the socket closing mid-transfer is nothing to answer.
      const result = async (): Promise<Record<string, unknown>> => {
        if (r.isDir) {
          incoming.resume()
          await finished(incoming)
          await hm.instances.mkdir(id, r.guestPath, mode)
          return { type: 'result', success: true }
        }
        const { bytesWritten } = await hm.instances.copyTo(id, r.guestPath, incoming, { ...mode, signal: ac.signal })
        return { type: 'result', success: true, bytes_written: bytesWritten }
      }
      return result()
        .catch((err: unknown) => ({ type: 'result', success: false, error: errorMessage(err) }))
        .finally(() => {
          // A refusal can come while the socket is paused for a full stream: it reads again, or
          // the client's close (queued behind the rest of its file) would never be heard.
          incoming.resume()
          socket.resume()
        })
    }

    /**
     * Guest → client. An entry's end marker waits for the next entry (or the end of the walk):
     * only then is it known whether it is `final`, and the SDK resolves at the final end, after
     * setting the last file's mtime; a separate final marker would race that.
     */
    async function copyOut(r: CpRequest): Promise<Record<string, unknown>> {
      let started = false
      for await (const entry of hm.instances.copyFrom(id, r.guestPath, { followLinks: r.followLinks, signal: ac.signal })) {
        if (started) await send(socket, JSON.stringify({ type: 'end', final: false }))
        started = true
        await send(socket, JSON.stringify(header(entry)))
        if (entry.content) for await (const chunk of entry.content) for (const frame of dataFrames(chunk as Buffer)) await send(socket, frame)
      }
      return { type: 'end', final: true }
    }
  })
}

function header(e: GuestFileEntry): Record<string, unknown> {
  return {
    type: 'header',
    path: e.path,
    // hypeman sends Go's FileMode.Perm(): the permission bits only.
    mode: e.mode & 0o777,
    is_dir: e.type === 'directory',
    ...(e.type === 'symlink' ? { is_symlink: true, link_target: e.linkTarget ?? '' } : {}),
    size: e.type === 'directory' ? 0 : e.size,
    mtime: Math.floor(e.mtime.getTime() / 1000),
    ...(e.uid ? { uid: e.uid } : {}),
    ...(e.gid ? { gid: e.gid } : {}),
  }
}

function isEndMessage(d: RawData): boolean {
  try {
    return (JSON.parse(toBuffer(d).toString('utf8')) as { type?: unknown })?.type === 'end'
  } catch {
    return false
  }
}

/**
 * The SDK's cp client tells its messages from file bytes by content, not by frame type: a binary
 * message that starts with `{` or `[` and parses as JSON would be taken for a message (file bytes
 * `{"type":"end","final":true}` would end the copy). Such a chunk goes as its first byte alone
 * (`{` or `[` never parses) and the rest, checked again.
 */
export function dataFrames(chunk: Buffer): Buffer[] {
  const frames: Buffer[] = []
  let rest = chunk
  while (rest.length > 0 && parsesAsJson(rest)) {
    frames.push(rest.subarray(0, 1))
    rest = rest.subarray(1)
  }
  if (rest.length > 0) frames.push(rest)
  return frames
}

function parsesAsJson(b: Buffer): boolean {
  if (b[0] !== 0x7b && b[0] !== 0x5b) return false
  try {
    JSON.parse(b.toString('utf8'))
    return true
  } catch {
    return false
  }
}

/** Sends one message; waits for it to leave when the client is behind, so a slow client slows the guest. */
function send(socket: WebSocket, data: string | Buffer): Promise<void> {
  if (socket.readyState !== socket.OPEN) return Promise.reject(new Error('the client closed the connection'))
  const binary = typeof data !== 'string'
  if (socket.bufferedAmount < HIGH_WATER) {
    socket.send(data, { binary })
    return Promise.resolve()
  }
  return new Promise((resolve, reject) => socket.send(data, { binary }, (err) => (err ? reject(err) : resolve())))
}

/** How long a client has to close the socket after the last message before the server does. */
const CLOSE_GRACE_MS = 10_000

/**
 * The last message; then the client closes, as the SDK does once it has handled it. Closing
 * first would race the SDK: it finishes the last file (and sets its mtime) asynchronously, and a
 * close that arrives before that is a failed copy to it.
 */
function finish(socket: WebSocket, last: Record<string, unknown>): void {
  if (socket.readyState !== socket.OPEN) return
  socket.send(JSON.stringify(last))
  const timer = setTimeout(() => socket.close(1000), CLOSE_GRACE_MS)
  socket.once('close', () => clearTimeout(timer))
}
