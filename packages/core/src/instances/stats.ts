/**
 * An instance's resource use now (hypeman's GET /instances/{id}/stats): CPU and memory of its VMM
 * process from /proc, network bytes from its TAP's counters, and what it was given. An instance
 * with no VMM running reports zero use; one never attached to a network, zero bytes.
 */
import { netnsArgv, runJson } from '@hypeman-ts/common'
import { processUsage } from '@hypeman-ts/vmm-drivers'
import type { InstanceContext } from './context.js'
import type { InstanceRecord } from './record.js'

export interface InstanceStats {
  instanceId: string
  instanceName: string
  /** CPU time of the VMM process (all vCPUs and device emulation). */
  cpuSeconds: number
  memoryRssBytes: number
  memoryVmsBytes: number
  /** Received by the guest: what the TAP sent towards it. */
  networkRxBytes: number
  /** Sent by the guest: what the TAP received from it. */
  networkTxBytes: number
  allocatedVcpus: number
  /** size + hotplugSize. */
  allocatedMemoryBytes: number
  /** RSS ÷ allocated memory. */
  memoryUtilizationRatio: number | null
}

interface IpLinkStats {
  stats64?: { rx?: { bytes?: number }; tx?: { bytes?: number } }
}

async function tapBytes(record: InstanceRecord): Promise<{ rx: number; tx: number }> {
  if (!record.network) return { rx: 0, tx: 0 }
  const [cmd, args] = netnsArgv(record.network.netns ?? undefined, 'ip', ['-j', '-s', 'link', 'show', 'dev', record.network.tap])
  const links = await runJson<IpLinkStats[]>(cmd, args, { step: 'stats', okCodes: [0, 1] }).catch(() => [] as IpLinkStats[])
  const s = links?.[0]?.stats64
  // The TAP's view is the mirror of the guest's.
  return { rx: s?.tx?.bytes ?? 0, tx: s?.rx?.bytes ?? 0 }
}

export async function instanceStats(cx: InstanceContext, idOrName: string): Promise<InstanceStats> {
  const record = await cx.find(idOrName)
  const usage = record.vmm ? await processUsage(record.vmm.pid, record.vmm.pidStartTime) : undefined
  const net = await tapBytes(record)
  const allocated = record.spec.memoryBytes + record.spec.hotplugBytes
  const rss = usage?.rssBytes ?? 0
  return {
    instanceId: record.id,
    instanceName: record.name,
    cpuSeconds: usage?.cpuSeconds ?? 0,
    memoryRssBytes: rss,
    memoryVmsBytes: usage?.vmsBytes ?? 0,
    networkRxBytes: net.rx,
    networkTxBytes: net.tx,
    allocatedVcpus: record.spec.vcpus,
    allocatedMemoryBytes: allocated,
    memoryUtilizationRatio: allocated > 0 ? rss / allocated : null,
  }
}

/** The spec's InstanceStats (snake_case). */
export function instanceStatsToWire(s: InstanceStats): Record<string, unknown> {
  return {
    instance_id: s.instanceId,
    instance_name: s.instanceName,
    cpu_seconds: s.cpuSeconds,
    memory_rss_bytes: s.memoryRssBytes,
    memory_vms_bytes: s.memoryVmsBytes,
    network_rx_bytes: s.networkRxBytes,
    network_tx_bytes: s.networkTxBytes,
    allocated_vcpus: s.allocatedVcpus,
    allocated_memory_bytes: s.allocatedMemoryBytes,
    ...(s.memoryUtilizationRatio !== null ? { memory_utilization_ratio: s.memoryUtilizationRatio } : {}),
  }
}
