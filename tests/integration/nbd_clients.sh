#!/bin/bash
# Real NBD clients against the real daemon: nbdinfo (size, block sizes,
# flags, holes with --map), nbdcopy in and out with byte-for-byte
# comparison, qemu-img compare, fio --ioengine=nbd random writes verified
# with crc32c, an nbdsh one-liner, the control socket, then SIGTERM (exit
# 0, clean flag), a restart and the same data read back.
source "$(dirname "$0")/lib.bash"

for tool in nbdinfo nbdcopy nbdsh qemu-img fio python3; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done

IMG="$WORK/vol.img"
IN="$WORK/in.bin"
OUT_FILE="$WORK/out.bin"
MiB=$((1 << 20))
DATA_BYTES=$((64 * MiB))
FIO_OFFSET=$((128 * MiB))

# json FILE EXPR: evaluates a Python expression over the parsed file (j).
json() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"; }

# check FILE EXPR WHAT: fails with WHAT unless EXPR is true of the file.
check() {
  [[ $(json "$1" "bool($2)") == True ]] || { cat "$1" >&2; fail "$3"; }
}

step "format a 256 MiB lz4 volume and serve it"
"$INSITU" format -q --size 256M --compress lz4 "$IMG"
start_daemon "$IMG" nbd
URI=$(uri nbd)
grep -q "insitud: serving" "$WORK/nbd.log" || fail "no start line in the daemon's log"

step "control socket status"
"$INSITU" status --json "$WORK/nbd.ctl" >"$WORK/status.json"
check "$WORK/status.json" 'j["volume"]["data_blocks"] > 0 and "connections" in j["server"]' \
  "status lacks volume or server counters"
EXPORT_SIZE=$(json "$WORK/status.json" 'j["volume"]["data_blocks"] * 4096')
# The raw protocol, and an unknown command answered with an error object.
python3 - "$WORK/nbd.ctl" >"$WORK/raw.json" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b"frobnicate\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.decode())
PY
check "$WORK/raw.json" '"error" in j' "an unknown control command got no error object"

step "nbdinfo: size, block sizes, flags"
nbdinfo --json "$URI" >"$WORK/info.json"
check "$WORK/info.json" "j['exports'][0]['export-size'] == $EXPORT_SIZE" \
  "export size differs from the volume's $EXPORT_SIZE bytes"
check "$WORK/info.json" 'j["structured"] and "base:allocation" in j["exports"][0]["contexts"]' \
  "no structured replies or no base:allocation"
e='j["exports"][0]'
check "$WORK/info.json" "${e}['block_size_minimum'] == 1 and ${e}['block_size_preferred'] == 4096 and ${e}['block_size_maximum'] == 32 << 20" \
  "block size constraints are not 1/4096/32M"
for flag in can_multi_conn can_fua can_flush can_trim can_zero can_cache; do
  check "$WORK/info.json" "${e}['$flag'] is True" "$flag is not set"
done
check "$WORK/info.json" "${e}['is_read_only'] is False" "export is read-only"

step "nbdinfo --map: a fresh volume is one hole"
nbdinfo --map "$URI" >"$WORK/map0"
cat "$WORK/map0"
if [[ $(wc -l <"$WORK/map0") -ne 1 ]] ||
  ! awk -v n="$EXPORT_SIZE" '$1 == 0 && $2 == n && $3 == 3' "$WORK/map0" | grep -q .; then
  fail "fresh volume is not reported as a single hole,zero extent"
fi

step "nbdcopy 64 MiB in (random, text and zero MiBs)"
make_test_data "$IN" "$DATA_BYTES" 2024
nbdcopy "$IN" "$URI" || fail "nbdcopy into the export failed"

step "nbdinfo --map: data where written, a hole after it"
nbdinfo --map "$URI" >"$WORK/map1"
cat "$WORK/map1"
awk '$1 == 0 && $3 == 0' "$WORK/map1" | grep -q . || fail "no data extent at offset 0 after writing"
tail -n1 "$WORK/map1" | awk -v n="$EXPORT_SIZE" '$1 + $2 == n && $3 == 3' | grep -q . ||
  fail "the unwritten end of the volume is not a hole"

# copy_out: copies the whole export out and checks it starts with $IN.
copy_out() {
  rm -f "$OUT_FILE"
  nbdcopy "$URI" "$OUT_FILE" || fail "nbdcopy out of the export failed"
  [[ $(stat -c %s "$OUT_FILE") -eq $EXPORT_SIZE ]] || fail "copied-out size is wrong"
  cmp -n "$DATA_BYTES" "$IN" "$OUT_FILE" || fail "data read back differs from data written"
}

step "nbdcopy out and cmp"
copy_out
cmp -i "$DATA_BYTES" -n $((EXPORT_SIZE - DATA_BYTES)) "$OUT_FILE" /dev/zero ||
  fail "the unwritten part of the export does not read as zeros"

step "qemu-img compare"
qemu-img compare -f raw -F raw "$IN" "$URI" || fail "qemu-img compare found a difference"

FIO_ARGS=(--name=randwrite --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=16
  --offset="$FIO_OFFSET" --size=64M --runtime=120 --verify=crc32c --verify_fatal=1
  --buffer_compress_percentage=50 --refill_buffers --randrepeat=1 --verify_state_save=0)
step "fio --ioengine=nbd 4k randwrite, verify=crc32c"
fio "${FIO_ARGS[@]}" >"$WORK/fio.log" 2>&1 || { cat "$WORK/fio.log"; fail "fio failed"; }
grep -E "write: IOPS|err= *0" "$WORK/fio.log" || true
grep -q "err= 0" "$WORK/fio.log" || { cat "$WORK/fio.log"; fail "fio reported errors"; }

step "nbdsh one-liner"
# nbdsh runs the first python3 on PATH; the nbd module belongs to the
# system one.
PATH=/usr/bin:$PATH nbdsh -u "$URI" -c "
import sys
assert h.get_size() == $EXPORT_SIZE
assert h.can_multi_conn() and h.can_fua() and h.can_trim()
assert h.pread(65536, 0) == open('$IN', 'rb').read(65536)
h.pwrite(b'x' * 512, $((200 * MiB)), nbd.CMD_FLAG_FUA)
assert h.pread(512, $((200 * MiB))) == b'x' * 512
h.zero(512, $((200 * MiB)))
assert h.pread(512, $((200 * MiB))) == bytes(512)
h.flush()
" || fail "nbdsh checks failed"

step "status counts the traffic"
"$INSITU" status --json "$WORK/nbd.ctl" >"$WORK/status2.json"
check "$WORK/status2.json" 'j["volume"]["logical_bytes_written"] > 0 and j["server"]["requests_total"] > 1000' \
  "status does not show the writes"
check "$WORK/status2.json" 'j["volume"]["blocks_compressed"] > 0' "nothing was stored compressed"

step "SIGTERM: exit 0 and a clean volume"
stop_daemon
[[ ! -e $WORK/nbd.sock && ! -e $WORK/nbd.ctl ]] || fail "sockets left behind after shutdown"
"$INSITU" dump --json --no-extents "$IMG" >"$WORK/dump.json"
check "$WORK/dump.json" 'j["superblock"]["state"] == "clean"' "volume not marked clean after SIGTERM"

step "restart: the data is intact"
start_daemon "$IMG" nbd
copy_out
fio "${FIO_ARGS[@]}" --verify_only=1 >"$WORK/fio-verify.log" 2>&1 ||
  { cat "$WORK/fio-verify.log"; fail "fio verification after restart failed"; }
stop_daemon
if grep -E 'Sanitizer|runtime error:' "$WORK/nbd.log"; then fail "sanitizer report in the daemon log"; fi
echo "PASS: nbd_clients"
