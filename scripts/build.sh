#!/bin/bash
# Configures and builds insitu.
#
#   scripts/build.sh            -> ./build       (RelWithDebInfo)
#   scripts/build.sh asan       -> ./build-asan  (AddressSanitizer + UBSan; unit tests only)
#   scripts/build.sh tsan       -> ./build-tsan  (ThreadSanitizer; unit tests only)
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

if [[ -z $sanitize ]]; then
  cmake -S . -B "$dir" -DINSITU_SANITIZE= >/dev/null
  exec cmake --build "$dir" -j "$(nproc)"
fi
# Sanitizer builds exist to run the unit tests: only the test binary, at
# -O1 with line tables only (ASan's advice; against -O2 -g this cut the
# ASan build from 6.6 to 2.1 minutes on two cores, and the tests ran as
# fast).
cmake -S . -B "$dir" -DINSITU_SANITIZE="$sanitize" \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" >/dev/null
cmake --build "$dir" -j "$(nproc)" --target insitu_tests
