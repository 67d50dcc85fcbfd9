// Pack time (npm pack / npm publish): the guest init for each architecture we can compile for goes
// into the tarball with the hash of its sources, so installing the package needs no C toolchain.
// This host's architecture is required; another one is built when Debian's cross compiler for it
// is installed (scripts/setup installs the aarch64 one) and said plainly when it is not.
import { guestArch, PREBUILT_ARCHES, prebuildGuestInit } from '../dist/index.js'

const host = guestArch()
const { path, hash } = await prebuildGuestInit()
console.error(`prebuilt guest init ${path} (sources ${hash})`)
for (const arch of PREBUILT_ARCHES.filter((a) => a !== host)) {
  try {
    const cross = await prebuildGuestInit({ arch })
    console.error(`prebuilt guest init ${cross.path} (sources ${cross.hash})`)
  } catch (err) {
    console.error(`guest init not prebuilt for ${arch}: ${err.message}`)
  }
}
