/**
 * A host network: one bridge with its subnet, our two nftables tables, and per instance an
 * address, a MAC, a port on the bridge (TAP or veth) with an ifb for upload shaping.
 *
 * Every operation runs under the network's lock and follows the same order: change the
 * allocation file, render the nftables tables from it (enforcement is in place before a port can
 * carry a frame), then make links and tc match it. A crash at any point leaves either an
 * allocation whose kernel objects are incomplete, or kernel objects (by name ours) that no
 * allocation names; `reconcile` removes both for instances that are not known any more.
 *
 * (Over 500 lines on purpose: every operation here shares that lock-and-order discipline, and
 * keeping them side by side is what lets a reader check it.)
 */
import { access } from 'node:fs/promises'
import {
  ConflictError,
  NotFoundError,
  NotSupportedError,
  ValidationError,
  errorMessage,
  isHypemanError,
  runSteps,
  silentLogger,
  throwIfAborted,
  type Logger,
  type Step,
  type StepsFailedError,
} from '@hypeman-ts/common'
import { macForAddress, nextFreeAddress } from './addresses.js'
import { defaultRate } from './bandwidth.js'
import { NetworkError } from './errors.js'
import { netnsPath, NetnsRunner } from './exec.js'
import { linkMap, orphanLinks, parseLinks, planDeleteLinks, planGuestLinks, type LinkState } from './links.js'
import { checkInstanceId, linkAlias, linkName, linkNames, parseLinkName, spareAlias, spareTapName } from './names.js'
import { buildRuleset, buildTeardown } from './nft.js'
import {
  resolveAttachOptions,
  resolveNetworkOptions,
  type AttachOptions,
  type AttachStep,
  type EgressMode,
  type GuestDevice,
  type HostNetworkOptions,
  type NetworkConfig,
} from './options.js'
import { hostResolvers } from './resolvers.js'
import { AllocationStore, type Allocation, type NetworkSettings, type NetworkState } from './state.js'
import { parseQdiscs, planShaping } from './tc.js'

/** What a guest needs to know (config disk) and what the host made for it. */
export interface NetworkAttachment {
  instanceId: string
  bridge: string
  /** The namespace the bridge and the port live in (and the VMM must run in); null for the host's own. */
  netns: string | null
  device: GuestDevice
  /** The guest's port on the bridge: the TAP a VMM opens by name (or a veth's host end). */
  tap: string
  /** The ifb that carries the guest's upload through its shaper. */
  ifb: string
  /** veth only: the guest end, left in the network's namespace for the caller to move into the guest's. */
  peer?: string
  mac: string
  ip: string
  prefixLength: number
  netmask: string
  gateway: string
  dns: string[]
  bandwidthDownloadBitsPerSec: number
  bandwidthUploadBitsPerSec: number
  egress:
    | { enabled: false }
    | { enabled: true; mode: EgressMode; proxy: { address: string; httpPort: number; httpsPort: number; explicitPort?: number } }
}

export interface ReconcileResult {
  /** Instances whose allocation was removed because they are not known. */
  removedInstances: string[]
  /** Links of ours that no allocation named. */
  removedLinks: string[]
  /** Known instances whose port or ifb is missing (a host reboot, or a crash mid-attach): `attach` again repairs them. */
  incomplete: string[]
}

/** What of ours the kernel holds now (for tests, and for an operator asking "is anything left?"). */
export interface NetworkInventory {
  allocations: string[]
  /** Links named like ours (`hm[tip]` + 12 hex digits). */
  links: string[]
  /** Addresses on the bridge (only the gateway, normally). */
  bridgeAddresses: string[]
  /** Non-default qdiscs (htb, ingress, tbf) on any link of the namespace. */
  qdiscs: { dev: string; kind: string }[]
  /** Our tables and the per-guest contents of their sets and the NAT chain; null when the table does not exist. */
  nft: {
    bridge: { ports: string[]; guests: string[] } | null
    inet: { mediated: string[]; modeAll: string[]; proxyEndpoints: string[]; dnatRules: number } | null
  }
}

const nowIso = (): string => new Date().toISOString()

export class HostNetwork implements AsyncDisposable {
  readonly config: NetworkConfig & { dns: string[] }
  readonly #store: AllocationStore
  readonly #sh: NetnsRunner
  readonly #log: Logger
  #closed = false

  private constructor(config: NetworkConfig & { dns: string[] }, logger: Logger) {
    this.config = config
    this.#store = new AllocationStore(config.stateDir)
    this.#sh = new NetnsRunner(config.netns)
    this.#log = logger
  }

  /**
   * Checks the options, then makes sure the bridge (with the gateway address and a fixed MAC),
   * IPv4 forwarding and our tables exist. Idempotent: opening an existing network changes nothing
   * but what is missing.
   */
  static async open(opts: HostNetworkOptions): Promise<HostNetwork> {
    const resolved = resolveNetworkOptions(opts)
    if (process.getuid?.() !== 0) throw new NotSupportedError('netsetup needs root (CAP_NET_ADMIN) to change host networking')
    if (resolved.netns !== undefined) {
      await access(netnsPath(resolved.netns)).catch(() => {
        throw new ValidationError('netns', `no network namespace named ${resolved.netns} (${netnsPath(resolved.netns as string)})`)
      })
    }
    const dns = resolved.dns ?? (await hostResolvers(resolved.netns))
    const net = new HostNetwork({ ...resolved, dns }, opts.logger ?? silentLogger)
    await net.#store.init()
    await net.#store.withLock(() => net.#setUp())
    return net
  }

  async #setUp(): Promise<void> {
    const c = this.config
    const state = await this.#readState()
    const live = Object.keys(state.allocations).length > 0
    if (live && state.subnet !== c.subnet.cidr) {
      throw new ConflictError(`the network in ${c.stateDir} has ${Object.keys(state.allocations).length} addresses handed out from ${state.subnet}; it cannot move to ${c.subnet.cidr}`, { field: 'subnet' })
    }
    if (live && state.bridge !== c.bridge) {
      throw new ConflictError(`the network in ${c.stateDir} uses bridge ${state.bridge}, not ${c.bridge}`, { field: 'bridge' })
    }
    const links = linkMap(await this.#links())
    if (c.uplink !== undefined && !links.has(c.uplink)) throw new ValidationError('uplink', `no interface named ${c.uplink}${c.netns ? ` in ${c.netns}` : ''}`)
    const br = links.get(c.bridge)
    if (br && br.kind !== 'bridge') throw new ConflictError(`${c.bridge} exists and is not a bridge (${br.kind ?? 'device'})`, { field: 'bridge' })
    // A renamed table or bridge (allowed while nothing is handed out): the old ones are ours to remove.
    if (state.settings && state.settings.table !== c.table) await this.#step('rules', () => this.#sh.nft(buildTeardown(state.settings!.table), 'rules'))
    if (state.bridge !== c.bridge && links.get(state.bridge)?.kind === 'bridge') await this.#sh.ipBatch([`link del dev ${state.bridge}`], 'bridge')
    await this.#step('bridge', async () => {
      const lines: string[] = []
      // A fixed MAC: a bridge otherwise takes its lowest port's, and guests' ARP entries for the gateway go stale.
      if (!br) lines.push(`link add ${c.bridge} address ${macForAddress(c.subnet.gateway)} type bridge`)
      const addrs = br ? await this.#addresses(c.bridge) : []
      if (!addrs.includes(`${c.subnet.gateway}/${c.subnet.prefixLength}`)) lines.push(`addr add ${c.subnet.gateway}/${c.subnet.prefixLength} dev ${c.bridge}`)
      if (!br?.up) lines.push(`link set dev ${c.bridge} up`)
      await this.#sh.ipBatch(lines, 'bridge')
    })
    await this.#step('sysctl', () => this.#sh.sysctl('net.ipv4.ip_forward', '1'))
    state.bridge = c.bridge
    state.subnet = c.subnet.cidr
    state.settings = { table: c.table, dns: [...c.dns], uplink: c.uplink ?? null, isolate: c.isolate }
    await this.#store.write(state)
    await this.#applyRules(state)
    // Ports follow a changed `isolate` at once; everything else of theirs is unchanged.
    const ports = Object.values(state.allocations).filter((a) => links.get(linkName('tap', a.short))?.isolated === !c.isolate)
    await this.#step('links', () =>
      this.#sh.ipBatch(ports.map((a) => `link set dev ${linkName('tap', a.short)} type bridge_slave isolated ${c.isolate ? 'on' : 'off'}`), 'links'),
    )
  }

  // ------------------------------------------------------------------------------ per instance

  /**
   * Gives the instance its address, MAC, port, shaping and egress rules. Idempotent: attaching an
   * attached instance keeps its address and MAC, applies the given rates and egress policy, and
   * recreates whatever of its links or tc is missing (e.g. after a host reboot). A failed first
   * attach leaves nothing; a failed re-attach puts the previous allocation back.
   */
  async attach(instanceId: string, opts: AttachOptions): Promise<NetworkAttachment> {
    checkInstanceId(instanceId)
    const c = this.config
    const want = resolveAttachOptions(opts, c.subnet.gateway)
    this.#assertOpen()
    throwIfAborted(opts.signal, 'attach')
    const names = linkNames(instanceId)
    return this.#store.withLock(async () => {
      const state = await this.#readState()
      const previous = state.allocations[instanceId]
      const clash = Object.values(state.allocations).find((a) => a.short === names.short && a.instanceId !== instanceId)
      if (clash) throw new ConflictError(`instance ids ${instanceId} and ${clash.instanceId} map to the same link names (hm?${names.short})`, { field: 'instanceId' })
      let ip = previous?.ip
      if (!ip) {
        ip = nextFreeAddress(c.subnet, new Set(Object.values(state.allocations).map((a) => a.ip)), state.cursor)
        if (!ip) throw new NetworkError('address_pool_exhausted', `every address of ${c.subnet.cidr} is handed out`, { field: 'subnet', step: 'allocate' })
        state.cursor = ip
      }
      const alloc: Allocation = {
        instanceId,
        short: names.short,
        ip,
        mac: macForAddress(ip),
        device: want.device,
        vcpus: want.vcpus,
        downloadBitsPerSec: want.download ?? defaultRate(want.vcpus, c.hostCpus, c.capacity.downloadBitsPerSec),
        uploadBitsPerSec: want.upload ?? defaultRate(want.vcpus, c.hostCpus, c.capacity.uploadBitsPerSec),
        egress: want.egress,
        createdAt: previous?.createdAt ?? nowIso(),
        updatedAt: nowIso(),
      }
      state.allocations[instanceId] = alloc
      await this.#store.write(state)
      const after = async (s: AttachStep): Promise<void> => {
        await opts.onStep?.(s)
        throwIfAborted(opts.signal, s)
      }
      // The allocation's undo puts the whole attachment back in the network's order (allocation,
      // rules, links, shaping), so enforcement is in place before a restored port carries a frame;
      // the later steps need no undo of their own.
      const steps: Step<void>[] = [
        // Recorded first: the allocation is already written when the list starts.
        { name: 'allocated', recordFirst: true, run: () => after('allocated'), undo: () => this.#undoAttach(instanceId, previous) },
        { name: 'rules', run: async () => (await this.#applyRules(state), await after('rules')) },
        { name: 'links', run: async () => (await this.#ensureLinks(alloc, state), await after('links')) },
        { name: 'shaping', run: async () => (await this.#ensureShaping(alloc), await after('shaping')) },
      ]
      try {
        await runSteps(steps, undefined, { done: [], persist: async () => {} }, {
          onUndoError: ({ cause }) =>
            this.#log.warn('netsetup: undoing a failed attach failed; reconcile will finish it', { instanceId, error: errorMessage(cause) }),
        })
      } catch (failed) {
        const { step, cause } = failed as StepsFailedError
        // Our own errors (a failed step, an abort) say what happened; anything else is wrapped with the step.
        if (isHypemanError(cause) && cause.code !== 'command_failed') throw cause
        throw new NetworkError('network_setup_failed', `attach ${instanceId}: ${step}: ${errorMessage(cause)}`, { step, cause })
      }
      this.#log.debug('netsetup: attached', { instanceId, ip, tap: names.tap })
      return this.#toAttachment(alloc, state)
    })
  }

  /** A failed first attach removes everything; a failed re-attach restores the previous allocation. */
  async #undoAttach(instanceId: string, previous: Allocation | undefined): Promise<void> {
    const state = await this.#readState()
    if (previous) {
      state.allocations[instanceId] = previous
    } else {
      const n = linkNames(instanceId)
      await this.#sh.ipBatch(planDeleteLinks(linkMap(await this.#links()), [n.tap, n.ifb, n.peer]), 'undo')
      delete state.allocations[instanceId]
    }
    await this.#store.write(state)
    await this.#applyRules(state)
    if (previous) {
      await this.#ensureLinks(previous, state)
      await this.#ensureShaping(previous)
    }
  }

  /**
   * Removes the instance's links (and with them its tc), rules and address. Idempotent: a second
   * call, or a call for an instance never attached, does nothing. Returns whether anything was removed.
   */
  async detach(instanceId: string): Promise<boolean> {
    checkInstanceId(instanceId)
    this.#assertOpen()
    const n = linkNames(instanceId)
    return this.#store.withLock(async () => {
      const lines = planDeleteLinks(linkMap(await this.#links()), [n.tap, n.ifb, n.peer])
      await this.#step('links', () => this.#sh.ipBatch(lines, 'links'))
      const state = await this.#readState()
      const had = instanceId in state.allocations
      if (had) {
        delete state.allocations[instanceId]
        await this.#store.write(state)
        await this.#applyRules(state)
      }
      if (had || lines.length > 0) this.#log.debug('netsetup: detached', { instanceId })
      return had || lines.length > 0
    })
  }

  /**
   * A TAP of no instance yet (`hmw` + 12 random hex digits), for a VMM started before its
   * instance exists (a warm VMM); `adoptTap` later makes it an attached instance's port. Down and
   * on no bridge, it carries nothing until then. Ours by name: a reconcile removes one that is left.
   */
  async addSpareTap(): Promise<string> {
    this.#assertOpen()
    const name = spareTapName()
    await this.#step('links', () => this.#sh.ipBatch([`tuntap add dev ${name} mode tap vnet_hdr`, `link set dev ${name} alias ${spareAlias(this.config.bridge)}`], 'links'))
    return name
  }

  /** Deletes a spare TAP (addSpareTap) if it is still there under its name. */
  async removeSpareTap(name: string): Promise<void> {
    if (parseLinkName(name)?.role !== 'spare') throw new ValidationError('name', `${name} is not a spare TAP`)
    this.#assertOpen()
    await this.#step('links', async () => this.#sh.ipBatch(planDeleteLinks(linkMap(await this.#links()), [name]), 'links'))
  }

  /**
   * Makes `spare` (addSpareTap) the port of the attached instance: the instance's own TAP goes,
   * the spare takes its name, and the port is set up again (bridge, isolation, up, shaping) under
   * the network's lock; the rules match the name, so they hold as they were. A VMM that opened the
   * spare keeps it by descriptor. Whatever fails, the instance has a port after (made anew).
   */
  async adoptTap(instanceId: string, spare: string): Promise<void> {
    checkInstanceId(instanceId)
    if (parseLinkName(spare)?.role !== 'spare') throw new ValidationError('spare', `${spare} is not a spare TAP`)
    this.#assertOpen()
    const n = linkNames(instanceId)
    await this.#store.withLock(async () => {
      const state = await this.#readState()
      const alloc = state.allocations[instanceId]
      if (!alloc) throw new NotFoundError(`instance ${instanceId} is not attached`, { field: 'instanceId' })
      if (alloc.device !== 'tap') throw new ValidationError('spare', `instance ${instanceId}'s port is a ${alloc.device}, not a TAP`)
      try {
        const links = linkMap(await this.#links())
        if (!links.has(spare)) throw new NetworkError('network_setup_failed', `no spare TAP ${spare}`, { field: 'spare', step: 'adopt' })
        await this.#sh.ipBatch([...planDeleteLinks(links, [n.tap]), `link set dev ${spare} name ${n.tap}`], 'links')
      } finally {
        await this.#ensureLinks(alloc, state)
        await this.#ensureShaping(alloc)
      }
    })
  }

  async get(instanceId: string): Promise<NetworkAttachment | undefined> {
    const state = await this.#readState()
    const alloc = state.allocations[instanceId]
    return alloc ? this.#toAttachment(alloc, state) : undefined
  }

  async list(): Promise<NetworkAttachment[]> {
    const state = await this.#readState()
    return Object.values(state.allocations)
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt))
      .map((a) => this.#toAttachment(a, state))
  }

  // ------------------------------------------------------------------------------ recovery

  /**
   * After a crash (or on every open of the caller): forgets the allocations of instances not in
   * `knownIds`, renders the tables from what remains, and deletes every link of ours that no
   * allocation names (their qdiscs and filters go with them). Known instances are not touched.
   */
  async reconcile(knownIds: Iterable<string>): Promise<ReconcileResult> {
    this.#assertOpen()
    const known = new Set(knownIds)
    return this.#store.withLock(async () => {
      const state = await this.#readState()
      const removedInstances = Object.keys(state.allocations).filter((id) => !known.has(id))
      for (const id of removedInstances) delete state.allocations[id]
      // Links first, as in detach: a port must not outlive the rules that pin its source address.
      const links = await this.#links()
      const keep = new Set(Object.values(state.allocations).map((a) => a.short))
      const removedLinks = orphanLinks(links, keep, this.config.bridge)
      await this.#step('links', () => this.#sh.ipBatch(planDeleteLinks(linkMap(links), removedLinks), 'links'))
      if (removedInstances.length > 0) await this.#store.write(state)
      await this.#applyRules(state)
      const present = new Set(links.map((l) => l.name))
      const incomplete = Object.values(state.allocations)
        .filter((a) => !present.has(linkName('tap', a.short)) || !present.has(linkName('ifb', a.short)))
        .map((a) => a.instanceId)
      if (removedInstances.length + removedLinks.length > 0) this.#log.info('netsetup: reconciled', { removedInstances, removedLinks })
      return { removedInstances, removedLinks, incomplete }
    })
  }

  async inspect(): Promise<NetworkInventory> {
    const c = this.config
    const state = await this.#readState()
    const links = await this.#links()
    const qdiscs = (await this.#sh.json<{ dev: string; kind: string }[]>('tc', ['-j', 'qdisc', 'show'])) ?? []
    const bridgeTable = await this.#nftTable('bridge')
    const inetTable = await this.#nftTable('inet')
    return {
      allocations: Object.keys(state.allocations).sort(),
      links: links.filter((l) => parseLinkName(l.name)).map((l) => l.name).sort(),
      bridgeAddresses: links.some((l) => l.name === c.bridge) ? await this.#addresses(c.bridge) : [],
      qdiscs: qdiscs.filter((q) => ['htb', 'ingress', 'tbf', 'clsact'].includes(q.kind)).map((q) => ({ dev: q.dev, kind: q.kind })),
      nft: {
        bridge: bridgeTable ? { ports: setElements(bridgeTable, 'ports'), guests: setElements(bridgeTable, 'guests') } : null,
        inet: inetTable
          ? {
              mediated: setElements(inetTable, 'mediated'),
              modeAll: setElements(inetTable, 'mode_all'),
              proxyEndpoints: setElements(inetTable, 'proxy_endpoints'),
              dnatRules: inetTable.filter((o) => (o.rule as { chain?: string } | undefined)?.chain === 'prerouting').length,
            }
          : null,
      },
    }
  }

  /**
   * Removes everything of this network: every link of ours on it, both tables, the bridge and the
   * allocation file. IPv4 forwarding is left on (something else may rely on it). The handle is closed.
   */
  async destroy(): Promise<void> {
    this.#assertOpen()
    const c = this.config
    await this.#store.withLock(async () => {
      const links = await this.#links()
      const ours = orphanLinks(links, new Set(), c.bridge)
      await this.#step('links', () => this.#sh.ipBatch([...planDeleteLinks(linkMap(links), ours), ...(links.some((l) => l.name === c.bridge) ? [`link del dev ${c.bridge}`] : [])], 'links'))
      const state = await this.#readState()
      await this.#step('rules', () => this.#sh.nft(buildTeardown(this.#settings(state).table), 'rules'))
      state.allocations = {}
      state.cursor = null
      await this.#store.write(state)
    })
    this.#closed = true
  }

  /** Stops using this handle; the kernel objects and allocations stay (a later open finds them). */
  close(): void {
    this.#closed = true
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close()
  }

  // ------------------------------------------------------------------------------ internals

  #assertOpen(): void {
    if (this.#closed) throw new NetworkError('network_setup_failed', 'this HostNetwork is closed', { step: 'state' })
  }

  #readState(): Promise<NetworkState> {
    return this.#store.read(this.config.bridge, this.config.subnet.cidr)
  }

  async #step<T>(step: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn()
    } catch (err) {
      if (err instanceof NetworkError || err instanceof ValidationError || err instanceof ConflictError) throw err
      throw new NetworkError('network_setup_failed', `${step}: ${errorMessage(err)}`, { step, cause: err })
    }
  }

  async #links(): Promise<LinkState[]> {
    return parseLinks(await this.#sh.json<unknown>('ip', ['-j', '-d', 'link', 'show'], 'links'))
  }

  async #addresses(dev: string): Promise<string[]> {
    const json = await this.#sh.json<{ addr_info?: { family: string; local: string; prefixlen: number }[] }[]>('ip', ['-j', 'addr', 'show', 'dev', dev])
    return (json ?? []).flatMap((l) => (l.addr_info ?? []).filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`))
  }

  async #nftTable(family: 'bridge' | 'inet'): Promise<Record<string, unknown>[] | undefined> {
    try {
      const out = await this.#sh.json<{ nftables: Record<string, unknown>[] }>('nft', ['-j', 'list', 'table', family, this.config.table])
      return out?.nftables ?? []
    } catch {
      return undefined
    }
  }

  /** The settings the ruleset is rendered from: the last open's (all processes should open alike). */
  #settings(state: NetworkState): NetworkSettings {
    const c = this.config
    return state.settings ?? { table: c.table, dns: c.dns, uplink: c.uplink ?? null, isolate: c.isolate }
  }

  #applyRules(state: NetworkState): Promise<void> {
    const c = this.config
    const s = this.#settings(state)
    const guests = Object.values(state.allocations).map((a) => ({ tap: linkName('tap', a.short), mac: a.mac, ip: a.ip, egress: a.egress }))
    const doc = buildRuleset({
      table: s.table,
      bridge: c.bridge,
      subnet: { network: c.subnet.network, prefixLength: c.subnet.prefixLength },
      isolate: s.isolate,
      ...(s.uplink ? { uplink: s.uplink } : {}),
      resolvers: s.dns,
      guests,
    })
    return this.#step('rules', () => this.#sh.nft(doc, 'rules'))
  }

  async #ensureLinks(a: Allocation, state: NetworkState): Promise<void> {
    const n = linkNames(a.instanceId)
    const lines = planGuestLinks(linkMap(await this.#links()), {
      device: a.device,
      tap: n.tap,
      ifb: n.ifb,
      peer: n.peer,
      mac: a.mac,
      alias: linkAlias(this.config.bridge, a.instanceId),
      bridge: this.config.bridge,
      isolate: this.#settings(state).isolate,
    })
    await this.#step('links', () => this.#sh.ipBatch(lines, 'links'))
  }

  async #ensureShaping(a: Allocation): Promise<void> {
    const n = linkNames(a.instanceId)
    const qd = async (dev: string) => parseQdiscs(await this.#sh.json<unknown>('tc', ['-j', 'qdisc', 'show', 'dev', dev], 'shaping'))
    const lines = planShaping(
      { tap: n.tap, ifb: n.ifb, downloadBitsPerSec: a.downloadBitsPerSec, uploadBitsPerSec: a.uploadBitsPerSec },
      { tap: await qd(n.tap), ifb: await qd(n.ifb) },
    )
    await this.#step('shaping', () => this.#sh.tcBatch(lines, 'shaping'))
  }

  #toAttachment(a: Allocation, state: NetworkState): NetworkAttachment {
    const c = this.config
    const n = linkNames(a.instanceId)
    return {
      instanceId: a.instanceId,
      bridge: c.bridge,
      netns: c.netns ?? null,
      device: a.device,
      tap: n.tap,
      ifb: n.ifb,
      ...(a.device === 'veth' ? { peer: n.peer } : {}),
      mac: a.mac,
      ip: a.ip,
      prefixLength: c.subnet.prefixLength,
      netmask: c.subnet.netmask,
      gateway: c.subnet.gateway,
      dns: [...this.#settings(state).dns],
      bandwidthDownloadBitsPerSec: a.downloadBitsPerSec,
      bandwidthUploadBitsPerSec: a.uploadBitsPerSec,
      egress: a.egress ? { enabled: true, mode: a.egress.mode, proxy: { ...a.egress.proxy } } : { enabled: false },
    }
  }
}

/** Elements of a named set in `nft -j list table` output, as strings (`a . b` for concatenations). */
function setElements(objects: Record<string, unknown>[], name: string): string[] {
  for (const o of objects) {
    const s = o.set as { name?: string; elem?: unknown[] } | undefined
    if (s?.name !== name) continue
    return (s.elem ?? []).map((e) => {
      const v = (typeof e === 'object' && e !== null && 'elem' in e ? (e as { elem: { val?: unknown } }).elem.val : e) ?? e
      const parts = typeof v === 'object' && v !== null && 'concat' in v ? (v as { concat: unknown[] }).concat : undefined
      return parts ? parts.map(String).join(' . ') : String(v)
    })
  }
  return []
}
