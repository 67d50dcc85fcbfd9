/**
 * GET /health, GET /capabilities and GET /resources. Capabilities are core's (hypervisors and
 * their features, network model, platforms) plus what this server serves. Resources reports only what this host and core can say
 * truthfully: CPUs and memory of the host, the data directory's filesystem, its GPUs (vGPU slots
 * from sysfs, or the GPUs registered for passthrough), and what each instance that holds a VMM
 * (or is booting one) was given. Nothing is oversubscribed (ratio 1).
 * Network capacity is known only when the operator configured it; otherwise it is 0 with
 * `source: "unknown"`, rather than a guess.
 */
import { statfs } from 'node:fs/promises'
import { availableParallelism, totalmem } from 'node:os'
import { parseRate, parseSize } from '@hypeman-ts/common'
import { gpuStatusToWire, type Capabilities, type Instance } from '@hypeman-ts/core'
import { serverVersion } from '../spec.js'
import type { Handlers, RouteContext } from './types.js'

/** States in which an instance holds (or is about to hold) host CPU and memory. */
const HOLDS_RESOURCES = new Set(['Created', 'Initializing', 'Running', 'Paused', 'Shutdown', 'Unknown'])

const status = (type: string, capacity: number, allocated: number, source: string) => ({
  type,
  capacity,
  effective_limit: capacity,
  allocated,
  available: Math.max(capacity - allocated, 0),
  oversub_ratio: 1,
  source,
})

const bytesPerSec = (rate: string | undefined) => (rate ? Math.floor(parseRate(rate, 'rate') / 8) : 0)

function allocation(i: Instance) {
  return {
    instance_id: i.id,
    instance_name: i.name,
    cpu: i.vcpus ?? 0,
    memory_bytes: i.size ? parseSize(i.size, 'size') + (i.hotplugSize ? parseSize(i.hotplugSize, 'hotplugSize') : 0) : 0,
    disk_bytes: i.overlaySize ? parseSize(i.overlaySize, 'overlaySize') : 0,
    disk_io_bps: bytesPerSec(i.diskIoBps),
    network_download_bps: bytesPerSec(i.network?.bandwidthDownload),
    network_upload_bps: bytesPerSec(i.network?.bandwidthUpload),
  }
}

/**
 * hypeman's server-level feature ids that this server serves. Not `builds`, `volumes`, `ingress`
 * or `devices` (501 here), though hypeman lists the first three as always present.
 */
/** `devices` (passthrough management) is the spec's Linux-only feature: it reads the host's sysfs. */
const SERVER_FEATURES = ['instances', 'images', 'volumes', 'exec', 'logs', ...(process.platform === 'linux' ? ['devices'] : [])]

function capabilitiesToWire(c: Capabilities, server: { version: string; apiVersion: string }) {
  return {
    server: { version: server.version, api_version: server.apiVersion },
    host: c.host,
    default_runtime: c.defaultHypervisor,
    runtimes: c.hypervisors,
    network: {
      model: c.network.model,
      guest_to_guest: c.network.guestToGuest,
      ...(c.network.gateway ? { gateway: c.network.gateway } : {}),
      ...(c.network.subnet ? { subnet: c.network.subnet } : {}),
    },
    images: { platforms: c.images.platforms, default_platform: c.images.defaultPlatform },
    features: SERVER_FEATURES,
  }
}

export function systemHandlers({ hm, networkCapacity, apiVersion }: RouteContext): Handlers {
  const version = serverVersion()
  return {
    async getHealth() {
      return { status: 'ok' }
    },
    async getCapabilities() {
      return capabilitiesToWire(hm.capabilities(), { version, apiVersion })
    },
    async getResources() {
      const active = (await hm.instances.list()).filter((i) => HOLDS_RESOURCES.has(i.state)).map(allocation)
      const sum = (f: (a: ReturnType<typeof allocation>) => number) => active.reduce((n, a) => n + f(a), 0)
      const fs = await statfs(hm.dataDir)
      const diskCapacity = fs.blocks * fs.bsize
      const download = networkCapacity?.downloadBitsPerSec
      const gpu = await hm.devices.gpuStatus()
      return {
        cpu: status('cpu', availableParallelism(), sum((a) => a.cpu), 'detected'),
        memory: status('memory', totalmem(), sum((a) => a.memory_bytes), 'detected'),
        // The filesystem's own accounting: overlays are sparse, so their nominal sizes would overstate use.
        disk: status('disk', diskCapacity, diskCapacity - fs.bavail * fs.bsize, 'detected'),
        network: download
          ? status('network', Math.floor(download / 8), sum((a) => a.network_download_bps), 'configured')
          : status('network', 0, sum((a) => a.network_download_bps), 'unknown'),
        ...(gpu ? { gpu: gpuStatusToWire(gpu) } : {}),
        allocations: active,
      }
    },
  }
}
