#!/bin/bash
# Installs the Debian packages needed to build insitu and run its tests.
# Only packages that are missing are installed, so a second run is quick
# and changes nothing.  Uses sudo only when not already root.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake pkg-config clang
  liburing-dev libzstd-dev liblz4-dev liblzo2-dev zlib1g-dev
  libcli11-dev nlohmann-json3-dev libnbd-dev
  # tests
  libgtest-dev libgmock-dev libnbd-bin python3-libnbd nbdkit nbdfuse fuse3
  fio qemu-utils e2fsprogs
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  # dpkg-query prints "install ok installed" only for a fully installed package.
  if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "deps: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || {
    echo "deps: need root to install: ${missing[*]} (run as root or install sudo)" >&2
    exit 1
  }
  SUDO=(sudo)
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
