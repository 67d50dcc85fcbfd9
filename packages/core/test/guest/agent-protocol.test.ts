import { describe, expect, it } from 'vitest'
import {
  decodeError,
  decodeExit,
  decodeStatResult,
  encodeExecRequest,
  encodeFrame,
  encodeStatRequest,
  FRAME_MAX_PAYLOAD,
  FrameDecoder,
  FrameType,
  pathInfoToWire,
} from '../../src/guest/agent-protocol.js'
import { decodeTlv, encodeTlv, TlvView } from '../../src/guest/tlv.js'

describe('frames', () => {
  it('encodes length, type and stream id little-endian before the payload', () => {
    expect(encodeFrame(FrameType.Stdin, 0x01020304, Buffer.from('hi')).toString('hex')).toBe('07000000' + '04' + '04030201' + '6869')
    expect(encodeFrame(FrameType.Ping, 7).toString('hex')).toBe('05000000' + '02' + '07000000')
  })

  it('decodes frames split at every byte boundary and several in one chunk', () => {
    const wire = Buffer.concat([
      encodeFrame(FrameType.Stdout, 1, Buffer.from('hello')),
      encodeFrame(FrameType.Exit, 1, encodeTlv([['code', 0]])),
      encodeFrame(FrameType.Pong, 9),
    ])
    for (let cut = 0; cut <= wire.length; cut++) {
      const d = new FrameDecoder()
      const frames = [...d.push(wire.subarray(0, cut)), ...d.push(wire.subarray(cut))]
      expect(frames.map((f) => [f.type, f.id, f.payload.toString('hex')])).toEqual([
        [FrameType.Stdout, 1, Buffer.from('hello').toString('hex')],
        [FrameType.Exit, 1, encodeTlv([['code', 0]]).toString('hex')],
        [FrameType.Pong, 9, ''],
      ])
      expect(d.pending).toBe(0)
    }
  })

  it('keeps an incomplete frame pending', () => {
    const d = new FrameDecoder()
    expect(d.push(encodeFrame(FrameType.Stdout, 1, Buffer.alloc(100)).subarray(0, 50))).toEqual([])
    expect(d.pending).toBe(50)
  })

  it.each([
    ['a length below the header', Buffer.from('04000000' + '02' + '00000000', 'hex')],
    ['a payload above the limit', (() => {
      const b = Buffer.alloc(9)
      b.writeUInt32LE(FRAME_MAX_PAYLOAD + 6, 0)
      return b
    })()],
    ['text from the wrong peer', Buffer.from('HTTP/1.1 200 OK\r\n\r\n')],
  ])('rejects %s as a protocol error', (_name, bytes) => {
    expect(() => new FrameDecoder().push(bytes)).toThrowError(expect.objectContaining({ code: 'agent_protocol' }))
  })

  it('refuses to encode a payload above the limit', () => {
    expect(() => encodeFrame(FrameType.Stdin, 1, Buffer.alloc(FRAME_MAX_PAYLOAD + 1))).toThrow(RangeError)
  })
})

describe('TLV records', () => {
  it('round-trips repeated keys in order and typed values', () => {
    const buf = encodeTlv([['argv', 'a'], ['n', 42], ['argv', 'b'], ['flag', true], ['raw', Buffer.from([0, 255])], ['neg', -3]])
    const v = TlvView.decode(buf)
    expect(v.all('argv')).toEqual(['a', 'b'])
    expect(v.int('n')).toBe(42)
    expect(v.int('neg')).toBe(-3)
    expect(v.bool('flag')).toBe(true)
    expect(v.raw('raw')).toEqual(Buffer.from([0, 255]))
    expect(v.str('missing')).toBeUndefined()
  })

  it('has the byte layout the C reader expects', () => {
    expect(encodeTlv([['k', 'vv']]).toString('hex')).toBe('0100' + '6b' + '02000000' + '7676')
  })

  it.each([1, 3, 8])('rejects a record truncated to %i bytes', (n) => {
    expect(() => decodeTlv(encodeTlv([['key', 'value']]).subarray(0, n))).toThrowError(expect.objectContaining({ code: 'agent_protocol' }))
  })

  it('rejects non-integer and non-boolean values where numbers and flags are expected', () => {
    expect(() => TlvView.decode(encodeTlv([['n', '1.5']])).int('n')).toThrow(/not an integer/)
    expect(() => TlvView.decode(encodeTlv([['b', 'yes']])).bool('b')).toThrow(/not a boolean/)
  })
})

describe('messages', () => {
  it('encodes an exec request with only the fields given', () => {
    const v = TlvView.decode(encodeExecRequest({ argv: ['sh', '-c', 'x'], env: { A: '1' }, cwd: '/tmp', user: 'app', tty: true, rows: 30, cols: 100, stdin: true, timeoutMs: 5000 }))
    expect(v.records.map((r) => [r.key, r.value.toString()])).toEqual([
      ['argv', 'sh'], ['argv', '-c'], ['argv', 'x'], ['env', 'A=1'], ['cwd', '/tmp'], ['user', 'app'],
      ['tty', '1'], ['rows', '30'], ['cols', '100'], ['stdin', '1'], ['timeout_ms', '5000'],
    ])
    expect(TlvView.decode(encodeExecRequest({ argv: ['true'] })).records.map((r) => r.key)).toEqual(['argv'])
  })

  it('decodes exits with and without a signal', () => {
    expect(decodeExit(encodeTlv([['code', 3], ['timed_out', false], ['message', 'exited with code 3']]))).toEqual({ exitCode: 3, timedOut: false, message: 'exited with code 3' })
    expect(decodeExit(encodeTlv([['code', 137], ['signal', 9], ['signal_name', 'SIGKILL'], ['timed_out', true], ['message', 'timed out after 5 ms']]))).toEqual({
      exitCode: 137, signal: 9, signalName: 'SIGKILL', timedOut: true, message: 'timed out after 5 ms',
    })
    expect(() => decodeExit(encodeTlv([['message', 'x']]))).toThrowError(expect.objectContaining({ code: 'agent_protocol' }))
  })

  it('decodes stat results into the spec PathInfo and its wire form', () => {
    const link = decodeStatResult(encodeTlv([['exists', true], ['is_dir', false], ['is_file', false], ['is_symlink', true], ['mode', 511], ['size', 7], ['link_target', 'busybox']]))
    expect(link).toEqual({ exists: true, isDir: false, isFile: false, isSymlink: true, linkTarget: 'busybox', mode: 511, size: 7 })
    expect(pathInfoToWire(link)).toEqual({ exists: true, is_dir: false, is_file: false, is_symlink: true, link_target: 'busybox', mode: 511, size: 7 })
    expect(decodeStatResult(encodeTlv([['exists', false]]))).toEqual({ exists: false })
    expect(decodeStatResult(encodeTlv([['exists', false], ['error', 'permission denied']]))).toEqual({ exists: false, error: 'permission denied' })
    expect(TlvView.decode(encodeStatRequest('/a b', true)).records.map((r) => [r.key, r.value.toString()])).toEqual([['path', '/a b'], ['follow_links', '1']])
  })

  it('decodes error replies', () => {
    expect(decodeError(encodeTlv([['code', 'bad_request'], ['message', 'nope']]))).toEqual({ code: 'bad_request', message: 'nope' })
  })
})
