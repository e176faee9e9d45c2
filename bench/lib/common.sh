# shellcheck shell=bash
# shellcheck disable=SC2034  # globals (URI, NOTE, ...) are set for the caller
# Shared by bench/run.sh and bench/dataset.sh (sourced, not run).
#
# Targets are named, and everything about one lives in the target_* functions:
#   fio-raw          fio with io_uring + O_DIRECT on a raw file: no NBD at all
#   nbdkit-file      nbdkit's file plugin on a raw file
#   nbdkit-memory    nbdkit's memory plugin (RAM; empty at every start)
#   qemu-nbd         qemu-nbd on a raw file, --cache=none, io_uring if it works
#   insitu-CODEC-MODE[-4k|-segNk|-noseg]
#                    insitud on an insitu volume; CODEC is none, lz4, lzo,
#                    zstd1 (zstd:1) or zlib1 (zlib:1), MODE wb (writeback) or
#                    wt (writethrough), -4k formats with --extent-max 4K,
#                    -segNk with --segment NK, -noseg with --segment none
#                    (otherwise the codec's default segments).
# Servers run on CPU 1 and clients (fio, nbdcopy) on CPU 0, so client and
# server never compete for a core and runs are comparable.  BENCH_PIN=0
# lets both run on every CPU instead, as a deployment would.

if [[ ${BENCH_PIN:-1} == 0 ]]; then
  SERVER_CPU="0-$(($(nproc) - 1))"
  CLIENT_CPU=$SERVER_CPU
  PLACEMENT="Servers and clients (fio, nbdcopy) run on any CPU (BENCH_PIN=0: $(nproc) CPUs, shared)"
else
  SERVER_CPU=1
  CLIENT_CPU=0
  PLACEMENT="Servers run on CPU 1 and clients (fio, nbdcopy) on CPU 0"
fi
export PLACEMENT
PIDS=()  # every process started here, killed by id on exit

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# REPO, BUILD (absolute), OUT (results), WORK (temporary, removed on exit),
# PY, and the cleanup trap.
bench_init() {
  REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  BUILD=$(cd "${1:-$REPO/build}" 2>/dev/null && pwd) || die "build directory ${1:-$REPO/build} not found"
  OUT=${BENCH_OUT:-$REPO/bench/results}
  mkdir -p "$OUT/logs"
  OUT=$(cd "$OUT" && pwd)
  WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/insitu-bench.XXXXXX")
  PY=/usr/bin/python3
  [[ -x $PY ]] || PY=python3
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM  # so the EXIT trap runs on Ctrl-C and kill too
}

bench_cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}

report() { "$PY" "$REPO/bench/lib/report.py" "$@"; }

# Installs the Debian packages that are missing, given as WHAT:PACKAGE where
# WHAT is a command or an absolute path the package provides.
ensure_tools() {
  local spec what missing=()
  for spec in "$@"; do
    what=${spec%%:*}
    if [[ $what == /* ]]; then
      [[ -e $what ]] || missing+=("${spec#*:}")
    else
      command -v "$what" >/dev/null || missing+=("${spec#*:}")
    fi
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  [[ $(id -u) -eq 0 ]] || die "missing packages: ${missing[*]} (install them, or run as root)"
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends "${missing[@]}" >&2; }
}

bytes_of() { numfmt --from=iec "$1"; }  # 1G -> 1073741824

now() { date +%s.%N; }

# /proc/$1/stat from field 3 (state) on: field 2 (comm) may hold spaces,
# so everything up to its closing ')' goes.  Field N of proc(5) is $((N-2)).
proc_stat_fields() { sed 's/^.*) //' "/proc/$1/stat"; }

# utime + stime of a process in seconds (all its threads).
proc_cpu_s() {
  local ticks
  ticks=$(proc_stat_fields "$1" | awk '{print $12 + $13}')
  awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}'
}

# Minor page faults of process $1 so far (its threads', reaped ones too):
# the mapped page cache faults in as reads first touch it.
proc_minflt() { proc_stat_fields "$1" | awk '{print $8}'; }

# R, S, D, Z, ... or nothing once the process is gone (bash reaps its
# exited children by itself, so a server that has exited is usually gone).
proc_state() {
  local stat
  stat=$(proc_stat_fields "$1" 2>/dev/null) || return 0
  echo "${stat%% *}"
}

proc_hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
# The process's own memory (anonymous and shared-memory pages), without the
# page-cache pages of files it maps, which VmRSS and VmHWM count.
proc_anon_kib() { awk '/^(RssAnon|RssShmem):/ {s += $2} END {print s + 0}' "/proc/$1/status"; }

# Raises PEAK_ANON_KIB to the running server's anonymous RSS now (there is
# no kernel high-water mark for it, so it is sampled after every fio run).
sample_anon() {
  local kib
  [[ -n $SERVER_PID ]] || return 0
  kib=$(proc_anon_kib "$SERVER_PID")
  if ((kib > ${PEAK_ANON_KIB:-0})); then PEAK_ANON_KIB=$kib; fi
}

alloc_bytes() { stat -c '%b %B' "$1" | awk '{print $1 * $2}'; }

# ---- targets ---------------------------------------------------------------

target_kind() {
  case $1 in
    fio-raw | nbdkit-file | nbdkit-memory | qemu-nbd) echo "$1" ;;
    insitu-*) echo insitu ;;
    *) die "unknown target $1" ;;
  esac
}

is_insitu() { [[ $1 == insitu-* ]]; }

# Dies on an unknown target name.  Runs in the main shell, not in a command
# substitution (where die would end only the subshell), before any work.
check_targets() {
  local name
  for name in "$@"; do
    target_kind "$name" >/dev/null
    if is_insitu "$name"; then insitu_format_args "$name" >/dev/null; fi
  done
}

# insitu-zstd1-wt-4k -> "--compress zstd:1 --meta writethrough --extent-max 4K"
insitu_format_args() {
  local codec mode rest
  IFS=- read -r _ codec mode rest <<<"$1"
  case $codec in
    none | lz4 | lzo) ;;
    zstd1) codec=zstd:1 ;;
    zlib1) codec=zlib:1 ;;
    *) die "target $1: unknown codec $codec" ;;
  esac
  case $mode in
    wb) mode=writeback ;;
    wt) mode=writethrough ;;
    *) die "target $1: mode must be wb or wt" ;;
  esac
  echo "--compress $codec --meta $mode"
  case $rest in
    "") ;;
    4k) echo "--extent-max 4K" ;;
    seg[0-9]*k) echo "--segment ${rest#seg}" | tr k K ;;
    noseg) echo "--segment none" ;;
    *) die "target $1: unknown suffix $rest" ;;
  esac
}

# Creates the backing file of target $1 at $2, of $3 bytes (a raw file or
# an insitu volume; for nbdkit-memory a file holding just the size).
target_create() {
  local name=$1 file=$2 size=$3 opts
  case $(target_kind "$name") in
    insitu)
      opts=$(insitu_format_args "$name")
      # shellcheck disable=SC2086  # the format options are words
      "$BUILD/insitu" format -q --size "$size" $opts "$file"
      ;;
    nbdkit-memory) echo "$size" >"$file" ;;  # the data lives in nbdkit: keep the size
    *) truncate -s "$size" "$file" ;;
  esac
}

# Waits up to 10 s for the Unix socket(s) $2... of the server $1; fails
# as soon as the server has exited (a zombie counts as exited).
wait_ready() {
  local pid=$1 path ok state
  shift
  for _ in $(seq 400); do
    state=$(proc_state "$pid")
    [[ -n $state && $state != [ZX] ]] || return 1
    ok=1
    for path in "$@"; do [[ -S $path ]] || ok=0; done
    [[ $ok -eq 1 ]] && return 0
    sleep 0.025
  done
  return 1
}

# Starts a server command pinned to the server CPU; sets SERVER_PID.
spawn_server() {
  local logfile=$1
  shift
  taskset -c "$SERVER_CPU" "$@" >>"$logfile" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
}

# Starts target $1 on backing file $2.  Sets SERVER_PID (empty for fio-raw),
# URI (NBD URI, or the file for fio-raw), CTL (insitu control socket) and
# NOTE (how the server ended up configured).
target_start() {
  local name=$1 file=$2 sock="$WORK/$1.sock" logfile="$OUT/logs/$1.log"
  CTL="" NOTE="" SERVER_PID="" URI="nbd+unix:///?socket=$sock" PEAK_ANON_KIB=0
  rm -f "$sock"
  case $(target_kind "$name") in
    fio-raw)
      URI=$file
      NOTE="io_uring, O_DIRECT"
      return
      ;;
    nbdkit-file)
      spawn_server "$logfile" nbdkit -f -U "$sock" file "$file"
      NOTE="page cache"
      ;;
    nbdkit-memory)
      spawn_server "$logfile" nbdkit -f -U "$sock" memory "$(<"$file")"
      NOTE="RAM"
      ;;
    qemu-nbd)
      start_qemu_nbd "$file" "$sock" "$logfile"
      return
      ;;
    insitu)
      CTL="$WORK/$name.ctl"
      rm -f "$CTL"
      # shellcheck disable=SC2086  # BENCH_INSITUD_ARGS is a list of options
      spawn_server "$logfile" "$BUILD/insitud" "$file" --listen "unix:$sock" --control "$CTL" \
        ${BENCH_INSITUD_ARGS:-}
      NOTE=${BENCH_INSITUD_ARGS:-"defaults (--io auto: page cache)"}
      ;;
  esac
  wait_ready "$SERVER_PID" "$sock" ${CTL:+"$CTL"} || die "$name did not start; see $logfile"
}

# qemu-nbd with --cache=none and the best AIO mode that both starts and
# completes a read: io_uring, else native, else threads.
start_qemu_nbd() {
  local file=$1 sock=$2 logfile=$3 aio
  for aio in io_uring native threads; do
    rm -f "$sock"
    # --shared: one connection per fio job; --persistent: survive the
    # disconnect between runs.
    spawn_server "$logfile" qemu-nbd -k "$sock" -f raw --cache=none --aio="$aio" --shared=16 \
      --persistent "$file"
    if wait_ready "$SERVER_PID" "$sock" && probe_read "nbd+unix:///?socket=$sock"; then
      NOTE="--cache=none --aio=$aio"
      return
    fi
    log "qemu-nbd refused --aio=$aio; trying the next mode"
    stop_pid "$SERVER_PID"
  done
  die "qemu-nbd did not start; see $logfile"
}

probe_read() {
  taskset -c "$CLIENT_CPU" fio --name=probe --ioengine=nbd --uri="$1" --rw=read --bs=4k \
    --size=4k --output="$WORK/probe.json" --output-format=json >/dev/null 2>&1
}

# SIGTERM, then SIGKILL if the process has not exited after 60 s.  Polls
# instead of running a timer process, so nothing is left behind.
stop_pid() {
  local pid=$1 state
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1200); do
    state=$(proc_state "$pid")
    [[ -n $state && $state != [ZX] ]] || break
    sleep 0.05
  done
  if [[ -n $state && $state != [ZX] ]]; then
    log "process $pid ignored SIGTERM for 60 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}

# Drops a reaped process from PIDS, so the exit trap never signals a
# process that has since reused its id.
forget_pid() {
  local i
  for i in "${!PIDS[@]}"; do
    if [[ ${PIDS[i]} == "$1" ]]; then unset 'PIDS[i]'; fi
  done
}

# Stops the running target; sets PEAK_RSS_KIB, PEAK_ANON_KIB and SERVER_CPU_S (taken just
# before the stop), then flushes the backing file so its write-back does
# not run into the next target's measurements.
target_stop() {
  local file=$1
  PEAK_RSS_KIB="" SERVER_CPU_S=""
  if [[ -n $SERVER_PID ]]; then
    PEAK_RSS_KIB=$(proc_hwm_kib "$SERVER_PID")
    sample_anon
    SERVER_CPU_S=$(proc_cpu_s "$SERVER_PID")
    stop_pid "$SERVER_PID"
  fi
  [[ -f $file ]] && sync "$file"
  SERVER_PID=""
}

# Prints the volume counters of the insitu volume file $1 (after a clean
# stop): logical payload meta compression_ratio.
insitu_counters() {
  "$BUILD/insitu" dump --json --no-extents "$1" >"$WORK/dump.json"
  report json-get "$WORK/dump.json" stats.logical_bytes_written stats.payload_bytes_written \
    stats.meta_bytes_written stats.compression_ratio
}

# One CSV line, every field quoted (fields may hold commas).
csv_row() {
  local f out=()
  for f in "$@"; do out+=("\"${f//\"/\"\"}\""); done
  (
    IFS=,
    echo "${out[*]}"
  )
}
