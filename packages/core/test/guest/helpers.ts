/** Shared by the guest tests: the real guest init binary (built from packages/core/guest by make). */
import { ensureGuestInit } from '../../src/assets/guest-init.js'
import { defaultCacheDir } from '../../src/assets/ensure.js'

let built: Promise<string> | undefined

/** The init binary for this source tree, built into the asset cache if it is not there yet. */
export function guestInitBinary(): Promise<string> {
  built ??= ensureGuestInit({ cacheDir: defaultCacheDir() }).then((r) => r.path)
  return built
}
