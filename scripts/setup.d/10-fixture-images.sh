#!/usr/bin/env bash
# Fixture OCI images for the tests and benchmarks, built with tools that are not ours (umoci, GNU tar,
# debootstrap), so the pull path is checked against artifacts our code did not write.
# Output: OCI image layouts under $HYPEMAN_TS_CACHE/fixtures/. Pushing them to a registry is the
# test setup's job (packages/core/test/support/registry.ts).
source "$(dirname "$0")/../lib.sh"

FIX=$HYPEMAN_TS_CACHE/fixtures
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$FIX"

busybox_version=$(dpkg-query -W -f='${Version}' busybox-static)
inputs=$(printf '%s\n' "$(sha256sum "$0")" "$busybox_version" | sha256sum | cut -c1-32)

# --- small images from busybox-static -------------------------------------------------------------
build_small() {
  local work; work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  local lay=$work/small
  umoci init --layout "$lay"

  # A minimal busybox root: applets as symlinks, users, the usual top-level directories.
  make_root() { # $1 = rootfs dir, $2 = platform marker
    local r=$1
    mkdir -p "$r"/{bin,etc,tmp,root,home/app,proc,sys,dev,var/log}
    chmod 1777 "$r/tmp"; chmod 700 "$r/root"
    cp /bin/busybox "$r/bin/busybox"
    for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf /bin/busybox "$r/bin/$a"; done
    printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$r/etc/passwd"
    printf 'root:x:0:\napp:x:1000:\nstaff:x:50:app\nnogroup:x:65534:\n' > "$r/etc/group"
    chown 1000:1000 "$r/home/app"
    echo "$2" > "$r/etc/platform"
  }

  for arch in amd64 arm64; do
    umoci new --image "$lay:busybox-$arch"
    umoci unpack --image "$lay:busybox-$arch" "$work/b-$arch"
    make_root "$work/b-$arch/rootfs" "$arch"
    umoci repack --image "$lay:busybox-$arch" "$work/b-$arch"
    umoci config --image "$lay:busybox-$arch" --architecture "$arch" --os linux \
      --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --config.cmd sh --config.workingdir /
    rm -rf "$work/b-$arch"
  done

  # layers: several layers exercising whiteouts, an opaque directory, links, modes, owners, times.
  umoci new --image "$lay:layers"
  umoci unpack --image "$lay:layers" "$work/l"
  make_root "$work/l/rootfs" amd64
  mkdir -p "$work/l/rootfs"/{data/keep,data/opaque,data/gone-dir}
  echo lower > "$work/l/rootfs/data/lower.txt"
  echo removed > "$work/l/rootfs/data/removed.txt"
  echo old > "$work/l/rootfs/data/opaque/old.txt"
  echo gone > "$work/l/rootfs/data/gone-dir/f"
  # --refresh-bundle: the next repack must diff against this layer, not against the empty base.
  umoci repack --refresh-bundle --image "$lay:layers" "$work/l"
  rm -f "$work/l/rootfs/data/removed.txt"                       # → whiteout .wh.removed.txt
  rm -rf "$work/l/rootfs/data/gone-dir"                         # → whiteout of a directory
  echo upper > "$work/l/rootfs/data/lower.txt"                  # overwritten in a later layer
  echo 'hard' > "$work/l/rootfs/data/hard-a"; ln "$work/l/rootfs/data/hard-a" "$work/l/rootfs/data/hard-b"
  ln -s ../data/lower.txt "$work/l/rootfs/data/rel-link"
  ln -s /data/lower.txt "$work/l/rootfs/data/abs-link"
  printf '#!/bin/sh\necho suid\n' > "$work/l/rootfs/data/suid"; chmod 4755 "$work/l/rootfs/data/suid"
  echo owned > "$work/l/rootfs/data/owned"; chown 1000:50 "$work/l/rootfs/data/owned"; chmod 640 "$work/l/rootfs/data/owned"
  touch -h -d '2001-02-03 04:05:06 UTC' "$work/l/rootfs/data/owned"
  umoci repack --image "$lay:layers" "$work/l"
  # An opaque whiteout, which umoci does not emit on its own: a layer made with GNU tar.
  mkdir -p "$work/opq/data/opaque"
  : > "$work/opq/data/opaque/.wh..wh..opq"
  echo new > "$work/opq/data/opaque/new.txt"
  tar --numeric-owner --owner=0 --group=0 -C "$work/opq" -cf "$work/opq.tar" data
  umoci raw add-layer --image "$lay:layers" "$work/opq.tar"  # takes an uncompressed tar, gzips it
  umoci config --image "$lay:layers" --architecture amd64 --os linux \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env GREETING=hello --config.entrypoint /bin/echo --config.cmd layers-default \
    --config.workingdir /data --config.user app
  rm -rf "$work/l" "$work/opq"

  # multi: an image index with linux/amd64 and linux/arm64/v8 (descriptors written by hand with jq).
  desc() { jq -c --arg arch "$1" --arg variant "$2" \
    '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "busybox-" + $arch)
     | {mediaType, digest, size, platform: ({os: "linux", architecture: $arch} + (if $variant != "" then {variant: $variant} else {} end))}' \
    "$lay/index.json"; }
  local index; index=$(jq -cn --argjson a "$(desc amd64 '')" --argjson b "$(desc arm64 v8)" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json", manifests: [$a, $b]}')
  local idx_digest; idx_digest=$(printf '%s' "$index" | sha256sum | cut -d' ' -f1)
  printf '%s' "$index" > "$lay/blobs/sha256/$idx_digest"
  jq --arg d "sha256:$idx_digest" --argjson s "${#index}" \
    '.manifests += [{mediaType: "application/vnd.oci.image.index.v1+json", digest: $d, size: $s,
                      annotations: {"org.opencontainers.image.ref.name": "multi"}}]' \
    "$lay/index.json" > "$lay/index.json.new" && mv "$lay/index.json.new" "$lay/index.json"

  umoci gc --layout "$lay"

  # The busybox image with its layer recompressed as zstd, and uncompressed (skopeo does the
  # conversion only towards a `dir:` destination; an `oci:` one keeps the original blob).
  skopeo copy --quiet --dest-compress --dest-compress-format zstd "oci:$lay:busybox-amd64" "dir:$work/busybox-zstd"
  skopeo copy --quiet --dest-decompress "oci:$lay:busybox-amd64" "dir:$work/busybox-plain"

  rm -rf "$FIX/small" "$FIX/busybox-zstd" "$FIX/busybox-plain"
  mv "$lay" "$FIX/small"; mv "$work/busybox-zstd" "$work/busybox-plain" "$FIX/"
}

if ! stamp_ok fixtures-small "$inputs" || [ ! -f "$FIX/small/index.json" ]; then
  log "building small fixture images (umoci + busybox-static)"
  build_small
  stamp_set fixtures-small "$inputs"
fi

# --- a real distro image: debootstrap'ed Debian minbase with ca-certificates and curl -------------
debian_inputs="$DEBIAN_SUITE-minbase-ca-curl-v1"  # bump to rebuild the Debian fixture
if ! stamp_ok fixtures-debian "$debian_inputs" || [ ! -f "$FIX/debian/index.json" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if [ ! -f "$FIX/debian-rootfs.tar" ]; then
    log "debootstrap $DEBIAN_SUITE (minbase + ca-certificates + curl); cached afterwards"
    debootstrap --variant=minbase --include=ca-certificates,curl "$DEBIAN_SUITE" "$work/rootfs" "$DEBIAN_MIRROR" > "$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -rf "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/lib/apt/lists/*
    tar --numeric-owner --xattrs -C "$work/rootfs" -cf "$FIX/debian-rootfs.tar.tmp" .
    mv "$FIX/debian-rootfs.tar.tmp" "$FIX/debian-rootfs.tar"
    rm -rf "$work/rootfs"
  fi
  log "packing the Debian fixture image (umoci)"
  umoci init --layout "$work/debian"
  umoci new --image "$work/debian:$DEBIAN_SUITE"
  umoci unpack --image "$work/debian:$DEBIAN_SUITE" "$work/bundle"
  tar --numeric-owner --xattrs -C "$work/bundle/rootfs" -xf "$FIX/debian-rootfs.tar"
  umoci repack --image "$work/debian:$DEBIAN_SUITE" "$work/bundle"
  umoci config --image "$work/debian:$DEBIAN_SUITE" --architecture amd64 --os linux \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --config.cmd bash
  umoci gc --layout "$work/debian"
  rm -rf "$FIX/debian"; mv "$work/debian" "$FIX/debian"
  stamp_set fixtures-debian "$debian_inputs"
fi
