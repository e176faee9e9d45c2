#!/bin/bash
# One command from a fresh machine to a served volume: installs what is
# missing, builds, formats ./insitu-demo.img (1 GiB sparse file, lz4) unless
# it already exists, and serves it over NBD on a Unix socket in the
# foreground.  Ctrl-C stops the daemon cleanly (the volume is marked clean).
set -euo pipefail
cd "$(dirname "$0")/.."

# Absolute paths, so that the daemon's status and the hints below work
# from any directory.
IMG=$PWD/insitu-demo.img
INSITU=$PWD/build/insitu
SOCK=/tmp/insitu-demo.sock
CTL=/tmp/insitu-demo.ctl
URI="nbd+unix:///?socket=$SOCK"

scripts/deps.sh
scripts/build.sh

if [[ -e $IMG ]]; then
  echo "Using the existing volume $IMG (delete it to start from a fresh one)"
else
  "$INSITU" format --size 1G --compress lz4 "$IMG"
fi

# Sockets left by a daemon that was killed would make the bind fail; they
# are removed only when no daemon answers on them.
if [[ -S $CTL ]] && "$INSITU" status "$CTL" >/dev/null 2>&1; then
  echo "A demo daemon is already serving $SOCK; stop it first." >&2
  exit 1
fi
rm -f "$SOCK" "$CTL"

cat <<MSG

Serving $IMG on $SOCK (control socket $CTL).
Connect from another terminal:
  # export size, block sizes and flags; then which ranges hold data
  nbdinfo "$URI"
  nbdinfo --map "$URI"
  qemu-img info "$URI"
  # the volume as a file, /tmp/insitu-fuse/disk (detach: fusermount3 -u /tmp/insitu-fuse)
  mkdir -p /tmp/insitu-fuse && nbdfuse /tmp/insitu-fuse/disk --unix $SOCK &
  # live counters
  $INSITU status $CTL
Press Ctrl-C to stop.

MSG
exec build/insitud "$IMG" --listen "unix:$SOCK" --control "$CTL"
