#!/bin/bash
# Configures and builds insitu.
#
#   scripts/build.sh            -> ./build       (RelWithDebInfo)
#   scripts/build.sh asan       -> ./build-asan  (AddressSanitizer + UBSan)
#   scripts/build.sh tsan       -> ./build-tsan  (ThreadSanitizer)
#   scripts/build.sh fuzz       -> ./build-fuzz  (clang, libFuzzer targets only)
set -euo pipefail
cd "$(dirname "$0")/.."

flavour=${1:-}
case $flavour in
  "") dir=build sanitize= ;;
  asan) dir=build-asan sanitize=address,undefined ;;
  tsan) dir=build-tsan sanitize=thread ;;
  fuzz)
    CC=clang CXX=clang++ cmake -S . -B build-fuzz -DINSITU_FUZZ=ON >/dev/null
    exec cmake --build build-fuzz -j "$(nproc)" --target fuzz
    ;;
  *)
    echo "usage: $0 [asan|tsan|fuzz]" >&2
    exit 2
    ;;
esac

cmake -S . -B "$dir" -DINSITU_SANITIZE="$sanitize" >/dev/null
cmake --build "$dir" -j "$(nproc)"
