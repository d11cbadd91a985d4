#!/usr/bin/env bash
# Builds a local stand-in for the python:3.11-slim base image from Debian packages only
# (for machines that cannot pull from Docker Hub): debootstrap a minimal bookworm root file system
# with Debian's Python 3.11 and import it into podman as localhost/tapcore-base:bookworm.
# Use it with:  podman build --build-arg BASE=localhost/tapcore-base:bookworm ...
# Needs root, debootstrap and podman. Idempotent: does nothing when the image already exists.
set -euo pipefail
IMAGE=${1:-localhost/tapcore-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if podman image exists "$IMAGE"; then
  echo "base image $IMAGE already present"; exit 0
fi
work=$(mktemp -d /var/tmp/tapcore-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$work/rootfs" "$MIRROR"
# Shrink: apt lists and caches are refetched by the Dockerfile's apt-get update anyway.
rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin \
       "$work/rootfs/var/cache/apt/archives/"*.deb
tar -C "$work/rootfs" --numeric-owner -cf "$work/rootfs.tar" .
podman import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$work/rootfs.tar" "$IMAGE"
echo "base image $IMAGE built in $(( $(date +%s) - start )) s"
