/**
 * The languages the runner accepts: an OCI image and how to run a piece of code in it.
 * This table is the place to add one.
 *
 * The defaults are the two images this repository's `bash scripts/setup` builds offline (a
 * busybox image, and a debootstrap'ed Debian with curl, perl and CA certificates). In your own
 * project point them at registry images, per language, with CODE_RUNNER_IMAGE_<LANGUAGE>:
 *
 *   CODE_RUNNER_IMAGE_SH=docker.io/library/busybox:1.36
 *   CODE_RUNNER_IMAGE_BASH=docker.io/library/debian:bookworm   (no curl in it: install it or pick another)
 *
 * An image needs `sleep` (the VM idles on it while the code runs through the guest agent).
 */
const fixtures = `${process.env.HYPEMAN_TS_CACHE ?? '/var/cache/hypeman-ts'}/fixtures`

export interface Language {
  /** An image reference: `docker.io/library/python:3.12-alpine`, or a local OCI layout `oci:/path:tag`. */
  image: string
  /** The program that runs `code`. */
  argv(code: string): string[]
}

const table: Record<string, Language> = {
  sh: { image: `oci:${fixtures}/small:busybox-amd64`, argv: (code) => ['sh', '-c', code] },
  bash: { image: `oci:${fixtures}/debian:bookworm`, argv: (code) => ['bash', '-c', code] },
  perl: { image: `oci:${fixtures}/debian:bookworm`, argv: (code) => ['perl', '-e', code] },
  // Pulled from Docker Hub on first use (needs the registry reachable from this host):
  // python: { image: 'docker.io/library/python:3.12-alpine', argv: (code) => ['python3', '-c', code] },
  // node: { image: 'docker.io/library/node:20-alpine', argv: (code) => ['node', '-e', code] },
}

/** The table with each image replaced by CODE_RUNNER_IMAGE_<LANGUAGE> where that is set. */
export const languages: Record<string, Language> = Object.fromEntries(
  Object.entries(table).map(([name, lang]) => [name, { ...lang, image: process.env[`CODE_RUNNER_IMAGE_${name.toUpperCase()}`] ?? lang.image }]),
)
