#!/bin/bash
# Quick side-by-side: fio 4k randwrite and randread IOPS through NBD on a
# Unix socket, insitu (one codec) versus `nbdkit file` on a raw file of the
# same size.  Server pinned to CPU 1, fio to CPU 0, runs alternate
# (A B A B ...) and the median of each is reported with the ratio.
#
#   bench/nbd_compare.sh BUILD_DIR [CODEC] [ROUNDS] [SECONDS]
#
# INSITU_FORMAT_OPTS adds options to `insitu format` (e.g. --extent-max 4K).
#
# The full benchmark harness (more peers, workloads, plots) is separate.
set -euo pipefail
BUILD=$(cd "${1:?usage: $0 BUILD_DIR [CODEC] [ROUNDS] [SECONDS]}" && pwd)
CODEC=${2:-lz4}
ROUNDS=${3:-3}
SECS=${4:-10}
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/insitu-bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

SIZE=1G
truncate -s "$SIZE" "$WORK/raw.img"
# shellcheck disable=SC2086  # word splitting of the extra options is wanted
"$BUILD/insitu" format -q --size "$SIZE" --compress "$CODEC" ${INSITU_FORMAT_OPTS:-} "$WORK/vol.img"

start_server() {  # kind -> sets SOCK
  SOCK="$WORK/$1.sock"
  rm -f "$SOCK"
  case $1 in
    nbdkit) taskset -c 1 nbdkit -f -U "$SOCK" file "$WORK/raw.img" & ;;
    insitu) taskset -c 1 "$BUILD/insitud" "$WORK/vol.img" --listen "unix:$SOCK" 2>/dev/null & ;;
  esac
  SERVER=$!
  PIDS+=("$SERVER")
  for _ in $(seq 200); do [[ -S $SOCK ]] && return; sleep 0.05; done
  echo "server $1 did not start" >&2
  exit 1
}
stop_server() {
  kill "$SERVER"
  wait "$SERVER" 2>/dev/null || true
}

run_fio() {  # rw -> prints IOPS
  taskset -c 0 fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$SOCK" --rw="$1" --bs=4k \
    --iodepth=16 --size=512M --time_based --runtime="$SECS" --buffer_compress_percentage=60 \
    --refill_buffers --randrepeat=1 --output-format=json --output="$WORK/fio.json" >/dev/null
  # fio's nbd engine prints a line before the JSON, so read the file.
  /usr/bin/python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(int(j["write"]["iops"]+j["read"]["iops"]))' "$WORK/fio.json"
}

declare -A RES
for kind in nbdkit insitu; do  # lay the data down once so reads hit real payloads
  start_server $kind
  taskset -c 0 fio --name=fill --ioengine=nbd --uri="nbd+unix:///?socket=$SOCK" --rw=write \
    --bs=128k --size=512M --buffer_compress_percentage=60 --refill_buffers >/dev/null
  stop_server
done
for r in $(seq "$ROUNDS"); do
  for kind in nbdkit insitu; do
    start_server $kind
    for rw in randwrite randread; do RES[$kind.$rw]+="$(run_fio $rw) "; done
    stop_server
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf "%-10s %12s %12s %8s\n" workload nbdkit-file "insitu-$CODEC" ratio
for rw in randwrite randread; do
  a=$(echo "${RES[nbdkit.$rw]}" | median)
  b=$(echo "${RES[insitu.$rw]}" | median)
  printf "%-10s %12s %12s %8.2f\n" "$rw" "$a" "$b" "$(echo "$b / $a" | bc -l)"
done
