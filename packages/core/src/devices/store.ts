/**
 * Registered devices: `<dataDir>/devices/<id>.json`, each written atomically, every change under
 * one lock. A device's claim (`attachedTo` with the driver it had) is written before the device
 * is moved to vfio-pci, so a crash in between still knows what to give back.
 */
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { readJsonIfExists, withFileLock, writeJsonAtomic } from '@hypeman-ts/common'
import type { DeviceType } from './pci.js'

export interface DeviceRecord {
  version: 1
  id: string
  name: string
  type: DeviceType
  pciAddress: string
  vendorId: string
  deviceId: string
  iommuGroup: number
  tags: Record<string, string>
  createdAt: string
  /** The instance that holds it, or null. */
  attachedTo: string | null
  /** While claimed: the driver it had before vfio-pci (null: none), to give it back to. */
  originalDriver: string | null
}

const ID = /^[a-z0-9]+$/

export class DeviceStore {
  constructor(readonly root: string) {}

  read(id: string): Promise<DeviceRecord | undefined> {
    if (!ID.test(id)) return Promise.resolve(undefined)
    return readJsonIfExists<DeviceRecord>(join(this.root, `${id}.json`))
  }

  write(record: DeviceRecord): Promise<void> {
    return writeJsonAtomic(join(this.root, `${record.id}.json`), record, 0o600)
  }

  async all(): Promise<DeviceRecord[]> {
    const out: DeviceRecord[] = []
    for (const name of await readdir(this.root).catch(() => [] as string[])) {
      if (!name.endsWith('.json')) continue
      const r = await this.read(name.slice(0, -'.json'.length))
      if (r) out.push(r)
    }
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt))
  }

  withLock<T>(fn: () => Promise<T>): Promise<T> {
    return withFileLock(join(this.root, '.lock'), fn, { timeoutMs: 60_000 })
  }
}
