#!/bin/bash
# The real-data step: copies an ext4 image of real files into each target
# with nbdcopy and reports speed, compression and the space the backing file
# really uses.  Writes bench/results/dataset.csv and dataset.md (run.sh folds
# the table into results.md).
#
#   bench/dataset.sh [BUILD_DIR]        (default ./build, must be built)
#
# The image: a 384 MiB ext4 file system made with `mkfs.ext4 -d` (no mount)
# from /usr/include, /usr/share/man and /usr/lib/python3* (those that exist).
# If their files take more than BENCH_DATASET_BUDGET bytes (in 4 KiB blocks),
# each tree contributes a share in proportion to its size, in sorted path
# order, so the subset is the same on every run.  The image is cached in
# bench/results/.cache and reused.
#
# Knobs (environment):
#   BENCH_DATASET_TARGETS  default: nbdkit-file and insitu none/lz4/lzo/zstd:1/zlib:1
#                          in write-back mode, plus lz4 in write-through mode
#   BENCH_DATASET_SIZE=384M
#   BENCH_DATASET_BUDGET=340000000
#   BENCH_OUT              results directory (default bench/results)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "$0")/lib/common.sh"

: "${BENCH_DATASET_TARGETS:=nbdkit-file insitu-none-wb insitu-lz4-wb insitu-lzo-wb insitu-zstd1-wb insitu-zlib1-wb insitu-lz4-wt insitu-lz4-wb-noseg insitu-lzo-wb-noseg}"
: "${BENCH_DATASET_SIZE:=384M}" "${BENCH_DATASET_BUDGET:=340000000}"

# Sets IMAGE and the facts about it (IMAGE_BYTES, IMAGE_ALLOC, NONZERO, SOURCE).
prepare_image() {
  local cache="$OUT/.cache" key="dataset-$BENCH_DATASET_SIZE-$BENCH_DATASET_BUDGET"
  IMAGE="$cache/$key.img"
  mkdir -p "$cache"
  [[ -f $IMAGE && -f $cache/$key.info ]] || build_image "$IMAGE" "$cache/$key.info"
  IFS=$'\t' read -r NONZERO SOURCE <"$cache/$key.info"
  IMAGE_BYTES=$(stat -c %s "$IMAGE")
  IMAGE_ALLOC=$(alloc_bytes "$IMAGE")
}

build_image() {
  local image=$1 info=$2 roots=() dir files dirs bytes stage="$WORK/stage"
  for dir in /usr/include /usr/share/man /usr/lib/python3 /usr/lib/python3.[0-9]*; do
    if [[ -d $dir ]]; then roots+=("$dir"); fi
  done
  [[ ${#roots[@]} -gt 0 ]] || die "none of the dataset's source trees exists"
  log "dataset: building a $BENCH_DATASET_SIZE ext4 image from ${roots[*]}"
  read -r files dirs bytes < <(report pick-files "$BENCH_DATASET_BUDGET" "$WORK/files" "${roots[@]}")
  mkdir -p "$stage"
  tar -C / --null -T "$WORK/files" -cf - | tar -C "$stage" -xf -
  # Fixed UUID, hash seed and clock: the same files give the same image.
  E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -b 4096 -m 0 -N $((files + dirs + 1024)) \
    -U 2d1f9c4e-6a53-4b7e-9d0a-5c3e8f1b7a26 -E hash_seed=8a6e2c1d-3b4f-4e5a-9c7d-0f1e2d3c4b5a \
    -d "$stage" "$image.tmp" "$BENCH_DATASET_SIZE" >"$OUT/logs/mkfs.log" 2>&1 ||
    die "mkfs.ext4 -d failed (lower BENCH_DATASET_BUDGET?); see $OUT/logs/mkfs.log"
  printf '%s\t%s\n' "$(report nonzero "$image.tmp")" \
    "$files files ($((bytes >> 20)) MiB in 4 KiB blocks) of ${roots[*]}" >"$info"
  mv "$image.tmp" "$image"
  rm -rf "$stage"
}

# The backing file's size: the image's, plus room for insitu's metadata.
backing_size() {
  if is_insitu "$1"; then
    echo $((IMAGE_BYTES + (64 << 20)))
  else
    echo "$IMAGE_BYTES"
  fi
}

copy_into() {
  local name=$1 file="$WORK/dataset-$1.img" t0 t1 cpu0="" cpu1="" size secs counters=""
  local logical payload meta ratio
  target_create "$name" "$file" "$(backing_size "$name")"
  target_start "$name" "$file"
  size=$(nbdinfo --size "$URI")
  ((size >= IMAGE_BYTES)) || die "$name exports $size bytes, less than the image"
  if [[ -n $SERVER_PID ]]; then cpu0=$(proc_cpu_s "$SERVER_PID"); fi
  t0=$(now)
  taskset -c "$CLIENT_CPU" nbdcopy --flush "$IMAGE" "$URI"
  t1=$(now)
  if [[ -n $SERVER_PID ]]; then cpu1=$(proc_cpu_s "$SERVER_PID"); fi
  target_stop "$file"
  if is_insitu "$name"; then counters=$(insitu_counters "$file"); fi
  read -r logical payload meta ratio <<<"$counters" || true  # empty for peers
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
  csv_row "$name" "$NOTE" "$SOURCE" "$IMAGE_BYTES" "$IMAGE_ALLOC" "$NONZERO" "$secs" \
    "$(awk -v n="$IMAGE_BYTES" -v s="$secs" 'BEGIN {printf "%.1f", n / 1e6 / s}')" \
    "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {if (b != "") printf "%.2f", b - a}')" \
    "$PEAK_RSS_KIB" "$logical" "$payload" "$meta" "$ratio" "$(alloc_bytes "$file")" \
    >>"$OUT/dataset.csv"
  log "dataset: $name ${secs}s, allocated $(alloc_bytes "$file") bytes"
  rm -f "$file"
}

main() {
  bench_init "${1:-}"
  ensure_tools nbdcopy:libnbd-bin nbdinfo:libnbd-bin nbdkit:nbdkit mkfs.ext4:e2fsprogs \
    taskset:util-linux
  # shellcheck disable=SC2086  # the list is words
  check_targets $BENCH_DATASET_TARGETS
  [[ " $BENCH_DATASET_TARGETS " != *" fio-raw "* ]] || die "fio-raw has no NBD server to copy into"
  rm -f "$OUT/dataset.csv" "$OUT/dataset.md"
  prepare_image
  echo "target,note,source,image_bytes,image_alloc_bytes,nonzero_bytes,seconds,mbps,server_cpu_s,peak_rss_kib,logical_bytes,payload_bytes,meta_bytes,compression_ratio,alloc_bytes" \
    >"$OUT/dataset.csv"
  local name
  for name in $BENCH_DATASET_TARGETS; do copy_into "$name"; done
  report dataset "$OUT"
  log "wrote $OUT/dataset.md"
}

main "$@"
