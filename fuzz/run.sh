#!/bin/bash
# Runs every libFuzzer target for SECONDS (default 20) on a scratch copy of
# its seed corpus (the committed corpus never grows), prints one line per
# target, and exits nonzero if any target crashed, hung, leaked or tripped
# a sanitizer.  Before fuzzing, each target replays the inputs of bugs it
# found before (fuzz/crashes/TARGET-*), so a fixed bug stays fixed.  The
# failing input and the report of each failure are kept in
# BUILD_DIR/fuzz-failures/TARGET/ for reproduction:
#   BUILD_DIR/fuzz/TARGET BUILD_DIR/fuzz-failures/TARGET/crash-...
#
# Build first:
#   CC=clang CXX=clang++ cmake -S . -B build-fuzz -DINSITU_FUZZ=ON
#   make -C build-fuzz fuzz
# Usage: fuzz/run.sh BUILD_DIR [SECONDS]
set -uo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 BUILD_DIR [SECONDS]" >&2
  exit 2
fi
build=$(cd "$1" && pwd) || exit 2
seconds=${2:-20}
here=$(cd "$(dirname "$0")" && pwd)

# Inputs longer than a target's structure only slow it down.
declare -A max_len=(
  [superblock_fuzz]=4200       # control, a 4 KiB block, a device size
  [meta_page_fuzz]=8200        # control, block count, two 4 KiB slots
  [slot_fuzz]=32               # one entry per block of the largest slot
  [payload_fuzz]=20000         # a few compressed blocks
  [volume_open_fuzz]=1024      # a handful of overlays
  [nbd_request_fuzz]=2048      # dozens of requests and runs
  [nbd_handshake_fuzz]=4096    # a handshake and dozens of requests
)
targets=(superblock_fuzz meta_page_fuzz slot_fuzz payload_fuzz volume_open_fuzz
         nbd_request_fuzz nbd_handshake_fuzz)

work=$(mktemp -d "${TMPDIR:-/tmp}/insitu-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The targets' own scratch files (the NBD socket) go with it, also when a
# target dies before it can clean up.
export TMPDIR=$work
# Leaks count as failures; UBSan stacks make its reports actionable.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

failed=()
# Keeps the log and inputs of a failed target and prints the head of its
# report (what went wrong, the innermost frames) and its summary line.
report_failure() {
  local target=$1 log=$2 summary=$3
  local keep=$build/fuzz-failures/$target
  rm -rf "$keep"
  mkdir -p "$keep"
  cp "$log" "$work/$target"/artifacts/* "$keep/" 2>/dev/null
  printf '%-20s FAILED  %s (input and log in %s)\n' "$target" "$summary" "$keep"
  { grep -m 1 -A 8 -E '^==[0-9]+== ?ERROR: |^[a-z_]+_fuzz: |runtime error: ' "$log"
    grep -E '^SUMMARY: ' "$log" | head -n 1; } | sed 's/^/    /'
  failed+=("$target")
}

for target in "${targets[@]}"; do
  bin=$build/fuzz/$target
  if [[ ! -x $bin ]]; then
    echo "$target: FAILED: $bin is not built (make -C $build fuzz)"
    failed+=("$target")
    continue
  fi
  dir=$work/$target
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp "$here/corpus/$target"/* "$dir/corpus/"
  known=("$here/crashes/$target"-*)
  if [[ -e ${known[0]} ]]; then
    if ! "$bin" -timeout=30 "${known[@]}" >"$dir/replay.log" 2>&1; then
      cp "${known[@]}" "$dir/artifacts/"
      report_failure "$target" "$dir/replay.log" "an input of an earlier bug still fails"
      continue
    fi
  fi
  "$bin" -max_total_time="$seconds" -max_len="${max_len[$target]}" -timeout=30 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$dir/artifacts/" \
    "$dir/corpus" >"$dir/log" 2>&1
  rc=$?

  execs=$(grep -oP 'stat::number_of_executed_units: \K[0-9]+' "$dir/log" || echo 0)
  rate=$((execs / seconds))
  last=$(grep -P '^#[0-9]+\s+(DONE|NEW|REDUCE|pulse|INITED)\s+cov:' "$dir/log" | tail -n 1)
  cov=$(grep -oP 'cov: \K[0-9]+' <<<"$last" || echo 0)
  ft=$(grep -oP 'ft: \K[0-9]+' <<<"$last" || echo 0)
  corp=$(grep -oP 'corp: \K[0-9]+' <<<"$last" || echo 0)
  stats="$execs execs ($rate/s), cov $cov, ft $ft, corpus $corp"
  if [[ $rc -eq 0 ]]; then
    printf '%-20s OK      %s\n' "$target" "$stats"
  else
    report_failure "$target" "$dir/log" "$stats, exit $rc"
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: ${#failed[@]} of ${#targets[@]} targets failed: ${failed[*]}"
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds} s without a finding"
