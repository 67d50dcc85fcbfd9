/**
 * GET /health and GET /resources. Resources reports only what this host and core can say
 * truthfully: CPUs and memory of the host, the data directory's filesystem, and what each
 * instance that holds a VMM (or is booting one) was given. Nothing is oversubscribed (ratio 1).
 * Network capacity is known only when the operator configured it; otherwise it is 0 with
 * `source: "unknown"`, rather than a guess.
 */
import { statfs } from 'node:fs/promises'
import { availableParallelism, totalmem } from 'node:os'
import { parseRate, parseSize } from '@hypeman-ts/common'
import type { Instance } from '@hypeman-ts/core'
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

export function systemHandlers({ hm, networkCapacity }: RouteContext): Handlers {
  return {
    async getHealth() {
      return { status: 'ok' }
    },
    async getResources() {
      const active = (await hm.instances.list()).filter((i) => HOLDS_RESOURCES.has(i.state)).map(allocation)
      const sum = (f: (a: ReturnType<typeof allocation>) => number) => active.reduce((n, a) => n + f(a), 0)
      const fs = await statfs(hm.dataDir)
      const diskCapacity = fs.blocks * fs.bsize
      const download = networkCapacity?.downloadBitsPerSec
      return {
        cpu: status('cpu', availableParallelism(), sum((a) => a.cpu), 'detected'),
        memory: status('memory', totalmem(), sum((a) => a.memory_bytes), 'detected'),
        // The filesystem's own accounting: overlays are sparse, so their nominal sizes would overstate use.
        disk: status('disk', diskCapacity, diskCapacity - fs.bavail * fs.bsize, 'detected'),
        network: download
          ? status('network', Math.floor(download / 8), sum((a) => a.network_download_bps), 'configured')
          : status('network', 0, sum((a) => a.network_download_bps), 'unknown'),
        allocations: active,
      }
    },
  }
}
