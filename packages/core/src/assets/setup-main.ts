/**
 * `npx tsx packages/core/src/assets/setup-main.ts`: what scripts/setup.d/20-guest.sh runs, so a
 * clean machine has the guest kernel, its headers disk, init and initrd cached before anything
 * boots (the headers are a download and a mkfs no test or demo should pay for).
 */
import { stderrLogger } from '@hypeman-ts/common'
import { defaultCacheDir, ensureGuestAssets } from './ensure.js'
import { ensureKernelHeaders } from './headers.js'

const logger = { ...stderrLogger, info: (msg: string, fields?: Record<string, unknown>) => process.stderr.write(`  ${msg}${fields ? ` ${JSON.stringify(fields)}` : ''}\n`) }
const assets = await ensureGuestAssets({ logger })
const headers = await ensureKernelHeaders({ cacheDir: defaultCacheDir(), kernel: { version: assets.kernelVersion, dir: assets.kernelDir }, logger })
process.stdout.write(`${JSON.stringify({ kernelVersion: assets.kernelVersion, kernel: assets.kernelPath, initrd: assets.initrdPath, init: assets.initPath, headers: headers.path })}\n`)
