#!/usr/bin/env bash
# Build a stand-in for the CUDA runtime base image: Debian bookworm + python3 from debootstrap, imported
# into podman's local store. No registry is needed, and the tarball is cached so reruns take seconds.
#
# usage: images/local-base.sh [IMAGE_NAME]        (default localhost/foresight-base:bookworm)
# env:   DEBIAN_MIRROR   mirror debootstrap uses  (default: the first Debian mirror apt uses here)
#        FORESIGHT_IMAGES_CACHE  where the tarball lives (default: ~/.cache/foresight/images, outside the
#                        repository so that fresh clones, CI's included, reuse it)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${1:-localhost/foresight-base:bookworm}"
cache_dir="${FORESIGHT_IMAGES_CACHE:-$HOME/.cache/foresight/images}"
suite=bookworm
packages=python3,ca-certificates

apt_mirror() {
  # deb822 "URIs:" or one-line "deb URI suite" entries; take the first Debian one.
  grep -rhoE '^(URIs:[[:space:]]*|deb[[:space:]]+)https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
    /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null \
    | grep -oE 'https?://[^[:space:]]+' | head -n 1
}
mirror="${DEBIAN_MIRROR:-$(apt_mirror || true)}"
mirror="${mirror:-http://deb.debian.org/debian}"

export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
mkdir -p "$cache_dir"

tarball="$cache_dir/debian-$suite-minbase-python3.tar"
if [[ ! -s "$tarball" ]]; then
  rootfs="$(mktemp -d "$cache_dir/rootfs.XXXXXX")"
  trap 'rm -rf "$rootfs"' EXIT
  echo "debootstrap $suite from $mirror (cached afterwards in $tarball)" >&2
  debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >&2
  printf 'deb %s %s main\n' "$mirror" "$suite" > "$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner --xattrs -C "$rootfs" -cf "$tarball.partial" .
  mv "$tarball.partial" "$tarball"
fi

podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  "$tarball" "$image" >/dev/null
echo "$image"
