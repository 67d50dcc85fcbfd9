export { DeviceManager, deviceToWire, availableDeviceToWire, gpuStatusToWire, type GpuStatus, type Device, type CreateDeviceParams, type DeviceManagerOptions } from './manager.js'
export type { AvailableDevice, DeviceType } from './pci.js'
export type { GpuProfile, MdevRecord } from './mdev.js'
export { Sysfs, type SysfsOptions } from './sysfs.js'
