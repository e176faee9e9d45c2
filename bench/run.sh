#!/bin/bash
# Runs every benchmark side by side and writes bench/results/results.md
# (tables), results.csv (one row per fio run), targets.csv, micro.json and
# PNG plots.  bench/README.md explains the method.
#
#   bench/run.sh [BUILD_DIR]            (default ./build; configured with
#                                        -DINSITU_BENCH=ON and built first)
#
# Knobs (environment):
#   BENCH_SECONDS=8        seconds per fio run
#   BENCH_ROUNDS=3         rounds; every target runs once per round, and the
#                          tables show the median over the rounds
#   BENCH_SIZE=1G          size of each backing file / volume
#   BENCH_RANGE=512M       bytes fio touches (split evenly between connections)
#   BENCH_TARGETS="..."    subset of the targets (default: all; see lib/common.sh)
#   BENCH_WORKLOADS="..."  subset of randread4k randwrite4k randrw4k seqread128k seqwrite128k
#   BENCH_DEPTHS="1 16"    fio iodepth per connection
#   BENCH_CONNS="1 4"      NBD connections (fio jobs)
#   BENCH_QUICK=1          smoke test: 1 round of 2 s, 4 targets, 4 workloads,
#                          qd16 with 1 connection, 3 dataset targets, short micro runs
#   BENCH_DATASET=0        skip the real-data step (bench/dataset.sh)
#   BENCH_MICRO=0          skip the microbenchmarks
#   BENCH_NBD=0            skip the fio matrix
#   BENCH_MICRO_MIN_TIME   --benchmark_min_time for insitu_micro (default 0.5)
#   BENCH_MICRO_REPS       repetitions of each microbenchmark, interleaved; medians (default 5)
#   BENCH_BUILD=0          use the binaries in BUILD_DIR as they are
#   BENCH_INSITUD_ARGS     extra insitud options, e.g. "--io direct --threads 4"
#   BENCH_PIN=0            servers and clients on every CPU, not CPU 1 and CPU 0
#   BENCH_OUT              results directory (default bench/results)
#   BENCH_DATASET_TARGETS  see bench/dataset.sh
#
# A full default run is 17 targets x 20 cells x 3 rounds = 1020 fio runs of
# 8 s (about 2 h 25 min with fio's start-up), plus fills, server restarts,
# the dataset step and the microbenchmarks: plan for 2 h 40 min.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "$0")/lib/common.sh"

ALL_TARGETS="fio-raw nbdkit-file nbdkit-memory qemu-nbd
  insitu-none-wb insitu-none-wt insitu-lz4-wb insitu-lz4-wt insitu-lzo-wb insitu-lzo-wt
  insitu-zstd1-wb insitu-zstd1-wt insitu-zlib1-wb insitu-zlib1-wt insitu-lz4-wb-4k
  insitu-lz4-wb-noseg insitu-lzo-wb-noseg"
ALL_WORKLOADS="randread4k randwrite4k randrw4k seqread128k seqwrite128k"

configure() {
  if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    : "${BENCH_SECONDS:=2}" "${BENCH_ROUNDS:=1}" "${BENCH_DEPTHS:=16}" "${BENCH_CONNS:=1}"
    : "${BENCH_TARGETS:=fio-raw nbdkit-file qemu-nbd insitu-lz4-wb}"
    : "${BENCH_WORKLOADS:=randwrite4k randread4k seqwrite128k seqread128k}"
    : "${BENCH_MICRO_MIN_TIME:=0.05}" "${BENCH_MICRO_REPS:=1}"
    : "${BENCH_DATASET_TARGETS:=nbdkit-file insitu-lz4-wb insitu-zstd1-wb}"
    export BENCH_DATASET_TARGETS
  fi
  : "${BENCH_SECONDS:=8}" "${BENCH_ROUNDS:=3}" "${BENCH_SIZE:=1G}" "${BENCH_RANGE:=512M}"
  : "${BENCH_TARGETS:=$ALL_TARGETS}" "${BENCH_WORKLOADS:=$ALL_WORKLOADS}"
  : "${BENCH_DEPTHS:=1 16}" "${BENCH_CONNS:=1 4}" "${BENCH_MICRO_MIN_TIME:=0.5}"
  : "${BENCH_MICRO_REPS:=5}"
  # shellcheck disable=SC2086  # the lists are words
  check_targets $BENCH_TARGETS
  local c wl
  for wl in $BENCH_WORKLOADS; do workload_args "$wl"; done  # dies on an unknown one
  RANGE_BYTES=$(bytes_of "$BENCH_RANGE")
  for c in $BENCH_CONNS; do
    # Each connection gets a whole number of 128 KiB extents of the range.
    ((RANGE_BYTES % (c * 131072) == 0)) || die "BENCH_RANGE must split into $c x 128 KiB"
  done
  (($(bytes_of "$BENCH_SIZE") >= RANGE_BYTES + (64 << 20))) ||
    die "BENCH_SIZE must exceed BENCH_RANGE by 64 MiB (insitu metadata lives in the file)"
}

build() {
  [[ ${BENCH_BUILD:-1} == 1 ]] || return 0
  local targets=(insitu insitud)
  if [[ ${BENCH_MICRO:-1} == 1 ]]; then targets+=(insitu_micro); fi
  log "building ${targets[*]} in $BUILD"
  if ! cmake -S "$REPO" -B "$BUILD" -DINSITU_BENCH=ON >"$OUT/logs/build.log" 2>&1 ||
    ! cmake --build "$BUILD" -j "$(nproc)" --target "${targets[@]}" >>"$OUT/logs/build.log" 2>&1; then
    die "build failed; see $OUT/logs/build.log"
  fi
}

# Starts from an empty results directory (the dataset image cache stays).
clean_results() {
  rm -f "$OUT"/*.csv "$OUT"/*.md "$OUT"/*.png "$OUT"/micro.json "$OUT"/config.txt
  rm -rf "$OUT/plot-data" "$OUT/logs"
  mkdir -p "$OUT/logs"
}

version_of() { "$@" 2>&1 | head -n1; }

host_facts() {
  local commit dirty=""
  commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  [[ -n $(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null) ]] &&
    dirty=" (with uncommitted changes)"
  cat >"$OUT/host.md" <<EOF
## Host

| | |
|---|---|
| date | $(date -u '+%Y-%m-%d %H:%M UTC') |
| kernel | $(uname -srm) |
| CPU | $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) × $(nproc) |
| memory | $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) |
| backing files | $(findmnt -n -o FSTYPE -T "$WORK") on ${TMPDIR:-/var/tmp} |
| insitu | commit $commit$dirty |
| fio | $(version_of fio --version) |
| nbdkit | $(version_of nbdkit --version) |
| qemu-nbd | $(version_of qemu-nbd --version) |
| nbdcopy | $(version_of nbdcopy --version) |

EOF
}

method_notes() {
  cat >"$OUT/method.md" <<EOF
## Method

$PLACEMENT (\`taskset\`). Each round runs every
target once, in the order \`$(xargs <<<"$BENCH_TARGETS")\`, so targets alternate
and slow drifts of the machine hit all of them alike; a target's server is
started for the round, runs every cell, and is stopped (SIGTERM) at its end.
Tables show the median over $BENCH_ROUNDS round(s) of $BENCH_SECONDS s runs.
fio writes realistic data, never zeros: \`--buffer_compress_percentage=60
--buffer_compress_chunk=4k --refill_buffers\`. A target is filled once when
it is fresh (created, or nbdkit-memory at every start) with 128 KiB
sequential writes over the $BENCH_RANGE range, so reads return real payloads
and 4k random writes overwrite existing 128 KiB extents (read-modify-write,
except on \`insitu-lz4-wb-4k\`). With M connections, fio runs M jobs, each
on its own NBD connection and its own 1/M of the range. Volumes and raw
files are $BENCH_SIZE sparse files; \`fio-raw\` is fio itself with io_uring
and O_DIRECT on a raw file (no NBD: the device limit).

Cells: workloads \`$(xargs <<<"$BENCH_WORKLOADS")\`, iodepth \`$BENCH_DEPTHS\`,
connections \`$BENCH_CONNS\`.

EOF
  printf 'range_bytes=%s\n' "$RANGE_BYTES" >"$OUT/config.txt"
}

# ---- microbenchmarks -------------------------------------------------------

run_micro() {
  local bin="$BUILD/bench/micro/insitu_micro" sample="$WORK/fio-sample.bin"
  [[ -x $bin ]] || die "$bin not built (configure with -DINSITU_BENCH=ON)"
  # A sample of exactly what fio writes in the NBD runs, for the codecs.
  fio --name=sample --filename="$sample" --rw=write --bs=128k --size=8M \
    --buffer_compress_percentage=60 --buffer_compress_chunk=4k --refill_buffers \
    >>"$OUT/logs/fio.log" 2>&1 || die "fio sample failed; see $OUT/logs/fio.log"
  # Repetitions run in random order, interleaved with the other benchmarks'
  # (A B A B, as the NBD rounds): the report takes each one's median.
  local reps=(--benchmark_repetitions="$BENCH_MICRO_REPS")
  if ((BENCH_MICRO_REPS > 1)); then reps+=(--benchmark_enable_random_interleaving=true); fi
  log "microbenchmarks ($BENCH_MICRO_REPS × min time $BENCH_MICRO_MIN_TIME s each)"
  INSITU_MICRO_FIO_DATA=$sample "$bin" --benchmark_min_time="$BENCH_MICRO_MIN_TIME" "${reps[@]}" \
    --benchmark_out="$OUT/micro.json" --benchmark_out_format=json \
    >"$OUT/logs/micro.txt" 2>&1 || die "insitu_micro failed; see $OUT/logs/micro.txt"
}

# ---- the fio matrix --------------------------------------------------------

# fio's way to the running target: NBD, or the raw file for fio-raw.
fio_io_args() {
  if [[ $1 == fio-raw ]]; then
    FIO_IO=(--ioengine=io_uring --direct=1 --filename="$URI")
  else
    FIO_IO=(--ioengine=nbd --uri="$URI")
  fi
}

workload_args() {
  case $1 in
    randread4k) WL_ARGS=(--rw=randread --bs=4k) ;;
    randwrite4k) WL_ARGS=(--rw=randwrite --bs=4k) ;;
    randrw4k) WL_ARGS=(--rw=randrw --rwmixread=70 --bs=4k) ;;
    seqread128k) WL_ARGS=(--rw=read --bs=128k) ;;
    seqwrite128k) WL_ARGS=(--rw=write --bs=128k) ;;
    *) die "unknown workload $1" ;;
  esac
}

# M connections = M fio jobs, each with its own NBD connection and slice.
layout_args() {
  local per=$((RANGE_BYTES / $1))
  LAYOUT=(--numjobs="$1" --group_reporting --size="$per" --offset_increment="$per")
}

# fio pinned to the client CPU with the buffer contents every run uses; the
# JSON goes to a file because fio's nbd engine prints a line before it.
run_fio() {
  local json=$1
  shift
  taskset -c "$CLIENT_CPU" fio --name=bench --output-format=json --output="$json" \
    --buffer_compress_percentage=60 --buffer_compress_chunk=4k --refill_buffers \
    "${FIO_IO[@]}" "$@" >>"$OUT/logs/fio.log" 2>&1 || die "fio failed; see $OUT/logs/fio.log"
}

server_cpu() { if [[ -n $SERVER_PID ]]; then proc_cpu_s "$SERVER_PID"; fi; }
server_minflt() { if [[ -n $SERVER_PID ]]; then proc_minflt "$SERVER_PID"; fi; }

fill_target() {
  local t0 t1
  t0=$(now)
  run_fio "$WORK/fill.json" --rw=write --bs=128k --iodepth=16 --size="$RANGE_BYTES"
  t1=$(now)
  FILL_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
  FILL_MBPS=$(report fio-summary "$WORK/fill.json" | cut -d' ' -f2)
}

# One fio run of one cell; appends a row to results.csv.
run_cell() {
  local name=$1 round=$2 wl=$3 depth=$4 conns=$5 cpu0 cpu1 flt0 flt1
  local iops mbps rbytes wbytes p99 ccpu
  workload_args "$wl"
  layout_args "$conns"
  cpu0=$(server_cpu)
  flt0=$(server_minflt)
  run_fio "$WORK/run.json" "${WL_ARGS[@]}" "${LAYOUT[@]}" --iodepth="$depth" --time_based \
    --runtime="$BENCH_SECONDS" --norandommap
  cpu1=$(server_cpu)
  flt1=$(server_minflt)
  sample_anon
  read -r iops mbps rbytes wbytes p99 ccpu < <(report fio-summary "$WORK/run.json")
  csv_row "$round" "$name" "$wl" "$depth" "$conns" "$BENCH_SECONDS" "$iops" "$mbps" "$rbytes" \
    "$wbytes" "$p99" "${cpu1:+$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {printf "%.2f", b - a}')}" \
    "$ccpu" "${flt1:+$((flt1 - flt0))}" >>"$OUT/results.csv"
  log "  $name $wl qd$depth ${conns}c: $iops IOPS, $mbps MB/s"
}

# One round of one target: start, fill if fresh, every cell, stop, measure.
run_target_round() {
  local name=$1 round=$2 file="$WORK/$1.img" fresh=0 wl depth conns
  local counters="" logical payload meta ratio alloc
  FILL_S="" FILL_MBPS=""
  if [[ ! -e $file ]]; then
    target_create "$name" "$file" "$BENCH_SIZE"
    fresh=1
  else
    # Into the page cache, where the fill left it in round 1: the file sat
    # idle while the other targets ran, and the kernel may have paged it
    # out since (bench/README.md, "Warm page cache").
    cat "$file" >/dev/null
  fi
  if [[ $name == nbdkit-memory ]]; then fresh=1; fi  # starts empty every time
  target_start "$name" "$file"
  fio_io_args "$name"
  if [[ $fresh == 1 ]]; then fill_target; fi
  for wl in $BENCH_WORKLOADS; do
    for depth in $BENCH_DEPTHS; do
      for conns in $BENCH_CONNS; do run_cell "$name" "$round" "$wl" "$depth" "$conns"; done
    done
  done
  target_stop "$file"
  if is_insitu "$name"; then counters=$(insitu_counters "$file"); fi
  read -r logical payload meta ratio <<<"$counters" || true  # empty for peers
  alloc=""
  if [[ $name != nbdkit-memory ]]; then alloc=$(alloc_bytes "$file"); fi  # else: in RAM
  csv_row "$round" "$name" "$NOTE" "$fresh" "$FILL_S" "$FILL_MBPS" "$PEAK_RSS_KIB" "$PEAK_ANON_KIB" \
    "$SERVER_CPU_S" "$logical" "$payload" "$meta" "$ratio" "$alloc" >>"$OUT/targets.csv"
}

run_matrix() {
  local round name
  echo "round,target,workload,depth,conns,seconds,iops,mbps,read_bytes,write_bytes,p99_us,server_cpu_s,client_cpu_s,server_minflt" \
    >"$OUT/results.csv"
  echo "round,target,note,fresh,fill_s,fill_mbps,peak_rss_kib,peak_anon_kib,server_cpu_s,logical_bytes,payload_bytes,meta_bytes,compression_ratio,alloc_bytes" \
    >"$OUT/targets.csv"
  for round in $(seq "$BENCH_ROUNDS"); do
    for name in $BENCH_TARGETS; do
      log "round $round/$BENCH_ROUNDS: $name"
      run_target_round "$name" "$round"
    done
  done
}

main() {
  configure
  local build_dir=${1:-$(dirname "$0")/../build}
  if [[ ${BENCH_BUILD:-1} == 1 ]]; then mkdir -p "$build_dir"; fi
  bench_init "$build_dir"
  ensure_tools fio:fio nbdkit:nbdkit qemu-nbd:qemu-utils nbdcopy:libnbd-bin \
    nbdinfo:libnbd-bin gnuplot:gnuplot-nox mkfs.ext4:e2fsprogs taskset:util-linux \
    cmake:cmake /usr/include/benchmark/benchmark.h:libbenchmark-dev
  clean_results
  build
  host_facts
  method_notes
  if [[ ${BENCH_DATASET:-1} == 1 ]]; then
    BENCH_OUT=$OUT BENCH_BUILD=0 "$REPO/bench/dataset.sh" "$BUILD"
  fi
  if [[ ${BENCH_NBD:-1} == 1 ]]; then run_matrix; fi
  # Last: right after package installs and the build, the codec speeds
  # came out 40 % low on a fresh VM; the matrix alternates its targets and
  # does not mind, the one-shot microbenchmarks do.
  if [[ ${BENCH_MICRO:-1} == 1 ]]; then run_micro; fi
  report results "$OUT"
  log "wrote $OUT/results.md"
}

main "$@"
