/** The Instance of the seed API and its states, with the spec's snake_case JSON. */
import type { Hypervisor, VolumeMount } from './params.js'

/**
 * - Created: VMM process being set up, not started yet
 * - Initializing: the VM runs while guest init is still in progress
 * - Running: the guest program has started
 * - Paused: the VM is paused
 * - Shutdown: the guest stopped, the VMM process is still ending
 * - Stopped: no VMM running, no snapshot
 * - Standby: no VMM running, a snapshot exists (restore resumes it)
 * - Unknown: the state could not be determined (see stateError)
 */
export type InstanceState = 'Created' | 'Initializing' | 'Running' | 'Paused' | 'Shutdown' | 'Stopped' | 'Standby' | 'Unknown'
export const INSTANCE_STATES: readonly InstanceState[] = ['Created', 'Initializing', 'Running', 'Paused', 'Shutdown', 'Stopped', 'Standby', 'Unknown']

export interface InstanceNetwork {
  enabled?: boolean
  ip?: string | null
  mac?: string | null
  name?: string
  bandwidthDownload?: string
  bandwidthUpload?: string
}

export interface Instance {
  /** CUID2. */
  id: string
  createdAt: string
  image: string
  name: string
  state: InstanceState
  diskIoBps?: string
  env?: Record<string, string>
  exitCode?: number | null
  exitMessage?: string | null
  gpu?: { mdevUuid?: string; profile?: string }
  hasSnapshot?: boolean
  hotplugSize?: string
  hypervisor?: Hypervisor
  network?: InstanceNetwork
  overlaySize?: string
  size?: string
  startedAt?: string | null
  stateError?: string | null
  stoppedAt?: string | null
  tags?: Record<string, string>
  vcpus?: number
  volumes?: VolumeMount[]
  /** Ids of the registered devices passed through (not in the spec's Instance). */
  devices?: string[]
}

const drop = <T extends Record<string, unknown>>(o: T): T =>
  Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T

/**
 * The spec's JSON for an Instance (snake_case, optional fields left out when unset). The full
 * OpenAPI schema also requires `expires_at`; instances here never expire (no ttl), hence null.
 */
export function instanceToWire(i: Instance): Record<string, unknown> {
  return drop({
    id: i.id,
    created_at: i.createdAt,
    expires_at: null,
    image: i.image,
    name: i.name,
    state: i.state,
    disk_io_bps: i.diskIoBps,
    env: i.env,
    exit_code: i.exitCode,
    exit_message: i.exitMessage ?? undefined, // a string in the spec, not nullable: absent until there is one
    gpu: i.gpu ? drop({ mdev_uuid: i.gpu.mdevUuid, profile: i.gpu.profile }) : undefined,
    has_snapshot: i.hasSnapshot,
    hotplug_size: i.hotplugSize,
    hypervisor: i.hypervisor,
    network: i.network
      ? drop({
          bandwidth_download: i.network.bandwidthDownload,
          bandwidth_upload: i.network.bandwidthUpload,
          enabled: i.network.enabled,
          ip: i.network.ip,
          mac: i.network.mac,
          name: i.network.name,
        })
      : undefined,
    overlay_size: i.overlaySize,
    size: i.size,
    started_at: i.startedAt,
    state_error: i.stateError,
    stopped_at: i.stoppedAt,
    tags: i.tags,
    vcpus: i.vcpus,
    volumes: i.volumes?.map((v) => drop({ mount_path: v.mountPath, volume_id: v.volumeId, overlay: v.overlay, overlay_size: v.overlaySize, readonly: v.readonly })),
  })
}
