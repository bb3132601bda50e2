#!/usr/bin/env bash
# Make a minimal Debian base image on this host with debootstrap + `docker import`, for engines that cannot pull
# from Docker Hub. Where Docker Hub is reachable, skip this and build on a pulled base instead (docs/IMAGE.md).
#
#   docker/make_base_image.sh [--force] [TAG]        default TAG: segmaker-base:bookworm
#
# An existing TAG is reused (CI builds it once per machine); --force rebuilds it. Needs root (debootstrap
# creates device nodes and chowns files) and Debian's package mirror.
set -euo pipefail

SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
FORCE=0
TAG=""

die() { echo "make_base_image: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) TAG="$1" ;;
    esac
    shift
done
TAG="${TAG:-segmaker-base:${SUITE}}"

command -v docker >/dev/null || die "docker is not installed"
if [ "$FORCE" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "make_base_image: reusing $TAG (pass --force to rebuild it)"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "debootstrap needs root: run this script with sudo"

if ! command -v debootstrap >/dev/null; then
    echo "make_base_image: installing debootstrap with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap >/dev/null \
        || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y --no-install-recommends debootstrap >/dev/null; } \
        || die "cannot install debootstrap (apt-get install debootstrap)"
fi

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/segmaker-rootfs.XXXXXX")"
trap 'rm -rf "$ROOTFS"' EXIT

echo "make_base_image: debootstrap $SUITE from $MIRROR (a few minutes)"
# minbase: apt and dpkg only. The Dockerfile installs Python and the libraries it needs itself, exactly as it
# does on a pulled ubuntu/debian base, so both paths stay the same.
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
    || { tail -20 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; die "debootstrap failed"; }
rm -f "$ROOTFS.log"

# Security updates as on the official debian image, so `apt-get upgrade` in derived images means something.
cat >"$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
SOURCES
# Keep the image small: no package lists or downloaded .debs (derived images run `apt-get update` first).
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/log/*.log

tar --numeric-owner -C "$ROOTFS" -c . \
    | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' \
        --message "debootstrap --variant=minbase $SUITE" - "$TAG" >/dev/null
echo "make_base_image: built $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
