/**
 * `npx tsx packages/core/src/assets/setup-main.ts`: what scripts/setup.d/20-guest.sh runs, so a
 * clean machine has the guest kernel, init and initrd cached before anything boots.
 */
import { stderrLogger } from '@hypeman-ts/common'
import { ensureGuestAssets } from './ensure.js'

const logger = { ...stderrLogger, info: (msg: string, fields?: Record<string, unknown>) => process.stderr.write(`  ${msg}${fields ? ` ${JSON.stringify(fields)}` : ''}\n`) }
const assets = await ensureGuestAssets({ logger })
process.stdout.write(`${JSON.stringify({ kernelVersion: assets.kernelVersion, kernel: assets.kernelPath, initrd: assets.initrdPath, init: assets.initPath })}\n`)
