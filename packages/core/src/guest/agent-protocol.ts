/**
 * The agent protocol, pure: frames and message payloads to and from bytes, no sockets (the client
 * in agent-client.ts does the IO). Mirrors guest/src/agent.c; the wire format is in guest/README.md.
 *
 * Frame: u32 LE length (of everything after it) | u8 type | u32 LE stream id | payload.
 * Payloads of control messages are TLV records (tlv.ts); STDIN/STDOUT/STDERR carry raw bytes.
 */
import { GuestError } from './errors.js'
import { encodeTlv, TlvView, type TlvEntry } from './tlv.js'

export const FRAME_HEADER_SIZE = 9
/** Largest payload either side accepts (the guest's FRAME_MAX_PAYLOAD). */
export const FRAME_MAX_PAYLOAD = 1024 * 1024

export const FrameType = {
  Hello: 0x01,
  Ping: 0x02,
  Exec: 0x03,
  Stdin: 0x04,
  Signal: 0x05,
  Resize: 0x06,
  Stat: 0x07,
  HelloAck: 0x81,
  Pong: 0x82,
  Started: 0x83,
  Stdout: 0x84,
  Stderr: 0x85,
  Exit: 0x86,
  StatResult: 0x87,
  Error: 0x8f,
} as const
export type FrameTypeValue = (typeof FrameType)[keyof typeof FrameType]

export interface Frame {
  type: number
  id: number
  payload: Buffer
}

export function encodeFrame(type: number, id: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > FRAME_MAX_PAYLOAD) throw new RangeError(`frame payload of ${payload.length} bytes exceeds ${FRAME_MAX_PAYLOAD}`)
  const head = Buffer.alloc(FRAME_HEADER_SIZE)
  head.writeUInt32LE(payload.length + 5, 0)
  head.writeUInt8(type, 4)
  head.writeUInt32LE(id >>> 0, 5)
  return Buffer.concat([head, payload])
}

/** Incremental decoder: feed it chunks as they arrive, get whole frames back. */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0)

  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk])
    const frames: Frame[] = []
    let off = 0
    while (this.buf.length - off >= FRAME_HEADER_SIZE) {
      const len = this.buf.readUInt32LE(off)
      if (len < 5 || len - 5 > FRAME_MAX_PAYLOAD) {
        this.buf = Buffer.alloc(0)
        throw new GuestError('agent_protocol', `bad frame length ${len}: the peer is not a hypeman agent or the stream is out of sync`)
      }
      if (this.buf.length - off < 4 + len) break
      frames.push({
        type: this.buf.readUInt8(off + 4),
        id: this.buf.readUInt32LE(off + 5),
        payload: Buffer.from(this.buf.subarray(off + FRAME_HEADER_SIZE, off + 4 + len)),
      })
      off += 4 + len
    }
    this.buf = this.buf.subarray(off)
    return frames
  }

  /** Bytes of an incomplete frame still waiting for the rest. */
  get pending(): number {
    return this.buf.length
  }
}

export interface ExecRequest {
  argv: string[]
  /** Added to (and overriding) the instance's environment, as `docker exec -e`. */
  env?: Record<string, string>
  /** Default: the instance's working directory. */
  cwd?: string
  /** docker `--user` spec; default: the instance's user. */
  user?: string
  /** Allocate a pty: one output stream (stdout), TERM=xterm unless set. */
  tty?: boolean
  rows?: number
  cols?: number
  /** Whether stdin frames will follow; without it the program's stdin is /dev/null. */
  stdin?: boolean
  /** Kill the program (SIGKILL to its process group) after this long; 0 or absent = no limit. */
  timeoutMs?: number
}

/** The agent's built-in programs (guest/src/files.h): file copy without tools in the image. */
export type AgentBuiltin = 'write-file' | 'mkdir' | 'read-tree' | 'mount-volume' | 'umount-volume'

/** `builtin`: run that built-in of the agent with `argv` as its arguments instead of a program. */
export function encodeExecRequest(r: ExecRequest, builtin?: AgentBuiltin): Buffer {
  const entries: TlvEntry[] = r.argv.map((a) => ['argv', a] as const)
  if (builtin) entries.push(['builtin', builtin])
  for (const [k, v] of Object.entries(r.env ?? {})) entries.push(['env', `${k}=${v}`])
  if (r.cwd !== undefined) entries.push(['cwd', r.cwd])
  if (r.user !== undefined) entries.push(['user', r.user])
  if (r.tty) entries.push(['tty', true])
  if (r.rows !== undefined) entries.push(['rows', r.rows])
  if (r.cols !== undefined) entries.push(['cols', r.cols])
  if (r.stdin) entries.push(['stdin', true])
  if (r.timeoutMs) entries.push(['timeout_ms', r.timeoutMs])
  return encodeTlv(entries)
}

export interface ExecExit {
  /** docker's convention: the exit status, or 128 + signal; 127/126 when the program never ran. */
  exitCode: number
  signal?: number
  signalName?: string
  timedOut: boolean
  message: string
}

export function decodeExit(payload: Buffer): ExecExit {
  const v = TlvView.decode(payload)
  const exitCode = v.int('code')
  if (exitCode === undefined) throw new GuestError('agent_protocol', 'EXIT frame without a code')
  const exit: ExecExit = { exitCode, timedOut: v.bool('timed_out') ?? false, message: v.str('message') ?? '' }
  const signal = v.int('signal')
  if (signal !== undefined) exit.signal = signal
  const signalName = v.str('signal_name')
  if (signalName !== undefined) exit.signalName = signalName
  return exit
}

/** The spec's PathInfo (shared/specs/hypeman-openapi.yaml), camelCased. */
export interface PathInfo {
  exists: boolean
  isDir?: boolean
  isFile?: boolean
  isSymlink?: boolean
  linkTarget?: string | null
  /** Permission bits (st_mode & 07777), e.g. 420 for 0644. */
  mode?: number
  size?: number
  error?: string | null
}

export function encodeStatRequest(path: string, followLinks = false): Buffer {
  return encodeTlv([
    ['path', path],
    ['follow_links', followLinks],
  ])
}

export function decodeStatResult(payload: Buffer): PathInfo {
  const v = TlvView.decode(payload)
  const info: PathInfo = { exists: v.bool('exists') ?? false }
  if (!info.exists) {
    const error = v.str('error')
    if (error !== undefined) info.error = error
    return info
  }
  info.isDir = v.bool('is_dir') ?? false
  info.isFile = v.bool('is_file') ?? false
  info.isSymlink = v.bool('is_symlink') ?? false
  if (info.isSymlink) info.linkTarget = v.str('link_target') ?? null
  info.mode = v.int('mode') ?? 0
  info.size = v.int('size') ?? 0
  return info
}

/** PathInfo as the spec's snake_case JSON. */
export function pathInfoToWire(p: PathInfo): Record<string, unknown> {
  const wire: Record<string, unknown> = { exists: p.exists }
  if (p.isDir !== undefined) wire.is_dir = p.isDir
  if (p.isFile !== undefined) wire.is_file = p.isFile
  if (p.isSymlink !== undefined) wire.is_symlink = p.isSymlink
  if (p.linkTarget !== undefined) wire.link_target = p.linkTarget
  if (p.mode !== undefined) wire.mode = p.mode
  if (p.size !== undefined) wire.size = p.size
  if (p.error !== undefined) wire.error = p.error
  return wire
}

export interface AgentErrorReply {
  code: string
  message: string
}

export function decodeError(payload: Buffer): AgentErrorReply {
  const v = TlvView.decode(payload)
  return { code: v.str('code') ?? 'unknown', message: v.str('message') ?? '' }
}

export const encodeHello = (nonce: string) => encodeTlv([['nonce', nonce]])
export const encodeSignal = (signal: number) => encodeTlv([['signal', signal]])
export const encodeResize = (rows: number, cols: number) => encodeTlv([
  ['rows', rows],
  ['cols', cols],
])
