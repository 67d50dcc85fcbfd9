/**
 * Links (bridge, TAP or veth, ifb) as data: what `ip -j -d link show` says, reduced to what we
 * check, and pure planners that turn "what is there" plus "what should be there" into `ip -batch`
 * lines. Planning from the current state is what makes attach and detach idempotent: a second
 * run emits nothing, a half-finished one emits only the rest.
 */
import { parseLinkName } from './names.js'
import type { GuestDevice } from './options.js'

export interface LinkState {
  name: string
  /** `tap`, `tun`, `veth`, `ifb`, `bridge` ..., or undefined for a plain device. */
  kind?: string
  master?: string
  alias?: string
  up: boolean
  mac?: string
  /** Bridge port flag `isolated`, when the link is a bridge port. */
  isolated?: boolean
  txqlen?: number
}

interface IpLinkJson {
  ifname: string
  flags?: string[]
  master?: string
  ifalias?: string
  address?: string
  txqlen?: number
  linkinfo?: {
    info_kind?: string
    info_data?: { type?: string }
    info_slave_kind?: string
    info_slave_data?: { isolated?: boolean }
  }
}

/** Reduces `ip -j -d link show` output. */
export function parseLinks(json: unknown): LinkState[] {
  if (!Array.isArray(json)) return []
  return (json as IpLinkJson[]).map((l) => {
    const info = l.linkinfo
    const kind = info?.info_kind === 'tun' ? (info.info_data?.type ?? 'tun') : info?.info_kind
    const state: LinkState = { name: l.ifname, up: (l.flags ?? []).includes('UP') }
    if (kind !== undefined) state.kind = kind
    if (l.master !== undefined) state.master = l.master
    if (l.ifalias !== undefined) state.alias = l.ifalias
    if (l.address !== undefined) state.mac = l.address
    if (l.txqlen !== undefined) state.txqlen = l.txqlen
    if (info?.info_slave_kind === 'bridge') state.isolated = info.info_slave_data?.isolated === true
    return state
  })
}

export interface GuestLinksSpec {
  device: GuestDevice
  tap: string
  ifb: string
  peer: string
  /** The guest's MAC: given to the veth's guest end (a VMM sets it on its own NIC). */
  mac: string
  alias: string
  bridge: string
  isolate: boolean
}

/** TAP queue and ifb queue: the ifb default (32) drops bursts that htb would have paced. */
export const TXQUEUELEN = 1000

/**
 * `ip -batch` lines that make the guest's links exist as specified. The port is enslaved and
 * isolated before it goes up, so no frame crosses the bridge from an unconfigured port.
 */
export function planGuestLinks(current: ReadonlyMap<string, LinkState>, spec: GuestLinksSpec): string[] {
  const lines: string[] = []
  const tap = current.get(spec.tap)
  const wantKind = spec.device === 'tap' ? 'tap' : 'veth'
  let fresh = false
  if (tap && tap.kind !== wantKind) {
    lines.push(`link del dev ${spec.tap}`)
  }
  if (!tap || tap.kind !== wantKind) {
    fresh = true
    if (spec.device === 'tap') lines.push(`tuntap add dev ${spec.tap} mode tap vnet_hdr`)
    else lines.push(`link add ${spec.tap} txqueuelen ${TXQUEUELEN} type veth peer name ${spec.peer} address ${spec.mac}`)
  }
  const t = fresh ? undefined : tap
  if (t?.alias !== spec.alias) lines.push(`link set dev ${spec.tap} alias ${spec.alias}`)
  if (t?.master !== spec.bridge) lines.push(`link set dev ${spec.tap} master ${spec.bridge}`)
  if (t?.isolated !== spec.isolate) lines.push(`link set dev ${spec.tap} type bridge_slave isolated ${spec.isolate ? 'on' : 'off'}`)
  if (!t?.up) lines.push(`link set dev ${spec.tap} up`)

  const ifb = current.get(spec.ifb)
  if (ifb && ifb.kind !== 'ifb') lines.push(`link del dev ${spec.ifb}`)
  const i = ifb?.kind === 'ifb' ? ifb : undefined
  if (!i) lines.push(`link add ${spec.ifb} txqueuelen ${TXQUEUELEN} type ifb`)
  if (i?.alias !== spec.alias) lines.push(`link set dev ${spec.ifb} alias ${spec.alias}`)
  if (!i?.up) lines.push(`link set dev ${spec.ifb} up`)
  return lines
}

/** Lines that delete whichever of `names` exist (a veth's peer goes with its host end). */
export function planDeleteLinks(current: ReadonlyMap<string, LinkState>, names: readonly string[]): string[] {
  const lines: string[] = []
  const gone = new Set<string>()
  for (const name of names) {
    const link = current.get(name)
    if (!link || gone.has(name)) continue
    lines.push(`link del dev ${name}`)
    gone.add(name)
    // Deleting one end of a veth deletes the other: a second `link del` would fail.
    if (link.kind === 'veth') {
      const p = parseLinkName(name)
      if (p) for (const other of ['t', 'p']) gone.add(`hm${other}${p.short}`)
    }
  }
  return lines
}

/**
 * Our links (by name) that belong to no allocation. A link of ours that is enslaved to another
 * bridge, or whose alias names another bridge, is another network's (a second bridge in the same
 * namespace) and is left alone.
 */
export function orphanLinks(links: readonly LinkState[], keepShorts: ReadonlySet<string>, bridge: string): string[] {
  return links
    .filter((l) => {
      const p = parseLinkName(l.name)
      if (!p || keepShorts.has(p.short)) return false
      if (l.master !== undefined && l.master !== bridge) return false
      if (l.alias?.startsWith('hypeman:') && !l.alias.startsWith(`hypeman:${bridge}:`)) return false
      return true
    })
    .map((l) => l.name)
}

export function linkMap(links: readonly LinkState[]): Map<string, LinkState> {
  return new Map(links.map((l) => [l.name, l]))
}
