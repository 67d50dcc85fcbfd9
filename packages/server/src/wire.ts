/**
 * The spec's snake_case request bodies to core's camelCase parameters. A field the spec has
 * and core cannot honour yet is refused with `not_supported` (501) naming it, never dropped.
 * Types were already checked against the spec's schema; core checks the values.
 */
import { NotSupportedError, ValidationError } from '@hypeman-ts/common'
import type { CreateImageParams, CreateInstanceParams, Hypervisor, UpdateInstanceParams } from '@hypeman-ts/core'

type Body = Record<string, unknown>

const UNSUPPORTED_CREATE = ['ttl', 'expires_at', 'health_check', 'restart_policy', 'auto_standby', 'snapshot_policy'] as const
/** Of an update, core changes only credential values (`env`); the rest are features it lacks. */
const UNSUPPORTED_UPDATE = ['ttl', 'expires_at', 'health_check', 'restart_policy', 'auto_standby'] as const

function refuse(field: string, value?: string): never {
  throw new NotSupportedError(`${field}: ${value ? `${value} is ` : ''}not supported by hypeman-ts yet`, { field })
}

/**
 * Core reads `oci:/some/dir` references from the host's filesystem: fine for a program that
 * embeds core, not for any client of an HTTP API, which could make the server open any
 * directory. Refused unless the operator allowed it (tests, a trusted single-user host).
 */
function checkSource(field: string, ref: unknown, allowLocalLayouts: boolean): void {
  if (!allowLocalLayouts && typeof ref === 'string' && ref.startsWith('oci:')) {
    throw new ValidationError(field, 'local OCI layouts (oci:...) are not allowed through the API on this server')
  }
}

export interface WireOptions {
  allowLocalLayouts: boolean
}

const defined = <T extends Record<string, unknown>>(o: T): T =>
  Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T

export function createInstanceFromWire(b: Body, opts: WireOptions): CreateInstanceParams {
  checkSource('image', b.image, opts.allowLocalLayouts)
  for (const f of UNSUPPORTED_CREATE) if (b[f] !== undefined && b[f] !== null) refuse(f)
  if (b.hypervisor === 'qemu-microvm') refuse('hypervisor', 'qemu-microvm')
  const net = b.network as Body | undefined
  const egress = net?.egress as Body | undefined
  const volumes = b.volumes as Body[] | undefined
  return defined({
    image: b.image as string,
    name: b.name as string,
    cmd: b.cmd as string[] | undefined,
    entrypoint: b.entrypoint as string[] | undefined,
    env: b.env as Record<string, string> | undefined,
    size: b.size as string | undefined,
    hotplugSize: b.hotplug_size as string | undefined,
    overlaySize: b.overlay_size as string | undefined,
    diskIoBps: b.disk_io_bps as string | undefined,
    vcpus: b.vcpus as number | undefined,
    hypervisor: b.hypervisor as Hypervisor | undefined,
    platform: b.platform as string | undefined,
    skipGuestAgent: b.skip_guest_agent as boolean | undefined,
    // The spec's default (false) whatever the embedding manager's default: a client that omits the
    // field gets what the spec promises it, the headers.
    skipKernelHeaders: (b.skip_kernel_headers as boolean | undefined) ?? false,
    tags: b.tags as Record<string, string> | undefined,
    // Same shape on the wire and in core: { source: { env }, inject: [{ hosts, as: { header, format } }] }.
    credentials: b.credentials as CreateInstanceParams['credentials'],
    devices: b.devices as string[] | undefined,
    gpu: b.gpu as { profile?: string } | undefined,
    volumes: volumes?.map((v) =>
      defined({
        volumeId: v.volume_id as string,
        mountPath: v.mount_path as string,
        readonly: v.readonly as boolean | undefined,
        overlay: v.overlay as boolean | undefined,
        overlaySize: v.overlay_size as string | undefined,
      }),
    ),
    network: net
      ? defined({
          enabled: net.enabled as boolean | undefined,
          bandwidthDownload: net.bandwidth_download as string | undefined,
          bandwidthUpload: net.bandwidth_upload as string | undefined,
          egress: egress as NonNullable<CreateInstanceParams['network']>['egress'],
        })
      : undefined,
  })
}

/** PATCH /instances/{id}: credential rotation (`env`); core says which keys a credential binds. */
export function updateInstanceFromWire(b: Body): UpdateInstanceParams {
  for (const f of UNSUPPORTED_UPDATE) if (b[f] !== undefined && b[f] !== null) refuse(f)
  return defined({ env: b.env as Record<string, string> | undefined })
}

export function createImageFromWire(b: Body, opts: WireOptions): CreateImageParams {
  checkSource('name', b.name, opts.allowLocalLayouts)
  const c = b.credentials as Body | undefined
  return defined({
    name: b.name as string,
    platform: b.platform as string | undefined,
    tags: b.tags as Record<string, string> | undefined,
    credentials: c
      ? defined({ username: c.username as string | undefined, password: c.password as string | undefined, registryToken: c.registry_token as string | undefined })
      : undefined,
  })
}
