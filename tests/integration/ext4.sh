#!/bin/bash
# The kernel path: nbdfuse exposes the export as a file, losetup makes it a
# block device, then mkfs.ext4, mount, write a tree of files, unmount,
# e2fsck -fn, restart the daemon, remount, and compare every file's
# checksum.  Runs once per codec (INSITU_CODECS overrides the list) and
# prints the compressed/logical figures of the tree for each.
source "$(dirname "$0")/lib.bash"

[[ $(id -u) -eq 0 ]] || fail "needs root (losetup, mount)"
[[ -c /dev/fuse ]] || fail "needs /dev/fuse"

# The test tree: source headers (compressible) and man pages (already
# gzip-compressed), about 40 MiB.
# nbdfuse runs single-threaded (-s): libnbd 1.14's nbdfuse counts commands
# in flight after submitting them, and a fast server's reply can arrive
# first and trip its assertion (operations.c, completion_callback).
TREE_SOURCES=(/usr/include/linux /usr/include/x86_64-linux-gnu /usr/share/man/man1 /usr/share/man/man3)

run_codec() {
  local codec=$1 meta=$2
  local img="$WORK/vol-$codec.img" mnt="$WORK/mnt" fuse="$WORK/fuse"
  step "ext4 on insitu ($codec, $meta)"
  "$INSITU" format -q --size 512M --compress "$codec" --meta "$meta" "$img"
  start_daemon "$img" ext4
  mkdir -p "$fuse" "$mnt"
  nbdfuse -s -P "$WORK/nbdfuse.pid" "$fuse/nbd" --unix "$WORK/ext4.sock" &
  local i
  for ((i = 0; i < 100; i++)); do [[ -e $fuse/nbd ]] && break; sleep 0.05; done
  [[ -e $fuse/nbd ]] || fail "nbdfuse did not expose $fuse/nbd"
  CLEANUP+=("fusermount3 -u $fuse")
  local loop
  loop=$(losetup -f --show "$fuse/nbd")
  CLEANUP+=("losetup -d $loop")
  mkfs.ext4 -q -F "$loop"
  mount "$loop" "$mnt"
  CLEANUP+=("umount $mnt")
  mkdir "$mnt/tree"
  cp -r "${TREE_SOURCES[@]}" "$mnt/tree/" 2>/dev/null || true
  (cd "$mnt/tree" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$WORK/sums"
  local files
  files=$(wc -l <"$WORK/sums")
  [[ $files -gt 100 ]] || fail "test tree has only $files files"
  umount "$mnt"
  unset 'CLEANUP[${#CLEANUP[@]}-1]'
  e2fsck -fn "$loop" >"$WORK/e2fsck.log" 2>&1 || { cat "$WORK/e2fsck.log"; fail "e2fsck found errors"; }
  losetup -d "$loop"
  fusermount3 -u "$fuse"
  unset 'CLEANUP[${#CLEANUP[@]}-1]' 'CLEANUP[${#CLEANUP[@]}-1]'
  sleep 0.2

  "$INSITU" status --json "$WORK/ext4.ctl" >"$WORK/status.json"
  stop_daemon
  /usr/bin/python3 - "$WORK/status.json" "$codec" "$meta" "$img" <<'PY'
import json, os, sys
s = json.load(open(sys.argv[1]))["volume"]
alloc = os.stat(sys.argv[4]).st_blocks * 512
logical = (s["blocks_compressed"] + s["blocks_raw"]) * 4096
print(f"RESULT codec={sys.argv[2]} meta={sys.argv[3]} stored_logical={logical} "
      f"payload_bytes_written={s['payload_bytes_written']} "
      f"logical_bytes_written={s['logical_bytes_written']} meta_bytes_written={s['meta_bytes_written']} "
      f"ratio={s['compression_ratio']:.2f} backing_allocated={alloc} "
      f"allocated/stored={alloc / max(logical, 1):.3f}")
PY

  step "restart and verify ($codec)"
  start_daemon "$img" ext4
  grep -q "not closed cleanly" "$WORK/ext4.log" && fail "clean shutdown was not recorded"
  nbdfuse -s -P "$WORK/nbdfuse.pid" "$fuse/nbd" --unix "$WORK/ext4.sock" &
  for ((i = 0; i < 100; i++)); do [[ -e $fuse/nbd ]] && break; sleep 0.05; done
  CLEANUP+=("fusermount3 -u $fuse")
  loop=$(losetup -f --show "$fuse/nbd")
  CLEANUP+=("losetup -d $loop")
  mount -o ro "$loop" "$mnt"
  CLEANUP+=("umount $mnt")
  (cd "$mnt/tree" && sha256sum --quiet -c "$WORK/sums") || fail "checksums differ after restart"
  umount "$mnt"
  losetup -d "$loop"
  fusermount3 -u "$fuse"
  unset 'CLEANUP[${#CLEANUP[@]}-1]' 'CLEANUP[${#CLEANUP[@]}-1]' 'CLEANUP[${#CLEANUP[@]}-1]'
  sleep 0.2
  stop_daemon
  rm -f "$img"
  echo "ok: $codec ($files files)"
}

for codec in ${INSITU_CODECS:-lz4 lzo zstd:1 zlib:1 none}; do
  meta=writeback
  [[ $codec == lzo || $codec == none ]] && meta=writethrough
  run_codec "$codec" "$meta"
done
echo "PASS ext4"
