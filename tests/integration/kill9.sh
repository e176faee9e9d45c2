#!/bin/bash
# Process-level crash test: insitud is killed with SIGKILL while a client
# writes (4 KiB..256 KiB, compressible and not, some FUA) and flushes, then
# restarted; every block must read back its last durable content (as of the
# last completed flush or FUA write) or the content of a write issued after
# that — never an error, never other bytes.  Repeats for several rounds on
# the same volume, in both metadata modes.  INSITU_KILL_ROUNDS overrides
# the number of rounds.
source "$(dirname "$0")/lib.bash"

ROUNDS=${INSITU_KILL_ROUNDS:-6}
for meta in writeback writethrough; do
  step "kill -9 during writes ($meta, $ROUNDS rounds)"
  img="$WORK/kill-$meta.img"
  "$INSITU" format -q --size 64M --compress zstd:1 --meta "$meta" "$img"
  /usr/bin/python3 - "$INSITUD" "$img" "$WORK" "$ROUNDS" <<'PY' || fail "durability rules broken ($meta)"
import hashlib, os, random, signal, subprocess, sys, threading, time
import nbd

insitud, img, work, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sock = os.path.join(work, "kill.sock")
BS = 4096
seed = 20261122
rng = random.Random(seed)
durable = {}   # block -> digest as of the last flush / FUA write
pending = {}   # block -> digests written since, any of which may survive
ZERO = hashlib.sha256(bytes(BS)).digest()

def start():
    if os.path.exists(sock):
        os.unlink(sock)
    p = subprocess.Popen([insitud, img, "--listen", "unix:" + sock],
                         stderr=open(os.path.join(work, "kill.log"), "a"))
    for _ in range(200):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    h = nbd.NBD()
    h.connect_unix(sock)
    return p, h

def payload(nblocks):
    kind = rng.randrange(3)
    if kind == 0:
        return os.urandom(nblocks * BS)
    words = [b"insitu ", b"block ", b"extent ", b"\n", b"payload "]
    out = b"".join(rng.choice(words) for _ in range(nblocks * BS // 4))
    return out[: nblocks * BS].ljust(nblocks * BS, b"x")

checked = 0
for rnd in range(rounds):
    p, h = start()
    size = h.get_size()
    nblocks = size // BS
    killer = threading.Timer(rng.uniform(0.3, 1.5), lambda: os.kill(p.pid, signal.SIGKILL))
    killer.start()
    ops = 0
    try:
        while True:
            r = rng.random()
            if r < 0.1:
                h.flush()
                for b, digests in pending.items():
                    durable[b] = digests[-1]
                pending.clear()
            else:
                n = rng.choice([1, 1, 1, 2, 8, 32, 64])
                first = rng.randrange(0, nblocks - n)
                data = payload(n)
                fua = rng.random() < 0.2
                digests = [hashlib.sha256(data[i * BS:(i + 1) * BS]).digest() for i in range(n)]
                for i in range(n):  # in flight: may or may not land
                    pending.setdefault(first + i, []).append(digests[i])
                h.pwrite(data, first * BS, nbd.CMD_FLAG_FUA if fua else 0)
                if fua:
                    for i in range(n):
                        durable[first + i] = digests[i]
                        pending.pop(first + i, None)
            ops += 1
    except nbd.Error:
        pass  # the server died under us
    killer.join()
    p.wait()
    try:
        h.shutdown()
    except nbd.Error:
        pass
    del h
    # Restart (recovery runs) and check every block ever written.
    p, h = start()
    bad = []
    for b in sorted(set(durable) | set(pending)):
        try:
            got = hashlib.sha256(h.pread(BS, b * BS)).digest()
        except nbd.Error as e:
            bad.append(f"block {b}: read error {e}")
            continue
        allowed = [durable.get(b, ZERO)] + pending.get(b, [])
        if got not in allowed:
            bad.append(f"block {b}: content is neither its durable nor a later write")
        checked += 1
        # What survived is now durable for the next round.
        durable[b] = got
    pending.clear()
    h.flush()
    h.shutdown()
    p.send_signal(signal.SIGTERM)
    if p.wait() != 0:
        print("insitud did not exit cleanly after SIGTERM"); sys.exit(1)
    print(f"round {rnd}: {ops} ops before the kill, {len(durable)} blocks checked, "
          f"{len(bad)} violations")
    if bad:
        print("seed", seed)
        print("\n".join(bad[:10]))
        sys.exit(1)
print(f"PASS: {rounds} kills, {checked} block checks")
PY
  grep -q "recovering" "$WORK/kill.log" || fail "no recovery was logged after kill -9"
done
echo "PASS kill9"
