/**
 * /devices (register, list, get, delete) and /devices/available (the host's PCI functions a VM
 * could be given): core's device registry over sysfs, in the spec's snake_case.
 */
import { availableDeviceToWire, deviceToWire } from '@hypeman-ts/core'
import { body, params, query, type Handlers, type RouteContext } from './types.js'

export function deviceHandlers({ hm }: RouteContext): Handlers {
  return {
    async listDevices(req) {
      const tags = query(req).tags as Record<string, string> | undefined
      return (await hm.devices.list(tags ? { tags } : {})).map(deviceToWire)
    },
    async createDevice(req, reply) {
      const b = body(req)
      const device = await hm.devices.create({
        pciAddress: b.pci_address as string,
        ...(b.name !== undefined ? { name: b.name as string } : {}),
        ...(b.tags !== undefined ? { tags: b.tags as Record<string, string> } : {}),
      })
      return reply.code(201).send(deviceToWire(device))
    },
    async listAvailableDevices() {
      return (await hm.devices.available()).map(availableDeviceToWire)
    },
    async getDevice(req) {
      return deviceToWire(await hm.devices.get(params(req).id!))
    },
    async deleteDevice(req, reply) {
      await hm.devices.delete(params(req).id!)
      return reply.code(204).send()
    },
  }
}
