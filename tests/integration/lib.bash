# Shared helpers for the integration tests.  Source it; $BUILD must point
# at the build directory holding insitu and insitud.
#
# Every test works in its own temporary directory, starts servers on Unix
# sockets inside it, and on exit stops exactly the processes it started
# (by PID) and removes the directory.

set -euo pipefail

BUILD=$(cd "${1:?usage: $0 BUILD_DIR}" && pwd)
INSITU="$BUILD/insitu"
INSITUD="$BUILD/insitud"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/insitu-test.XXXXXX")
CLEANUP=()  # commands run in reverse order on exit

cleanup() {
  local i
  for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do
    eval "${CLEANUP[i]}" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

step() { echo "--- $*"; }

wait_for_socket() {  # PATH PID
  local i
  for ((i = 0; i < 200; i++)); do
    [[ -S $1 ]] && return 0
    kill -0 "$2" 2>/dev/null || fail "server (pid $2) exited before creating $1"
    sleep 0.05
  done
  fail "timed out waiting for $1"
}

# start_daemon IMAGE NAME [insitud options...]: starts insitud on
# $WORK/NAME.sock with control socket $WORK/NAME.ctl; sets DAEMON_PID.
start_daemon() {
  local image=$1 name=$2
  shift 2
  "$INSITUD" "$image" --listen "unix:$WORK/$name.sock" --control "$WORK/$name.ctl" "$@" \
    2>>"$WORK/$name.log" &
  DAEMON_PID=$!
  CLEANUP+=("kill -9 $DAEMON_PID")
  wait_for_socket "$WORK/$name.sock" "$DAEMON_PID"
}

# stop_daemon: SIGTERM, and the daemon must exit 0 within 30 s.
stop_daemon() {
  local i
  kill -TERM "$DAEMON_PID"
  for ((i = 0; i < 600; i++)); do
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.05
  done
  local rc=0
  wait "$DAEMON_PID" || rc=$?
  [[ $rc -eq 0 ]] || fail "insitud exited with status $rc after SIGTERM"
}

uri() { echo "nbd+unix:///?socket=$WORK/$1.sock"; }

# make_test_data FILE BYTES SEED: whole MiBs cycling through random,
# text, text and zero data, so a volume stores raw, compressed and
# unwritten extents.
make_test_data() {
  python3 - "$1" "$2" "$3" <<'PY'
import random, sys
rng = random.Random(int(sys.argv[3]))
words = [b"block ", b"extent ", b"insitu ", b"payload ", b"sector ", b"compress\n"]
with open(sys.argv[1], "wb") as f:
    for i in range(int(sys.argv[2]) >> 20):
        kind = i % 4
        if kind == 0:
            f.write(rng.randbytes(1 << 20))
        elif kind == 3:
            f.write(bytes(1 << 20))
        else:
            f.write(b"".join(rng.choice(words) for _ in range(200000))[: 1 << 20])
PY
}

OUT="$WORK/out"
ERR="$WORK/err"

# expect RC COMMAND...: runs COMMAND with stdout in $OUT and stderr in $ERR
# and fails unless it exits with RC.  A crash (signal, uncaught exception)
# shows up as 128+N or 134 and so fails every expectation; a sanitizer
# report is looked for by name, because it exits with 1 like an error does.
expect() {
  local want=$1 rc=0
  shift
  "$@" >"$OUT" 2>"$ERR" || rc=$?
  if [[ $rc -ne $want ]] || grep -qE 'Sanitizer|runtime error:|terminate called' "$ERR"; then
    cat "$OUT" "$ERR" >&2
    fail "expected exit $want, got $rc: $*"
  fi
}

# says FILE TEXT: FILE contains TEXT (fixed string).
says() {
  grep -qF -- "$2" "$1" || {
    cat "$1" >&2
    fail "$(basename "$1") lacks '$2'"
  }
}

