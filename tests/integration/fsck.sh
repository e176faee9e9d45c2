#!/bin/bash
# fsck.insitu and `insitu check` against the real binaries: a volume written
# through insitud with nbdcopy checks clean; a damaged primary superblock is
# found (-n: 4), restored (-y: 1) and the data reads back intact; a damaged
# payload is left by -p (4), marked bad by -y and listed by --list-bad, and
# reading it fails instead of returning garbage; --json parses; a file that
# holds no volume is an operational error (8) that says what it holds; a
# wrong command line exits 16.
source "$(dirname "$0")/lib.bash"

for tool in nbdcopy nbdsh python3 dd cmp; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done

FSCK="$BUILD/fsck.insitu"
IMG="$WORK/vol.img"
IN="$WORK/in.bin"
MiB=$((1 << 20))
DATA_BYTES=$((32 * MiB))

# json FILE EXPR: evaluates a Python expression over the parsed file (j).
json() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"; }

# copy_out NAME FILE: serves the volume read-only and copies the export out.
copy_out() {
  start_daemon "$IMG" "$1" --readonly
  nbdcopy "$(uri "$1")" "$2" || fail "nbdcopy out of the export failed"
  stop_daemon
}

step "format a 128 MiB zstd volume, write 32 MiB through insitud"
"$INSITU" format -q --size 128M --compress zstd "$IMG"
make_test_data "$IN" "$DATA_BYTES" 7
start_daemon "$IMG" write
nbdcopy "$IN" "$(uri write)" || fail "nbdcopy into the export failed"
stop_daemon

step "a cleanly stopped volume checks clean"
expect 0 "$FSCK" -fn "$IMG"
says "$OUT" "Pass 1: Checking superblocks"
says "$OUT" "Pass 4: Checking counters"
says "$OUT" "blocks used ("
expect 0 "$FSCK" -n "$IMG"
says "$OUT" "clean"
expect 0 "$FSCK" -p "$IMG"
expect 0 "$INSITU" check -f "$IMG"
says "$OUT" "compressed"

step "progress bar on a terminal only"
[[ ! -s $ERR ]] || fail "progress or noise on a non-terminal stderr: $(cat "$ERR")"
if command -v script >/dev/null; then
  script -qec "$FSCK -fn $IMG" /dev/null >"$WORK/tty.log" || fail "fsck on a terminal failed"
  grep -q '%' "$WORK/tty.log" || fail "no progress bar on a terminal"
fi

step "a damaged primary superblock: -n finds it, -y restores it"
dd if=/dev/urandom of="$IMG" bs=1 seek=100 count=16 conv=notrunc status=none
expect 4 "$FSCK" -n "$IMG"
says "$OUT" "Primary superblock damaged"
says "$OUT" "? no"
expect 1 "$FSCK" -y "$IMG"
says "$OUT" "Restore it from the backup copy? yes"
says "$OUT" "***** VOLUME WAS MODIFIED *****"
expect 0 "$FSCK" -fn "$IMG"
copy_out read1 "$WORK/out1.bin"
cmp -n "$DATA_BYTES" "$IN" "$WORK/out1.bin" || fail "data differs after the superblock repair"

step "insitu check --json"
expect 0 "$INSITU" check --json -f "$IMG"
[[ $(json "$OUT" 'j["exit_code"] == 0 and j["full_check"] and j["problems"] == []') == True ]] ||
  fail "--json report of a clean volume is wrong: $(cat "$OUT")"
[[ $(json "$OUT" 'j["stats"]["blocks_compressed"] > 0 and j["stats"]["blocks_raw"] > 0') == True ]] ||
  fail "--json lacks the block counts"

step "a damaged payload: -p leaves it, -y marks it bad, reads of it fail"
"$INSITU" dump --json "$IMG" >"$WORK/dump.json"
read -r head nblocks start data_offset < <(json "$WORK/dump.json" \
  '" ".join(str(x) for x in next((e["head_block"], e["nblocks"], e["payload_start"], j["superblock"]["data_offset"]) for e in j["extents"] if e["kind"] == "compressed" and e["nblocks"] > 1))')
dd if=/dev/urandom of="$IMG" bs=1 seek=$((data_offset + head * 4096 + start * 512 + 100)) count=8 conv=notrunc \
  status=none
expect 4 "$FSCK" -fn "$IMG"
says "$OUT" "unreadable"
expect 4 "$FSCK" -fp "$IMG"
says "$OUT" "UNEXPECTED INCONSISTENCY"
expect 1 "$FSCK" -fy --list-bad "$IMG"
says "$OUT" "Bad blocks"
says "$OUT" "blocks $head-$((head + nblocks - 1)) ($nblocks)"
expect 0 "$FSCK" -fn "$IMG"
says "$OUT" "$nblocks bad"
expect 0 "$INSITU" check -f --json --list-bad "$IMG"
[[ $(json "$OUT" "j['bad_blocks'][0]['first_block'] == $head and j['bad_blocks'][0]['device_offset'] == $data_offset + $head * 4096") == True ]] ||
  fail "--json --list-bad does not list the lost extent"
start_daemon "$IMG" read2 --readonly
PATH=/usr/bin:$PATH nbdsh -u "$(uri read2)" -c "
try:
    h.pread(4096, $head * 4096)
except nbd.Error:
    pass
else:
    raise SystemExit('a lost block was read without an error')
assert h.pread(4096, 0) == open('$IN', 'rb').read(4096)
" || fail "reads of a lost block must fail, others succeed"
stop_daemon

step "not a volume: exit 8 with a message that says what it is"
truncate -s 64M "$WORK/zero.img"
expect 8 "$FSCK" -n "$WORK/zero.img"
says "$ERR" "not an insitu volume"
if command -v mkfs.ext4 >/dev/null; then
  truncate -s 64M "$WORK/ext4.img"
  mkfs.ext4 -q -F "$WORK/ext4.img"
  before=$(sha256sum <"$WORK/ext4.img")
  expect 8 "$FSCK" -y "$WORK/ext4.img"
  says "$ERR" "ext2/ext3/ext4"
  [[ $(sha256sum <"$WORK/ext4.img") == "$before" ]] || fail "fsck -y changed a file system image"
fi
expect 8 "$FSCK" -n "$WORK/missing.img"
says "$ERR" "missing.img"

step "usage errors exit 16"
expect 16 "$FSCK" -n -y "$IMG"
expect 16 "$FSCK"
expect 16 "$FSCK" --frobnicate "$IMG"
expect 16 "$INSITU" check -p -n "$IMG"
expect 0 "$FSCK" --help
says "$OUT" "Exit status"
expect 0 "$FSCK" -a "$IMG"

echo "PASS: fsck"
