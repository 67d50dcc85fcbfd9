/** Test helpers on top of NetLab: servers and probes inside namespaces (test/support/netprobe.mjs). */
import { fileURLToPath } from 'node:url'
import type { HostNetwork } from '../../src/index.js'
import type { LabProcess, NetLab } from '../../src/testing.js'

export const PROBE = fileURLToPath(new URL('./netprobe.mjs', import.meta.url))

export interface ProbeResult {
  result: 'ok' | 'timeout' | 'error' | 'closed'
  data?: string
  code?: string
}

/** Privileged tests fail loudly instead of skipping. */
export function requireRoot(): void {
  if (process.getuid?.() !== 0) throw new Error('the netsetup tests need root (network namespaces, bridges, nftables, tc)')
}

/** Starts answering servers in `ns` (`tcp:80,udp:53`); resolves once they listen. */
export async function serve(lab: NetLab, ns: string, tag: string, host: string, specs: string): Promise<LabProcess> {
  const p = lab.spawn(ns, process.execPath, [PROBE, 'serve', tag, host, specs])
  await p.waitFor(/READY/)
  return p
}

export async function probe(lab: NetLab, ns: string, proto: 'tcp' | 'udp', host: string, port: number, opts: { bind?: string; timeoutMs?: number } = {}): Promise<ProbeResult> {
  const { stdout } = await lab.exec(ns, process.execPath, [PROBE, proto, host, String(port), opts.bind ?? '-', String(opts.timeoutMs ?? 1500)])
  return JSON.parse(stdout.trim().split('\n').at(-1) as string) as ProbeResult
}

/** Everything of ours the kernel and the allocation file still hold, in one comparable object. */
export async function leftovers(net: HostNetwork) {
  const inv = await net.inspect()
  return {
    allocations: inv.allocations,
    links: inv.links,
    qdiscs: inv.qdiscs,
    bridgeAddresses: inv.bridgeAddresses.filter((a) => a !== `${net.config.subnet.gateway}/${net.config.subnet.prefixLength}`),
    ports: inv.nft.bridge?.ports ?? [],
    guests: inv.nft.bridge?.guests ?? [],
    mediated: inv.nft.inet?.mediated ?? [],
    proxyEndpoints: inv.nft.inet?.proxyEndpoints ?? [],
    dnatRules: inv.nft.inet?.dnatRules ?? 0,
  }
}

export const NOTHING_LEFT = {
  allocations: [],
  links: [],
  qdiscs: [],
  bridgeAddresses: [],
  ports: [],
  guests: [],
  mediated: [],
  proxyEndpoints: [],
  dnatRules: 0,
}
