#!/bin/bash
# The command-line contract of insitu / mkfs.insitu: exit codes (0 ok,
# 1 error, 2 usage), refusals that leave the target untouched, messages that
# name the problem, sparse file creation, dump text and JSON, and status
# against a missing socket, a fake daemon and the real one.
source "$(dirname "$0")/lib.bash"

MKFS="$BUILD/mkfs.insitu"


checksum() { sha256sum "$1" | cut -d' ' -f1; }

# field JSON_FILE PYTHON_EXPR: prints the expression evaluated on the
# parsed file as j.
field() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"; }

step "help and version"
expect 0 "$INSITU" --help
says "$OUT" format
says "$OUT" dump
says "$OUT" status
expect 0 "$INSITU" format --help
says "$OUT" --compress
expect 0 "$MKFS" --help
says "$OUT" --extent-max
expect 0 "$INSITU" --version
says "$OUT" "insitu "
expect 2 "$INSITU"
says "$ERR" "no command given"
expect 2 "$INSITU" frobnicate
says "$ERR" frobnicate
expect 2 "$INSITU" format
says "$ERR" TARGET

step "format: a missing file needs --size; --size creates a sparse file"
vol="$WORK/vol.img"
expect 1 "$INSITU" format "$vol"
says "$ERR" "--size"
[[ ! -e $vol ]] || fail "a refused format created $vol"
expect 0 "$INSITU" format --size 64M "$vol"
says "$OUT" "data blocks:"
says "$OUT" "lz4"
[[ $(stat -c %s "$vol") -eq $((64 << 20)) ]] || fail "$vol is not 64 MiB"
allocated=$(($(stat -c %b "$vol") * $(stat -c %B "$vol")))
[[ $allocated -lt $((8 << 20)) ]] || fail "$vol is not sparse: $allocated bytes allocated"
# Neither the metadata area nor the journal (8 MiB here) is allocated until
# it is written: only the two superblocks are.
big="$WORK/big.img"
expect 0 "$INSITU" format -q --size 1G "$big"
allocated=$(($(stat -c %b "$big") * $(stat -c %B "$big")))
[[ $allocated -le $((64 << 10)) ]] || fail "a new 1 GiB volume holds $allocated bytes"
rm -f "$big"

step "format: refuses an existing volume without --force, accepts it with"
before=$(checksum "$vol")
expect 1 "$INSITU" format "$vol"
says "$ERR" "already contains an insitu volume"
says "$ERR" "--force"
expect 1 "$INSITU" format --size 32M "$vol"
[[ $(checksum "$vol") == "$before" ]] || fail "a refused format changed $vol"
expect 0 "$INSITU" format --force -q "$vol"
[[ ! -s $OUT ]] || fail "--quiet printed: $(cat "$OUT")"

step "format: refuses an ext4 file system without --force"
ext="$WORK/ext4.img"
truncate -s 64M "$ext"
mkfs.ext4 -q -F "$ext"
before=$(checksum "$ext")
expect 1 "$INSITU" format "$ext"
says "$ERR" "ext2/ext3/ext4"
expect 1 "$INSITU" format --size 128M "$ext"
[[ $(checksum "$ext") == "$before" ]] || fail "a refused format changed $ext"
[[ $(stat -c %s "$ext") -eq $((64 << 20)) ]] || fail "a refused format resized $ext"
expect 0 "$INSITU" format -f "$ext"
says "$OUT" "Overwriting an ext2/ext3/ext4 file system"
expect 0 "$INSITU" dump --no-extents "$ext"

step "format: other targets"
expect 1 "$INSITU" format --size 64M "$WORK"
says "$ERR" "neither a block device nor a regular file"
: >"$WORK/empty.img"
expect 1 "$INSITU" format "$WORK/empty.img"
says "$ERR" "empty"
expect 1 "$INSITU" format --size 64K "$WORK/tiny.img"
says "$ERR" "too small"
[[ ! -e $WORK/tiny.img ]] || fail "a failed format left the file it created"

step "mkfs.insitu is insitu format, and the options reach the superblock"
m="$WORK/mkfs.img"
expect 0 "$MKFS" --size 32M --compress zstd:3 --meta writeback:30 --extent-max 16K "$m"
expect 0 "$INSITU" dump --json "$m"
[[ $(field "$OUT" "j['superblock']['codec'], j['superblock']['codec_level']") == "zstd 3" ]] ||
  fail "codec not recorded: $(field "$OUT" "j['superblock']")"
[[ $(field "$OUT" "j['superblock']['meta_mode'], j['superblock']['meta_interval_s']") == \
  "writeback 30" ]] || fail "metadata mode not recorded"
[[ $(field "$OUT" "j['superblock']['extent_max_blocks']") == 4 ]] || fail "extent size not recorded"
[[ $(field "$OUT" "j['superblock']['segment_blocks']") == 0 ]] || fail "zstd volume has segments"
expect 0 "$MKFS" -f -q --compress lzo "$m"
expect 0 "$INSITU" dump --json --no-extents "$m"
[[ $(field "$OUT" "j['superblock']['segment_blocks']") == 4 ]] || fail "lzo's default segments"
expect 0 "$MKFS" -f --compress zstd:1 --segment 32K "$m"
says "$OUT" "32 KiB (8 blocks)"
expect 0 "$INSITU" dump --json --no-extents "$m"
[[ $(field "$OUT" "j['superblock']['segment_blocks'], j['superblock']['incompat'] & 4") == \
  "8 4" ]] || fail "--segment not recorded with its feature bit"
expect 2 "$MKFS" -f --extent-max 16K --segment 16K "$m"
says "$ERR" "must be smaller than --extent-max"
expect 1 "$MKFS" "$m"
says "$ERR" "mkfs.insitu: "
expect 0 "$MKFS" -f -q --compress none --meta writethrough --extent-max 4K "$m"
expect 0 "$INSITU" dump --json --no-extents "$m"
[[ $(field "$OUT" "j['superblock']['codec'], j['superblock']['meta_mode'], 'extents' in j") == \
  "none writethrough False" ]] || fail "options or --no-extents not honoured"

step "bad option values are usage errors that name the option"
bad="$WORK/bad.img"
for args in "--compress lz5" "--compress zlib:10" "--compress lzo:3" "--compress zstd:" \
  "--meta sometimes" "--meta writeback:0" "--meta writeback:x" "--meta writethrough:5" \
  "--extent-max 3K" "--extent-max 12K" "--extent-max 256K" "--extent-max 4096X" \
  "--segment 3K" "--segment 12K" "--segment 128K" "--segment some" \
  "--size 10X" "--size 0" "--size -1G" "--size 99999999999P" "--bogus"; do
  # A valid --size, so that the option under test is the only thing wrong.
  size=(--size 64M)
  [[ $args == --size* ]] && size=()
  # shellcheck disable=SC2086  # split the option from its value on purpose
  expect 2 "$INSITU" format "${size[@]}" $args "$bad"
  says "$ERR" "${args%% *}"
  says "$ERR" "insitu format --help"
  [[ ! -e $bad ]] || fail "format $args created $bad"
done

step "dump: text and JSON"
expect 0 "$INSITU" dump "$vol"
for section in "superblock:" "stats:" "extents:"; do says "$OUT" "$section"; done
grep -qE '^  codec: +lz4$' "$OUT" || fail "no codec line in the text dump"
grep -qE '^  state: +clean$' "$OUT" || fail "no state line in the text dump"
grep -qE '^ +0 +[0-9]+  unwritten +0 +0 +0$' "$OUT" || fail "no unwritten run in the extent map"
expect 0 "$INSITU" dump --no-extents "$vol"
! grep -q "extents:" "$OUT" || fail "--no-extents printed the extent map"
expect 0 "$INSITU" dump --json "$vol"
python3 -m json.tool "$OUT" >/dev/null || fail "dump --json is not valid JSON"
[[ $(field "$OUT" "sorted(j)") == "['extents', 'stats', 'superblock']" ]] ||
  fail "dump --json keys: $(field "$OUT" "sorted(j)")"
[[ $(field "$OUT" "j['extents'][0]['patched_blocks']") == "[]" ]] ||
  fail "an unwritten run lists patched blocks: $(field "$OUT" "j['extents'][0]")"
field "$OUT" "j['superblock']['uuid']" | grep -qE '^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$' ||
  fail "uuid is not 8-4-4-4-12 hex"

step "dump: what is not a volume fails cleanly"
head -c 8M /dev/urandom >"$WORK/random.img"
expect 1 "$INSITU" dump "$WORK/random.img"
says "$ERR" "cannot read an insitu volume from $WORK/random.img"
truncate -s 64M "$WORK/ext4b.img"
mkfs.ext4 -q -F "$WORK/ext4b.img"
expect 1 "$INSITU" dump --json "$WORK/ext4b.img"
says "$ERR" "ext2/ext3/ext4"
[[ ! -s $OUT ]] || fail "a failed dump --json printed to stdout"
expect 1 "$INSITU" dump "$WORK/missing.img"
says "$ERR" "No such file or directory"
expect 1 "$INSITU" dump "$WORK/empty.img"

step "status: no daemon"
expect 1 "$INSITU" status "$WORK/none.ctl"
says "$ERR" "insitu status: cannot connect to $WORK/none.ctl"
says "$ERR" "is insitud running with --control $WORK/none.ctl?"
python3 -c "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])" "$WORK/dead.ctl"
expect 1 "$INSITU" status "$WORK/dead.ctl"
says "$ERR" "Connection refused"

# fake_daemon REPLY: answers one "status\n" on $WORK/fake.ctl with REPLY.
fake_daemon() {
  rm -f "$WORK/fake.ctl"
  python3 - "$WORK/fake.ctl" "$1" <<'PY' &
import socket, sys
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1])
srv.listen(1)
conn, _ = srv.accept()
request = b""
while not request.endswith(b"\n"):
    chunk = conn.recv(64)
    if not chunk:
        break
    request += chunk
conn.sendall(sys.argv[2].encode() if request == b"status\n" else b'{"error":"bad request"}')
conn.close()
PY
  CLEANUP+=("kill $!")
  wait_for_socket "$WORK/fake.ctl" $!
}

step "status: text and JSON from a fake daemon"
reply='{"device":"file:/v.img","export":"","superblock":{"uuid":"u","codec":"zstd",
"codec_level":3,"meta_mode":"writeback","meta_interval_s":5,"unclean_count":0},
"volume":{"logical_bytes_written":1073741824,"payload_bytes_written":1000,
"meta_bytes_written":8192,"blocks_compressed":300,"blocks_raw":10,"blocks_unwritten":14,
"payload_sectors":600,"data_blocks":324,"read_errors":0,"compression_ratio":4.0},
"server":{"connections":2,"inline_readers":1,"requests_in_flight":1,"requests_total":77,"uptime_s":3661}}'
fake_daemon "$reply"
expect 0 "$INSITU" status "$WORK/fake.ctl"
grep -qE '^compression: +zstd:3$' "$OUT" || fail "status: no compression line"
grep -qE '^compression ratio: +4\.00$' "$OUT" || fail "status: ratio not shown with 2 decimals"
grep -qE '^logical written: +1 GiB$' "$OUT" || fail "status: bytes not humanized"
grep -qE '^connections: +2$' "$OUT" || fail "status: no connections line"
grep -qE '^inline readers: +1$' "$OUT" || fail "status: no inline readers line"
grep -qE '^uptime: +1h 1m 1s$' "$OUT" || fail "status: uptime not humanized"
fake_daemon "$reply"
expect 0 "$INSITU" status --json "$WORK/fake.ctl"
[[ $(field "$OUT" "j['server']['requests_total']") == 77 ]] || fail "status --json lost fields"
fake_daemon '{"error":"volume is shutting down"}'
expect 1 "$INSITU" status "$WORK/fake.ctl"
says "$ERR" "volume is shutting down"
fake_daemon 'not json'
expect 1 "$INSITU" status "$WORK/fake.ctl"
says "$ERR" "not a JSON object"

step "status and dump of a served volume"
live="$WORK/live.img"
expect 0 "$INSITU" format -q --size 64M "$live"
# yes ends on SIGPIPE, which pipefail would otherwise report as a failure.
{ yes "insitu compresses this line well" || true; } | head -c 4M >"$WORK/data"
start_daemon "$live" live
wait_for_socket "$WORK/live.ctl" "$DAEMON_PID"
nbdcopy "$WORK/data" "$(uri live)"
expect 0 "$INSITU" status "$WORK/live.ctl"
says "$OUT" "compression ratio:"
says "$OUT" "units saved by refits:"
expect 0 "$INSITU" status --json "$WORK/live.ctl"
[[ $(field "$OUT" "j['volume']['logical_bytes_written']") -ge $((4 << 20)) ]] ||
  fail "status: logical_bytes_written below the 4 MiB written"
[[ $(field "$OUT" "j['split_extents']") == True ]] || fail "status: extents not split by default"
[[ $(field "$OUT" "j['fit_units']") == True ]] || fail "status: payloads not refitted by default"
[[ $(field "$OUT" "j['volume']['refits']") -ge 0 ]] || fail "status: no refits counter"

step "a served volume is locked against other programs"
expect 8 "$BUILD/fsck.insitu" -fy "$live"
says "$ERR" "$live is in use"
expect 8 "$BUILD/fsck.insitu" -n "$live"
says "$ERR" "in use"
expect 1 "$INSITU" format -q --force "$live"
says "$ERR" "in use"
expect 1 "$INSITU" dump "$live"
says "$ERR" "in use"
expect 1 "$INSITUD" "$live" --listen "unix:$WORK/second.sock"
says "$ERR" "in use"
nbdcopy "$(uri live)" "$WORK/back"
cmp -n $((4 << 20)) "$WORK/data" "$WORK/back" || fail "served data changed by refused programs"
stop_daemon
expect 0 "$BUILD/fsck.insitu" -n "$live"
start_daemon "$live" live --no-split --no-fit
expect 0 "$INSITU" status --json "$WORK/live.ctl"
[[ $(field "$OUT" "j['split_extents']") == False ]] || fail "status: --no-split not in effect"
[[ $(field "$OUT" "j['fit_units']") == False ]] || fail "status: --no-fit not in effect"
stop_daemon
expect 0 "$INSITU" dump --json "$live"
[[ $(field "$OUT" "j['superblock']['state']") == clean ]] || fail "volume not clean after SIGTERM"
[[ $(field "$OUT" "sum(e['nblocks'] for e in j['extents'] if e['kind'] == 'compressed')") -eq \
  1024 ]] || fail "dump: the 4 MiB written are not 1024 compressed blocks"
[[ $(field "$OUT" "sum(e['nblocks'] for e in j['extents'])") -eq \
  $(field "$OUT" "j['superblock']['data_blocks']") ]] || fail "dump: extents do not cover the volume"
expect 0 "$INSITU" dump "$live"
grep -qE '^ +0 +32  compressed +[0-9]+ +[0-9]+ +0$' "$OUT" || fail "dump text: no compressed extent at block 0"

echo "PASS"
