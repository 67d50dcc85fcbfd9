// Pack time (npm pack / npm publish): the guest init for this host's architecture goes into the
// tarball with the hash of its sources, so installing the package needs no C toolchain.
import { prebuildGuestInit } from '../dist/index.js'

const { path, hash } = await prebuildGuestInit()
console.error(`prebuilt guest init ${path} (sources ${hash})`)
