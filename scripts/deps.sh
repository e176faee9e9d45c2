#!/bin/bash
# Installs the Debian packages needed to build insitu and run its tests.
# Only packages that are missing are installed, so a second run is quick
# and changes nothing.  Uses sudo only when not already root.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake pkg-config clang libclang-rt-14-dev llvm
  liburing-dev libzstd-dev liblz4-dev liblzo2-dev zlib1g-dev libdeflate-dev
  libcli11-dev nlohmann-json3-dev libnbd-dev
  # tests
  libgtest-dev libgmock-dev libnbd-bin python3-libnbd nbdkit fuse3
  fio qemu-utils e2fsprogs
)

installed() {
  # dpkg-query prints "install ok installed" only for a fully installed package.
  [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
# nbdfuse is part of libnbd-bin up to Debian 12 and a package of its own
# later, so it is looked for as a command and installed by name only where
# such a package exists.
want_nbdfuse=0
command -v nbdfuse >/dev/null || want_nbdfuse=1

if [[ ${#missing[@]} -eq 0 && $want_nbdfuse -eq 0 ]]; then
  echo "deps: everything is installed"
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || {
    echo "deps: need root to install packages (run as root or install sudo)" >&2
    exit 1
  }
  SUDO=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
if [[ $want_nbdfuse -eq 1 ]] && apt-cache show nbdfuse >/dev/null 2>&1; then
  missing+=(nbdfuse)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "deps: installing ${missing[*]}"
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
