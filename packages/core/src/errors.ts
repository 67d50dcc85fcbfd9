/**
 * Error codes of @hypeman-ts/core, on the shared classes of @hypeman-ts/common.
 * Callers match on `code`; the message is for humans.
 */
import { CodedError } from '@hypeman-ts/common'

export type ImageErrorCode =
  | 'image_not_found' // the registry or layout has no such repository, tag, digest or platform
  | 'invalid_platform'
  | 'registry_unauthorized' // credentials missing or refused
  | 'registry_rate_limited'
  | 'registry_error' // the registry answered something we cannot use (5xx, bad JSON, ...)
  | 'digest_mismatch' // content did not hash to the digest that named it
  | 'unsupported_media_type'
  | 'unsafe_layer' // a layer tried to write outside its root, or is malformed
  | 'image_build_failed'
  | 'image_in_use'

export class ImageError extends CodedError<ImageErrorCode>() {}

export type EgressEventsErrorCode =
  | 'events_overflow' // a reader of hm.egress.events() fell further behind than maxBuffered

export class EgressEventsError extends CodedError<EgressEventsErrorCode>() {}

export type VolumeErrorCode =
  | 'volume_not_found'
  | 'volume_exists' // the name or id is taken
  | 'volume_in_use' // attached: delete refused, or a read-write attach where another attachment exists
  | 'unsafe_archive' // an archive entry would land outside the volume, or is malformed
  | 'archive_too_large' // the archive's content exceeds sizeLimit
  | 'volume_build_failed'
  | 'volume_busy' // a detach while running: the guest could not unmount it (in use); it stays attached
  | 'volume_mount_failed' // an attach while running: the guest could not mount it; nothing stays attached

export class VolumeError extends CodedError<VolumeErrorCode>() {}

export type InstanceLookupErrorCode =
  | 'ambiguous' // an id prefix that more than one instance's id starts with (hypeman's 409)

export class InstanceLookupError extends CodedError<InstanceLookupErrorCode>() {}

export type DeviceErrorCode =
  | 'device_not_found' // no such registered device, or no such PCI device on the host
  | 'device_exists' // the name or the PCI address is already registered
  | 'device_in_use' // attached to an instance: delete refused, or claimed by another instance
  | 'iommu_unavailable' // the device has no IOMMU group: IOMMU off in firmware or on the kernel command line
  | 'iommu_group_conflict' // the device's IOMMU group holds devices that would not go to the VM with it
  | 'vfio_unavailable' // the vfio-pci driver is not loaded on the host
  | 'device_bind_failed' // the kernel did not move the device to (or back from) vfio-pci
  | 'gpu_profile_not_found' // no mdev type of that name on this host
  | 'gpu_profile_exhausted' // the profile exists, but no parent device can create another
  | 'mdev_failed' // the kernel did not create (or remove) the mediated device

export class DeviceError extends CodedError<DeviceErrorCode>() {}
