/** Shared by the guest tests: the real guest init binary (built from packages/core/guest by make). */
import { createHash } from 'node:crypto'
import { mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Logger } from '@hypeman-ts/common'
import { QemuDriver, type NicSpec, type QemuRunningVm, type VmSpec } from '@hypeman-ts/vmm-drivers'
import type { GuestAssets } from '../../src/assets/ensure.js'
import { writeGuestConfigDisk, type GuestConfig } from '../../src/guest/config-disk.js'
import { createOverlayDisk, guestChannels, guestDisks } from '../../src/guest/disks.js'

import { ensureGuestInit } from '../../src/assets/guest-init.js'
import { defaultCacheDir } from '../../src/assets/ensure.js'
let built: Promise<string> | undefined

/** The init binary for this source tree, built into the asset cache if it is not there yet. */
export function guestInitBinary(): Promise<string> {
  built ??= ensureGuestInit({ cacheDir: defaultCacheDir() }).then((r) => r.path)
  return built
}

const MiB = 1024 * 1024
const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} }

export interface Booted {
  vm: QemuRunningVm
  dir: string
  overlay: string
  appLog: string
  statusLog: string
  agentSocket: string
  controlSocket: string
}

export interface BootOptions {
  rootfs: string
  memoryMiB?: number
  nics?: NicSpec[]
  netns?: string
}

/**
 * Boots guests the way an instance boots (the init from the initrd, a config disk, an overlay, the
 * channels), straight through the QEMU driver: what the guest tests need without the instance
 * manager. A name boots again on the same overlay when its directory exists already.
 */
export class GuestBooter {
  readonly driver = new QemuDriver({ logger: quiet })
  readonly #runtimeDirs: string[] = []

  constructor(
    private readonly assets: GuestAssets,
    private readonly work: string,
  ) {}

  async boot(name: string, config: GuestConfig, opts: BootOptions): Promise<Booted> {
    const dir = join(this.work, name)
    const b = {
      dir,
      overlay: join(dir, 'overlay.ext4'),
      appLog: join(dir, 'app.log'),
      statusLog: join(dir, 'status.jsonl'),
      agentSocket: join(dir, 'agent.sock'),
      controlSocket: join(dir, 'control.sock'),
    }
    if (await mkdir(dir).then(() => true, () => false)) await createOverlayDisk(b.overlay, 64 * MiB)
    await writeGuestConfigDisk(join(dir, 'config.img'), config)
    const spec: VmSpec = {
      name: `hm-test-${name}`,
      kernel: this.assets.kernelPath,
      initrd: this.assets.initrdPath,
      cmdline: this.assets.cmdline,
      vcpus: 1,
      memoryBytes: (opts.memoryMiB ?? 256) * MiB,
      disks: guestDisks({ rootfs: opts.rootfs, overlay: b.overlay, config: join(dir, 'config.img') }),
      ...(opts.nics ? { nics: opts.nics } : {}),
      channels: guestChannels(b, { skipGuestAgent: config.skipGuestAgent }),
      consoleLog: join(dir, 'console.log'),
      runtimeDir: join(dir, 'run'),
      ...(opts.netns ? { netns: opts.netns } : {}),
      accel: 'tcg',
    }
    this.#runtimeDirs.push(spec.runtimeDir)
    return { ...b, vm: await this.driver.start(spec) }
  }

  /** Ends whatever a failed test left running. */
  async destroyAll(): Promise<void> {
    for (const runtimeDir of this.#runtimeDirs) await this.driver.destroy({ runtimeDir })
  }
}

export async function appLog(b: Booted): Promise<string> {
  return readFile(b.appLog, 'utf8').catch(() => '')
}

/** Waits (bounded) until the app log contains `text`. */
export async function waitForLog(b: Booted, text: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await appLog(b)).includes(text)) {
    if (Date.now() > deadline) throw new Error(`"${text}" not in the app log after ${timeoutMs} ms; it has: ${await appLog(b)}`)
    await sleep(100)
  }
}

export async function sha256(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex')
}
