export { VolumeManager, volumeToWire, type CreateVolumeFromArchiveParams, type CreateVolumeParams, type Volume, type VolumeManagerOptions } from './manager.js'
export { validateVolumeMounts, type VolumeMount, type VolumeMountSpec } from './mounts.js'
