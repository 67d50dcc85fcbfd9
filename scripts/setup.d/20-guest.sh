#!/usr/bin/env bash
# The guest side of every VM, cached in $HYPEMAN_TS_CACHE: Debian's current cloud kernel (vmlinux +
# modules with depmod output), its headers disk (headers.ext4, for skipKernelHeaders: false), the
# guest init built from packages/core/guest, and the initrd.
# Idempotent: ensureGuestAssets only builds what is missing or whose inputs changed, and this
# script skips even that when its inputs match the last run.
source "$(dirname "$0")/../lib.sh"
cd "$ROOT"

kernel_meta() { apt-cache show --no-all-versions linux-image-cloud-amd64 2>/dev/null | grep '^Depends:' || true; }
meta=$(kernel_meta)
if [ -z "$meta" ]; then
  # A fresh machine may have no package lists yet: apt must know the cloud kernel metapackage.
  log "apt-get update (to resolve the guest kernel)"
  apt-get update -q >/dev/null
  meta=$(kernel_meta)
  [ -n "$meta" ] || die "apt does not know linux-image-cloud-amd64 (is Debian's main component in the sources?)"
fi

inputs=$( (echo "$meta"; cat packages/core/guest/Makefile packages/core/guest/src/* packages/core/src/assets/*.ts /bin/busybox) | sha256sum | cut -c1-32)
if stamp_ok guest-assets "$inputs:$HYPEMAN_TS_CACHE" && ls "$HYPEMAN_TS_CACHE"/kernel/*/initrd-*.cpio "$HYPEMAN_TS_CACHE"/kernel/*/headers.ext4 >/dev/null 2>&1; then
  exit 0
fi
log "guest kernel, its headers disk, init and initrd"
npx tsx packages/core/src/assets/setup-main.ts >/dev/null
stamp_set guest-assets "$inputs:$HYPEMAN_TS_CACHE"
