/**
 * The embedded proxy's audit events through core's public API (src/egress.ts), against a real
 * proxy on loopback: policy changes are audit events, so registering a policy makes one.
 */
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { silentLogger, type Logger } from '@hypeman-ts/common'
import { createProxy, type AuditEvent, type EgressProxy } from '@hypeman-ts/egress-proxy'
import { EgressEvents } from '../../src/egress.js'
import { Hypeman } from '../../src/index.js'

let dir: string
let proxy: EgressProxy
const policy = { env: {}, credentials: {} }

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-egress-events-'))
  proxy = await createProxy({ stateDir: join(dir, 'proxy'), listen: '127.0.0.1:0', logger: silentLogger })
})
afterAll(async () => {
  await proxy?.destroy()
  await rm(dir, { recursive: true, force: true })
})

const listeners = () => proxy.audit.listenerCount('event')
const sources = (events: AuditEvent[]) => events.map((e) => `${e.type} ${e.source}`)

describe('hm.egress events', () => {
  it('an iterator gets the events from the moment it is made, in order, and lets go of the proxy on break', async () => {
    const hub = new EgressEvents(silentLogger)
    hub.attach(proxy)
    expect(listeners()).toBe(0)
    const it = hub.events()
    expect(listeners()).toBe(1)
    // Before the first next(): kept.
    proxy.policies.set('10.9.0.1', policy)
    proxy.policies.set('10.9.0.2', policy)
    const got: AuditEvent[] = []
    const done = (async () => {
      for await (const e of it) {
        got.push(e)
        if (got.length === 3) break
      }
    })()
    await new Promise((r) => setTimeout(r, 10))
    proxy.policies.delete('10.9.0.1')
    await done
    expect(sources(got)).toEqual(['policy_set 10.9.0.1', 'policy_set 10.9.0.2', 'policy_deleted 10.9.0.1'])
    expect(got[0]!.time).toMatch(/^\d{4}-\d\d-\d\dT/)
    expect(listeners()).toBe(0)
  })

  it('a consumer subscribed before the proxy exists gets its events, and one that throws does not starve the others', async () => {
    const errors: string[] = []
    const logger: Logger = { ...silentLogger, error: (msg) => errors.push(msg) }
    const hub = new EgressEvents(logger)
    const seen: string[] = []
    hub.subscribe(() => {
      throw new Error('consumer bug')
    })
    hub.subscribe((e) => seen.push(`${e.type} ${e.source}`))
    hub.attach(proxy)
    proxy.policies.set('10.9.0.3', policy)
    expect(seen).toEqual(['policy_set 10.9.0.3'])
    expect(errors).toEqual(['an egress audit consumer threw'])
    hub.close()
    expect(listeners()).toBe(0)
  })

  it('the signal and close() end an iteration after the events it holds', async () => {
    const hub = new EgressEvents(silentLogger)
    hub.attach(proxy)
    const ac = new AbortController()
    const bySignal = hub.events({ signal: ac.signal })
    const byClose = hub.events()
    proxy.policies.set('10.9.0.4', policy)
    ac.abort()
    proxy.policies.set('10.9.0.5', policy)
    const drained: AuditEvent[] = []
    for await (const e of bySignal) drained.push(e)
    expect(sources(drained)).toEqual(['policy_set 10.9.0.4'])
    const pending = byClose.next()
    await expect(pending).resolves.toMatchObject({ value: { type: 'policy_set', source: '10.9.0.4' }, done: false })
    await expect(byClose.next()).resolves.toMatchObject({ value: { source: '10.9.0.5' } })
    const waiting = byClose.next()
    hub.close()
    await expect(waiting).resolves.toEqual({ value: undefined, done: true })
    expect(listeners()).toBe(0)
    // Made after close: ends at once.
    await expect(hub.events().next()).resolves.toEqual({ value: undefined, done: true })
  })

  it('a reader that falls behind gets what was kept, then an events_overflow error', async () => {
    const hub = new EgressEvents(silentLogger)
    hub.attach(proxy)
    const it = hub.events({ maxBuffered: 2 })
    for (const n of [6, 7, 8]) proxy.policies.set(`10.9.0.${n}`, policy)
    await expect(it.next()).resolves.toMatchObject({ value: { source: '10.9.0.6' } })
    await expect(it.next()).resolves.toMatchObject({ value: { source: '10.9.0.7' } })
    await expect(it.next()).rejects.toMatchObject({ code: 'events_overflow', field: 'maxBuffered' })
    await expect(it.next()).resolves.toEqual({ value: undefined, done: true })
    expect(listeners()).toBe(0)
    expect(() => hub.events({ maxBuffered: 0 })).toThrow(expect.objectContaining({ code: 'invalid_input', field: 'maxBuffered' }))
  })
})

describe('Hypeman.open egress options', () => {
  it.each([
    [{ allowPorts: [443, 70000] }, 'egress.allowPorts[1]'],
    [{ allowPorts: '443' }, 'egress.allowPorts'],
    [{ allowHostServices: ['198.18.0.1'] }, 'egress.allowHostServices[0]'],
    [{ onAudit: 'log' }, 'egress.onAudit'],
  ])('refuses %j naming the field, before touching the data directory', async (egress, field) => {
    const dataDir = join(dir, `data-${field}`)
    await expect(Hypeman.open({ dataDir, network: false, egress: egress as never })).rejects.toMatchObject({ code: 'invalid_input', field })
    expect(existsSync(dataDir)).toBe(false)
  })
})
