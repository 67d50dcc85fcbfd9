/**
 * One call for everything a guest boots from: kernel, init, initrd, command line. The lead's
 * instance code calls it before starting a VM; scripts/setup.d/20-guest.sh calls it at setup so a
 * clean machine has everything cached before the first test.
 */
import { silentLogger, type Logger } from '@hypeman-ts/common'
import { guestKernelCmdline, type CmdlineOptions } from './cmdline.js'
import { ensureGuestInit } from './guest-init.js'
import { ensureInitrd } from './initrd.js'
import { ensureKernel, type CachedKernelRef, type UserKernel } from './kernel.js'
import type { GuestModule, ModulePlan } from './modules.js'

export const DEFAULT_CACHE_DIR = '/var/cache/hypeman-ts'

export function defaultCacheDir(): string {
  return process.env.HYPEMAN_TS_CACHE || DEFAULT_CACHE_DIR
}

export interface GuestAssetsOptions {
  /** Default $HYPEMAN_TS_CACHE or /var/cache/hypeman-ts. */
  cacheDir?: string
  /**
   * Unset: Debian's current cloud kernel (apt; falls back to the newest cached one when apt cannot
   * answer). `{ version }`: a version already in the cache, without asking apt.
   * `{ image, modules?, version?, headers? }`: a kernel of your own, imported into the cache.
   */
  kernel?: UserKernel | CachedKernelRef
  /** A prebuilt guest init; default: built from packages/core/guest with make. */
  guestInit?: string
  /** Default /bin/busybox. */
  busybox?: string
  /** Default GUEST_MODULES. */
  modules?: readonly GuestModule[]
  cmdline?: CmdlineOptions
  logger?: Logger
  signal?: AbortSignal
}

export interface GuestAssets {
  kernelVersion: string
  /** The kernel's directory in the cache (where its headers disk goes, ensureKernelHeaders). */
  kernelDir: string
  /** ELF vmlinux for direct boot. */
  kernelPath: string
  initrdPath: string
  /** The guest's part of the kernel command line (the driver adds the machine part in front). */
  cmdline: string
  modulesDir: string | undefined
  initPath: string
  /** Which modules the initrd loads, in order and phase. */
  modules: ModulePlan
}

/** Idempotent and safe to call concurrently (file locks); only missing or changed pieces are built. */
export async function ensureGuestAssets(opts: GuestAssetsOptions = {}): Promise<GuestAssets> {
  const cacheDir = opts.cacheDir ?? defaultCacheDir()
  const logger = opts.logger ?? silentLogger
  const kernel = await ensureKernel({ cacheDir, logger, ...(opts.kernel ? { kernel: opts.kernel } : {}), ...(opts.signal ? { signal: opts.signal } : {}) })
  const initPath = opts.guestInit ?? (await ensureGuestInit({ cacheDir, ...(opts.signal ? { signal: opts.signal } : {}) })).path
  const initrd = await ensureInitrd({
    cacheDir,
    kernel,
    initPath,
    logger,
    ...(opts.busybox ? { busyboxPath: opts.busybox } : {}),
    ...(opts.modules ? { modules: opts.modules } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
  })
  return {
    kernelVersion: kernel.version,
    kernelDir: kernel.dir,
    kernelPath: kernel.vmlinux,
    initrdPath: initrd.path,
    cmdline: guestKernelCmdline(opts.cmdline),
    modulesDir: kernel.modulesDir,
    initPath,
    modules: initrd.modules,
  }
}
