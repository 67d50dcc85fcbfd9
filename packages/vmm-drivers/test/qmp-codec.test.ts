import { describe, expect, it } from 'vitest'
import { classifyQmp, encodeQmpCommand, QmpDecoder } from '../src/testing.js'

const greeting =
  '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}\r\n'

describe('QmpDecoder', () => {
  it('classifies every kind of message QEMU sends', () => {
    const d = new QmpDecoder()
    const msgs = d.push(
      greeting +
        '{"return": {}, "id": "hm-1"}\r\n' +
        '{"id": "hm-2", "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}\r\n' +
        '{"timestamp": {"seconds": 1700000000, "microseconds": 250000}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}\r\n' +
        '{"timestamp": {"seconds": 1700000001, "microseconds": 0}, "event": "STOP"}\r\n',
    )
    expect(msgs).toEqual([
      {
        type: 'greeting',
        version: { qemu: { micro: 22, minor: 2, major: 7 }, package: 'Debian 1:7.2+dfsg-7+deb12u18+b3' },
        capabilities: ['oob'],
      },
      { type: 'return', id: 'hm-1', value: {} },
      { type: 'error', id: 'hm-2', errorClass: 'CommandNotFound', desc: 'The command nope has not been found' },
      { type: 'event', name: 'SHUTDOWN', data: { guest: true, reason: 'guest-shutdown' }, timestampMs: 1700000000250 },
      { type: 'event', name: 'STOP', data: {}, timestampMs: 1700000001000 },
    ])
  })

  it('reassembles messages split anywhere, including inside a UTF-8 character', () => {
    const line = Buffer.from('{"return": {"name": "gäst ✓"}, "id": 7}\r\n')
    for (let cut = 1; cut < line.length; cut++) {
      const d = new QmpDecoder()
      expect(d.push(line.subarray(0, cut))).toEqual([])
      expect(d.push(line.subarray(cut))).toEqual([{ type: 'return', id: 7, value: { name: 'gäst ✓' } }])
    }
  })

  it('keeps a partial line pending until its newline arrives', () => {
    const d = new QmpDecoder()
    expect(d.push('{"return": [1, 2')).toEqual([])
    expect(d.pending).toBe('{"return": [1, 2')
    expect(d.push(']}\n\n')).toEqual([{ type: 'return', id: undefined, value: [1, 2] }])
    expect(d.pending).toBe('')
  })

  it('returns a null return value as is', () => {
    expect(new QmpDecoder().push('{"return": null, "id": "a"}\n')).toEqual([{ type: 'return', id: 'a', value: null }])
  })

  it.each([
    ['not JSON', 'hello\n', 'not JSON'],
    ['an array', '[1]\n', 'not an object'],
    ['an unknown object', '{"foo": 1}\n', 'unrecognised'],
  ])('rejects %s with control_protocol', (_name, input, message) => {
    expect(() => new QmpDecoder().push(input)).toThrow(expect.objectContaining({ code: 'control_protocol', message: expect.stringContaining(message) }))
  })

  it('classifyQmp defaults a missing error class', () => {
    expect(classifyQmp({ error: { desc: 'x' } })).toEqual({ type: 'error', id: undefined, errorClass: 'GenericError', desc: 'x' })
  })
})

describe('encodeQmpCommand', () => {
  it.each([
    [['qmp_capabilities'], '{"execute":"qmp_capabilities"}\n'],
    [['query-status', undefined, 'hm-1'], '{"execute":"query-status","id":"hm-1"}\n'],
    [['stop', {}, 3], '{"execute":"stop","id":3}\n'],
    [['migrate', { uri: "exec:cat > '/a b'" }, 'hm-9'], '{"execute":"migrate","arguments":{"uri":"exec:cat > \'/a b\'"},"id":"hm-9"}\n'],
  ] as const)('%j', (args, expected) => {
    expect(encodeQmpCommand(...(args as unknown as Parameters<typeof encodeQmpCommand>))).toBe(expected)
  })

  it('round-trips through the decoder as one line', () => {
    const line = encodeQmpCommand('x', { a: 'line\nbreak' }, 'id')
    expect(line.split('\n').length).toBe(2)
    expect(JSON.parse(line)).toEqual({ execute: 'x', arguments: { a: 'line\nbreak' }, id: 'id' })
  })
})
