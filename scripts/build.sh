#!/bin/bash
# Configures and builds insitu.
#
#   scripts/build.sh            -> ./build       (RelWithDebInfo)
#   scripts/build.sh asan       -> ./build-asan  (AddressSanitizer + UBSan)
#   scripts/build.sh tsan       -> ./build-tsan  (ThreadSanitizer)
set -euo pipefail
cd "$(dirname "$0")/.."

flavour=${1:-}
case $flavour in
  "") dir=build sanitize= ;;
  asan) dir=build-asan sanitize=address,undefined ;;
  tsan) dir=build-tsan sanitize=thread ;;
  *)
    echo "usage: $0 [asan|tsan]" >&2
    exit 2
    ;;
esac

cmake -S . -B "$dir" -DINSITU_SANITIZE="$sanitize" >/dev/null
cmake --build "$dir" -j "$(nproc)"
