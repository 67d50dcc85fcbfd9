/**
 * An instance's place on the host network and in the egress proxy: attach (address, TAP, rules,
 * shaping through netsetup), the credential policy keyed by the instance's address, and their
 * release. The real credential values stay on the host: the guest's env never holds them.
 */
import { NotSupportedError } from '@hypeman-ts/common'
import type { NetworkAttachment } from '@hypeman-ts/netsetup'
import type { GuestConfig } from '../guest/index.js'
import type { InstanceContext } from './context.js'
import type { InstanceRecord } from './record.js'

/** Attaches the instance to the host network (idempotent: a second attach repairs). */
export async function attachNetwork(cx: InstanceContext, record: InstanceRecord, signal?: AbortSignal): Promise<NetworkAttachment> {
  const net = await cx.opts.network!.get()
  const n = record.spec.network
  const egress = cx.opts.egress
  const att = await net.attach(record.id, {
    vcpus: record.spec.vcpus,
    ...(n.downloadBitsPerSec !== null ? { bandwidthDownloadBitsPerSec: n.downloadBitsPerSec } : {}),
    ...(n.uploadBitsPerSec !== null ? { bandwidthUploadBitsPerSec: n.uploadBitsPerSec } : {}),
    egress:
      n.egress.enabled && egress
        ? { enabled: true, mode: n.egress.mode, proxy: { httpPort: egress.ports.transparent, httpsPort: egress.ports.transparent, explicitPort: egress.ports.explicit } }
        : { enabled: false },
    ...(signal ? { signal } : {}),
  })
  record.network = {
    tap: att.tap,
    mac: att.mac,
    ip: att.ip,
    prefixLength: att.prefixLength,
    gateway: att.gateway,
    dns: att.dns,
    netns: att.netns,
    downloadBitsPerSec: att.bandwidthDownloadBitsPerSec,
    uploadBitsPerSec: att.bandwidthUploadBitsPerSec,
  }
  await cx.files.write(record)
  await cx.files.log(record.id, `network: ${att.ip}/${att.prefixLength} via ${att.gateway} on ${att.tap}`)
  return att
}

/**
 * Network and egress policy again for a start or restore: the address is the instance's own
 * (so are the placeholders derived from it), but the proxy keeps policies in memory only, and
 * this process may not be the one that created the instance.
 */
export async function reattachNetwork(cx: InstanceContext, record: InstanceRecord, signal?: AbortSignal): Promise<void> {
  if (!record.network) return
  await attachNetwork(cx, record, signal)
  if (record.spec.network.egress.enabled) await registerEgress(cx, record)
}

/** The instance's policy in the proxy, keyed by its address: the real values never reach the guest. */
export async function registerEgress(cx: InstanceContext, record: InstanceRecord): Promise<{ placeholders: Record<string, string> }> {
  if (!cx.opts.egress) throw new NotSupportedError('this manager has no egress proxy', { field: 'network.egress.enabled' })
  const proxy = await cx.opts.egress.get()
  const sources = new Set(Object.values(record.spec.credentials).map((c) => c.source.env))
  const env = Object.fromEntries(Object.entries(record.spec.env).filter(([k]) => sources.has(k)))
  return proxy.policies.set(record.network!.ip, { env, credentials: record.spec.credentials })
}

/**
 * Removes the instance's policy from the proxy (before its address can go to anyone else).
 * Policies live in the proxy's memory: a proxy this process never started holds none to remove.
 */
export async function unregisterEgress(cx: InstanceContext, record: InstanceRecord): Promise<void> {
  if (!record.network || !cx.opts.egress) return
  const proxy = await cx.opts.egress.running()?.catch(() => undefined)
  proxy?.policies.delete(record.network.ip)
}

/** Spare TAPs from the host network, for warm VMMs of shapes with a NIC (templates/warm-pool.ts); undefined without a network. */
export function spareTaps(cx: InstanceContext): { add(): Promise<string>; remove(tap: string): Promise<void> } | undefined {
  const network = cx.opts.network
  return network && { add: async () => (await network.get()).addSpareTap(), remove: async (tap) => (await network.get()).removeSpareTap(tap) }
}

/** Makes a warm VMM's spare TAP the instance's port (it is attached already): its VMM then carries the instance's traffic. */
export async function adoptSpareTap(cx: InstanceContext, record: InstanceRecord, spare: string): Promise<void> {
  await (await cx.opts.network!.get()).adoptTap(record.id, spare)
}

/** Gives the instance's address, TAP, rules and shaping back (idempotent). */
export async function detachNetwork(cx: InstanceContext, record: InstanceRecord): Promise<void> {
  if (!cx.opts.network) return
  await (await cx.opts.network.get()).detach(record.id)
}

/** The guest's environment: the requested env without the host-only real values of credentials. */
export function guestEnv(record: InstanceRecord): Record<string, string> {
  const hostOnly = new Set(Object.values(record.spec.credentials).map((c) => c.source.env))
  return Object.fromEntries(Object.entries(record.spec.env).filter(([k]) => !hostOnly.has(k)))
}

/** What the guest's init needs to configure its NIC. */
export function guestNetwork(att: NetworkAttachment): NonNullable<GuestConfig['network']> {
  return { mac: att.mac, address: att.ip, prefixLength: att.prefixLength, gateway: att.gateway, dns: att.dns }
}
