/** The pure parts between the wire and core: queries, field names, the exec and cp requests, cp's data frames, the ambiguous-prefix answer. */
import { describe, expect, it } from 'vitest'
import { HypemanError } from '@hypeman-ts/common'
import { InstanceLookupError } from '@hypeman-ts/core'
import { toWireError, wireField } from '../src/errors.js'
import { parseQuery } from '../src/query.js'
import { dataFrames, parseCpRequest } from '../src/routes/cp.js'
import { parseExecRequest } from '../src/routes/exec.js'
import { createImageFromWire, createInstanceFromWire } from '../src/wire.js'

describe('parseQuery', () => {
  it('reads deepObject maps, encoded brackets included, next to plain values', () => {
    expect({ ...parseQuery('tags%5Bteam%5D=backend&tags[env]=staging&state=Running') }).toEqual({
      tags: { team: 'backend', env: 'staging' },
      state: 'Running',
    })
  })
  it('makes a repeated plain key an array and keeps a scalar that collides with a map', () => {
    expect({ ...parseQuery('a=1&a=2&a=3') }).toEqual({ a: ['1', '2', '3'] })
    expect({ ...parseQuery('tags=x&tags[a]=b') }).toEqual({ tags: 'x' })
  })
  it('cannot be made to write to Object.prototype', () => {
    parseQuery('__proto__[polluted]=yes&constructor[prototype][x]=1')
    expect(({} as Record<string, unknown>).polluted).toBeUndefined()
  })
})

describe('field names and errors on the wire', () => {
  it('spells core fields as the client did, leaving user map keys alone', () => {
    expect(wireField('network.bandwidthUpload')).toBe('network.bandwidth_upload')
    expect(wireField('env.myVar')).toBe('env.myVar')
    expect(wireField('overlaySize')).toBe('overlay_size')
  })
  it('maps a wrong-state conflict to invalid_state, 409, not to be retried', () => {
    const w = toWireError(new HypemanError('conflict', 'instance is Running', { field: 'state' }))
    expect(w).toEqual({ status: 409, body: { code: 'invalid_state', message: 'instance is Running', details: [{ code: 'field', message: 'state' }] }, headers: { 'x-should-retry': 'false' } })
  })
  it('hides the message of errors that are not ours', () => {
    expect(toWireError(new Error('/secret/path exploded'))).toMatchObject({ status: 500, body: { code: 'internal_error', message: 'internal error' } })
  })
})

describe('createInstanceFromWire', () => {
  const open = { allowLocalLayouts: true }
  it('renames snake_case fields and refuses those core cannot honour', () => {
    expect(createInstanceFromWire({ name: 'a', image: 'b', overlay_size: '1GB', network: { enabled: false, bandwidth_upload: '1Mbps' } }, open)).toEqual({
      name: 'a', image: 'b', overlaySize: '1GB', skipKernelHeaders: false, network: { enabled: false, bandwidthUpload: '1Mbps' },
    })
    expect(() => createInstanceFromWire({ name: 'a', image: 'b', restart_policy: { policy: 'always' } }, open)).toThrow(expect.objectContaining({ code: 'not_supported', field: 'restart_policy' }))
    expect(() => createInstanceFromWire({ name: 'a', image: 'b', hypervisor: 'qemu-microvm' }, open)).toThrow(expect.objectContaining({ code: 'not_supported', field: 'hypervisor' }))
  })
  it("gives skip_kernel_headers the spec's default (false) when omitted, whatever the manager's default", () => {
    expect(createInstanceFromWire({ name: 'a', image: 'b' }, open).skipKernelHeaders).toBe(false)
    expect(createInstanceFromWire({ name: 'a', image: 'b', skip_kernel_headers: true }, open).skipKernelHeaders).toBe(true)
  })
  it('refuses local OCI layouts unless the server allows them', () => {
    const layout = { name: 'a', image: 'oci:/etc' }
    expect(() => createInstanceFromWire(layout, { allowLocalLayouts: false })).toThrow(expect.objectContaining({ code: 'invalid_input', field: 'image' }))
    expect(() => createImageFromWire({ name: 'oci:/etc:x' }, { allowLocalLayouts: false })).toThrow(expect.objectContaining({ code: 'invalid_input', field: 'name' }))
    expect(createInstanceFromWire(layout, open).image).toBe('oci:/etc')
  })
})

describe('parseExecRequest', () => {
  it('defaults to /bin/sh and converts seconds', () => {
    expect(parseExecRequest('{}')).toEqual({ argv: ['/bin/sh'], tty: false })
    expect(parseExecRequest('{"command":["echo","hi"],"tty":true,"timeout":5,"wait_for_agent":2,"env":{"A":"1"},"cwd":"/tmp"}')).toEqual({
      argv: ['echo', 'hi'], tty: true, timeoutMs: 5000, connectTimeoutMs: 2000, env: { A: '1' }, cwd: '/tmp',
    })
  })
  it.each([
    ['not JSON', 'echo hi', 'request'],
    ['an array', '[]', 'request'],
    ['a command of numbers', '{"command":[1]}', 'command'],
    ['a string tty', '{"tty":"yes"}', 'tty'],
    ['a negative timeout', '{"timeout":-1}', 'timeout'],
    ['env with a number', '{"env":{"A":1}}', 'env'],
  ])('refuses %s naming the field', (_what, text, field) => {
    expect(() => parseExecRequest(text)).toThrow(expect.objectContaining({ code: 'invalid_input', field }))
  })
})

describe("an ambiguous id prefix (core's InstanceLookupError)", () => {
  it('is a 409 ambiguous naming the id', () => {
    const wire = toWireError(new InstanceLookupError('ambiguous', '"abc" is a prefix of 2 instance ids', { field: 'id' }))
    expect(wire).toMatchObject({ status: 409, body: { code: 'ambiguous', details: [{ code: 'field', message: 'id' }] }, headers: { 'x-should-retry': 'false' } })
  })
})

describe('the cp request (first WebSocket message)', () => {
  it('reads what the SDK sends, 0 and absent modes meaning the default', () => {
    expect(parseCpRequest('{"direction":"to","guest_path":"/a","is_dir":false,"mode":420}')).toEqual({ direction: 'to', guestPath: '/a', isDir: false, followLinks: false, mode: 0o644 })
    expect(parseCpRequest('{"direction":"from","guest_path":"/a","follow_links":true}')).toEqual({ direction: 'from', guestPath: '/a', isDir: false, followLinks: true })
    expect(parseCpRequest('{"direction":"to","guest_path":"/d","is_dir":true,"mode":0}')).toEqual({ direction: 'to', guestPath: '/d', isDir: true, followLinks: false })
  })
  it.each([
    ['not JSON', 'x', 'request'],
    ['an array', '[]', 'request'],
    ['a wrong direction', '{"direction":"both","guest_path":"/a"}', 'direction'],
    ['no path', '{"direction":"to"}', 'guest_path'],
    ['a string flag', '{"direction":"to","guest_path":"/a","is_dir":"yes"}', 'is_dir'],
    ['a negative mode', '{"direction":"to","guest_path":"/a","mode":-1}', 'mode'],
  ])('refuses %s naming the field', (_what, text, field) => {
    expect(() => parseCpRequest(text)).toThrow(expect.objectContaining({ code: 'invalid_input', field }))
  })
  it('refuses ownership (archive mode) as not supported', () => {
    expect(() => parseCpRequest('{"direction":"to","guest_path":"/a","uid":1000}')).toThrow(expect.objectContaining({ code: 'not_supported', field: 'uid' }))
  })
})

describe('cp data frames', () => {
  // The SDK JSON-parses any message that starts with { or [, binary or not.
  const parses = (b: Buffer) => {
    try {
      JSON.parse(b.toString())
      return true
    } catch {
      return false
    }
  }
  it('splits file bytes that would parse as JSON so that no frame does, keeping the bytes', () => {
    for (const text of ['{"type":"end","final":true}', '[1,2]', '{}', '[[]]', '{"a":1}\n', '[["x"]]']) {
      const frames = dataFrames(Buffer.from(text))
      expect(Buffer.concat(frames).toString()).toBe(text)
      expect(frames.some(parses), text).toBe(false)
    }
  })
  it('leaves other bytes whole', () => {
    for (const text of ['hello', '{not json', '"quoted"', '1234']) expect(dataFrames(Buffer.from(text))).toHaveLength(1)
  })
})
