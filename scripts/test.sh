#!/bin/bash
# One command from a fresh machine to a tested tree: installs what is
# missing, builds, runs every test (unit, model, crash replay and
# integration), then builds again with AddressSanitizer +
# UndefinedBehaviorSanitizer and runs the unit tests under them, with
# ThreadSanitizer for the threaded paths (NBD server, concurrent volume
# I/O, commits), and runs each libFuzzer target for a short while.  Prints a summary; exits 1 if any
# step failed.  Some integration tests need root (losetup, mount) and
# /dev/fuse.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

jobs=$(nproc)
summary=()
failed=0

# step NAME COMMAND...: runs it, records PASS/FAIL, returns its success.
step() {
  local name=$1 start=$SECONDS
  shift
  echo "=== $name"
  if "$@"; then
    summary+=("PASS  $name ($((SECONDS - start)) s)")
    return 0
  fi
  summary+=("FAIL  $name ($((SECONDS - start)) s)")
  failed=1
  return 1
}

# A failed build must not run the tests: they would test stale binaries.
skip() {
  summary+=("SKIP  $1 (build failed)")
}

if ! step "install dependencies" scripts/deps.sh; then
  echo "cannot install the dependencies; stopping" >&2
  exit 1
fi

if step "build" scripts/build.sh; then
  # Integration tests run one at a time: they start daemons, FUSE mounts
  # and loop devices, and time-sensitive steps should not fight for CPUs.
  step "unit and model tests" ctest --test-dir build -LE integration --output-on-failure -j "$jobs"
  step "integration tests" ctest --test-dir build -L integration --output-on-failure
else
  skip "unit and model tests"
  skip "integration tests"
fi

if step "build (asan+ubsan)" scripts/build.sh asan; then
  # A quarter of the crash points: the plain build checks all 1000 per
  # configuration; here every write path and replay still runs, at ten
  # times the cost per point (40 s per configuration with 1000).
  step "unit and model tests (asan+ubsan)" env INSITU_CRASH_POINTS=250 \
    ctest --test-dir build-asan -L unit --output-on-failure -j "$jobs"
else
  skip "unit and model tests (asan+ubsan)"
fi

# The threaded paths under ThreadSanitizer: the NBD server, concurrent
# writers and readers of one volume, commits racing writes.
if step "build (tsan)" scripts/build.sh tsan; then
  export TSAN_OPTIONS="suppressions=$PWD/tests/tsan.supp halt_on_error=1"
  step "threaded tests (tsan)" ctest --test-dir build-tsan -L unit --output-on-failure \
    -R 'NbdServer|Concurrent|ExtentLock|LogWrites|AnArmedFault|DeferredWrites|Drainer|BackgroundDrain|Flusher|WaitForItsDiscard|DiscardWalk|UnitFit|UnderAnotherEpoch|FailedUndoDrain'
else
  skip "threaded tests (tsan)"
fi

# Fuzzing: every target replays its known crashers, then fuzzes briefly.
if step "build (fuzz)" scripts/build.sh fuzz; then
  step "fuzz targets (${INSITU_FUZZ_SECONDS:-15} s each)" fuzz/run.sh build-fuzz "${INSITU_FUZZ_SECONDS:-15}"
else
  skip "fuzz targets"
fi

echo
echo "=== summary"
printf '  %s\n' "${summary[@]}"
if [[ $failed -ne 0 ]]; then
  echo "FAILED"
  exit 1
fi
echo "all passed"
