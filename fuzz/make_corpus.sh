#!/bin/bash
# Writes the seed inputs of every fuzz target to fuzz/corpus/<target>/ (or
# to DIR/<target>/ when a directory is given): valid superblocks, metadata
# pages, slots, payloads, volume images to damage, and NBD conversations as
# nbdinfo and qemu hold them.  The bytes are laid out here from
# libcore/format.h and the NBD protocol, independently of libcore, so a
# seed that libcore rejects also points at a disagreement with the spec.
# Deterministic: running it again rewrites the same files.
#
# Usage: fuzz/make_corpus.sh [DIR]
set -euo pipefail

out=${1:-$(dirname "$0")/corpus}
mkdir -p "$out"
exec python3 - "$out" <<'PY'
import os
import shutil
import struct
import sys
import zlib

OUT = sys.argv[1]
BLOCK = 4096
BLOCKS_PER_META_PAGE = 6400
DATA_ALIGN = 1 << 20


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def write(target, name, data):
    path = os.path.join(OUT, target)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name), "wb") as f:
        f.write(bytes(data))


def text(n):
    words = b"block extent insitu payload sector compress metadata flush \n0123 "
    return (words * (n // len(words) + 1))[:n]


# ---- on-disk structures (libcore/format.h) ---------------------------------

def geometry(device_bytes):
    total = device_bytes // BLOCK
    journal_bytes = min(max(device_bytes // 128 // DATA_ALIGN * DATA_ALIGN, DATA_ALIGN), 16 * DATA_ALIGN)
    backup = (total - 1) * BLOCK
    meta = BLOCK
    data_blocks = (backup - meta) // BLOCK
    while True:
        pages = -(-data_blocks // BLOCKS_PER_META_PAGE)
        journal_off = -(-(meta + pages * 2 * BLOCK) // DATA_ALIGN) * DATA_ALIGN
        data_off = journal_off + journal_bytes
        fit = (backup - data_off) // BLOCK
        if fit >= data_blocks:
            return data_blocks, meta, pages, data_off, backup, journal_off, journal_bytes
        data_blocks = fit


def superblock(device_bytes, codec=4, level=0, meta_mode=2, extent=32, state=1, crc=True):
    data_blocks, meta, pages, data_off, backup, journal_off, journal_bytes = geometry(device_bytes)
    head = struct.pack("<QIIIIII", 0x3130555449534E49, 1, 352, 0, 0, 0, BLOCK)
    head += bytes(range(16))  # uuid
    head += struct.pack("<BbBBIII", codec, level, meta_mode, 0, 5, extent, state)
    head += struct.pack("<QQQQQQ", device_bytes, data_blocks, meta, pages, data_off, backup)
    head += struct.pack("<QQQQQQQQ", 1 << 24, 1700000000, 1700000100, 3, 1, 1 << 20, 1 << 19, 8192)
    head += struct.pack("<QQ", journal_off, journal_bytes)
    head += bytes(152 + 4)
    assert len(head) == 348
    value = crc32c(head + bytes(4)) if crc else 0
    return (head + struct.pack("<I", value)).ljust(BLOCK, b"\0")


def extent_entries(nblocks, sectors):
    out, left = [], sectors
    for k in range(nblocks):
        n = min(left, 8)
        left -= n
        out.append(n | (0x10 if k else 0))
    return out


def pack_bits(entries):
    bits = bytearray(BLOCKS_PER_META_PAGE * 5 // 8)
    for i, e in enumerate(entries):
        v = (e & 0x1F) << (i * 5 % 8)
        bits[i * 5 // 8] |= v & 0xFF
        if v >> 8:
            bits[i * 5 // 8 + 1] |= v >> 8
    return bytes(bits)


def meta_page(page, sequence, entries):
    head = struct.pack("<IHHQQ", 0x504D5349, 1, 32, page, sequence)
    body = pack_bits(entries)
    block = (head + bytes(8) + body).ljust(BLOCK, b"\0")
    value = crc32c(block)
    return head + struct.pack("<II", value, 0) + block[32:]


def sealed_payload(comp, codec, nblocks, head_block, seq=1):
    sectors = -(-(len(comp) + 32) // 512)
    trailer = struct.pack("<IBBHIIQQ", 0x4C505349, 1, codec, nblocks, len(comp), 0, head_block, seq)
    value = crc32c(trailer, crc32c(comp))
    trailer = trailer[:12] + struct.pack("<I", value) + trailer[16:]
    return comp.ljust(sectors * 512 - 32, b"\0") + trailer


def sealed_segments(segments, codec, nblocks, segment_blocks, head_block, seq=1):
    index, end = b"", 0
    for seg in segments:
        end += len(seg)
        index += struct.pack("<II", end, crc32c(seg))
    index += struct.pack("<HH", segment_blocks, len(segments))
    comp = b"".join(segments) + index
    sectors = -(-(len(comp) + 32) // 512)
    trailer = struct.pack("<IBBHIIQQ", 0x4C505349, 2, codec, nblocks, len(comp), 0, head_block, seq)
    value = crc32c(trailer, crc32c(index))
    trailer = trailer[:12] + struct.pack("<I", value) + trailer[16:]
    return comp.ljust(sectors * 512 - 32, b"\0") + trailer


def raw_deflate(data):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


for target in ("superblock_fuzz", "meta_page_fuzz", "slot_fuzz", "payload_fuzz",
               "volume_open_fuzz", "nbd_request_fuzz", "nbd_handshake_fuzz"):
    shutil.rmtree(os.path.join(OUT, target), ignore_errors=True)

# superblock_fuzz: [control][block][device size]
write("superblock_fuzz", "min-lz4-clean", b"\0" + superblock(4 << 20))
write("superblock_fuzz", "1g-zstd-writethrough-dirty",
      b"\0" + superblock(1 << 30, codec=3, level=3, meta_mode=1, extent=8, state=2))
write("superblock_fuzz", "grown-device",
      b"\0" + superblock(4 << 20, codec=2, level=9, extent=1) + struct.pack("<Q", 64 << 20))
write("superblock_fuzz", "crc-recomputed", b"\1" + superblock(5 << 30, codec=1, crc=False))

# meta_page_fuzz: [control][data blocks - 1, u16][slot 0][slot 1]; control
# 0x20 loads the page as open does, else each slot is decoded alone.
slot = extent_entries(8, 20) + extent_entries(4, 32) + [0] * 4 + extent_entries(16, 9)
used = slot * 3 + [3, 0x10] + [8] * 10
LOAD = 0x20
write("meta_page_fuzz", "never-written", bytes([LOAD | 5 << 2]) + struct.pack("<H", 510))
write("meta_page_fuzz", "slot1-only",
      bytes([5 << 2]) + struct.pack("<H", 510) + bytes(BLOCK) + meta_page(0, 1, used))
write("meta_page_fuzz", "slot1-only-load",
      bytes([LOAD | 5 << 2]) + struct.pack("<H", 510) + bytes(BLOCK) + meta_page(0, 1, used))
write("meta_page_fuzz", "both-slots-load",
      bytes([LOAD | 3 << 2]) + struct.pack("<H", 6399) + meta_page(0, 4, used) + meta_page(0, 3, slot))
torn = bytearray(meta_page(0, 6, used))
torn[40:60] = bytes(20)  # the new copy only half landed
write("meta_page_fuzz", "torn-newer-slot-load",
      bytes([LOAD | 5 << 2]) + struct.pack("<H", 1000) + bytes(torn) + meta_page(0, 5, slot))

# slot_fuzz: one entry per block
write("slot_fuzz", "mixed-32", bytes(slot))
write("slot_fuzz", "compressed-4", bytes(extent_entries(4, 3)))
write("slot_fuzz", "raw-1", bytes([8]))
write("slot_fuzz", "unwritten-8", bytes(8))

# payload_fuzz: [codec][mode][blocks - 1][body]
for codec, name in enumerate(("none", "lzo", "zlib", "zstd", "lz4")):
    write("payload_fuzz", "text-" + name, bytes([codec, 2, 7, 0, 0, 0, 0]) + text(6000))
write("payload_fuzz", "deflate-stream", bytes([2, 1, 1]) + raw_deflate(text(2 * BLOCK)))
write("payload_fuzz", "sealed-deflate",
      bytes([2, 0, 1]) + sealed_payload(raw_deflate(text(2 * BLOCK)), 2, 2, 4096))
# Mode 3 also segments the text: cut byte 16 is segments of 2 blocks, 32 of 4.
for codec, name in ((1, "lzo"), (4, "lz4")):
    for cut in (16, 32):
        write("payload_fuzz", "segments%d-%s" % (cut // 8, name),
              bytes([codec, 3, 7, 0, 0, 0, cut]) + text(6 * BLOCK))
write("payload_fuzz", "sealed-deflate-segments",
      bytes([2, 0, 7]) +
      sealed_segments([raw_deflate(text(2 * BLOCK)) for _ in range(4)], 2, 8, 2, 4096))

# volume_open_fuzz: [control][region, offset u32, length, bytes]...
for image in range(8):
    write("volume_open_fuzz", "image%d" % image, bytes([image << 4]))
    write("volume_open_fuzz", "image%d-crashed-ro" % image, bytes([0x88 | image << 4]))
write("volume_open_fuzz", "sb-dirty-state", bytes([1]) + struct.pack("<BIB", 0, 60, 4) + struct.pack("<I", 2))
write("volume_open_fuzz", "meta-bits", bytes([2 | 1 << 4]) + struct.pack("<BIB", 1, 100, 8) + b"\xff" * 8)
write("volume_open_fuzz", "payload-bytes", bytes([4 | 3 << 4]) + struct.pack("<BIB", 3, 1 << 16, 4) + b"junk")
write("volume_open_fuzz", "journal-record-sectors",
      bytes([2 | 8 | 0 << 4]) + struct.pack("<BIB", 5, 2 * BLOCK + 48, 4) + struct.pack("<I", 7))
write("volume_open_fuzz", "journal-header-min-seq",
      bytes([2 | 8 | 2 << 4]) + struct.pack("<BIB", 5, 16, 8) + struct.pack("<Q", 1))
write("volume_open_fuzz", "primary-gone",
      bytes([0x80 | 2 << 4]) + struct.pack("<BIB", 0, 0, 8) + bytes(8))


# ---- NBD (big-endian) --------------------------------------------------------

def option(code, data=b""):
    return struct.pack(">QII", 0x49484156454F5054, code, len(data)) + data


def request(cmd, offset=0, length=0, flags=0, cookie=1, payload=b""):
    return struct.pack(">IHHQQI", 0x25609513, flags, cmd, cookie, offset, length) + payload


READ, WRITE, DISC, FLUSH, TRIM, CACHE, ZEROES, STATUS = range(8)
FUA, NO_HOLE, REQ_ONE = 1, 2, 8
base = b"base:allocation"
info_go = struct.pack(">IH", 0, 3) + struct.pack(">HHH", 3, 1, 2)  # block size, name, description
meta_set = struct.pack(">II", 0, 1) + struct.pack(">I", len(base)) + base
requests = (request(READ, 0, 4096, cookie=1) + request(STATUS, 0, 1 << 20, cookie=2) +
            request(WRITE, 4096, 512, FUA, 3, text(512)) + request(FLUSH, cookie=4) +
            request(TRIM, 8192, 8192, cookie=5) + request(ZEROES, 16384, 4096, NO_HOLE, 6) +
            request(CACHE, 0, 65536, cookie=7) + request(STATUS, 4096, 8192, REQ_ONE, 8) +
            request(READ, 70000, 5000, cookie=9) + request(DISC))

# nbd_request_fuzz: [state][size][max payload][count][requests][runs]
runs = struct.pack(">IBIBIB", 65536, 0, 983040, 3, 4096, 0)
write("nbd_request_fuzz", "negotiated",
      struct.pack(">BQIB", 0b1110, 1 << 20, 32 << 20, 10) + requests.replace(text(512), b"") + runs)
write("nbd_request_fuzz", "read-only",
      struct.pack(">BQIB", 0b0101, 3 << 20, 32 << 20, 10) + requests.replace(text(512), b"") + runs)
write("nbd_request_fuzz", "past-the-end",
      struct.pack(">BQIB", 0b1110, 1 << 20, 1 << 16, 3) + request(WRITE, (1 << 20) - 100, 200) +
      request(READ, (1 << 64) - 4096, 8192) + request(STATUS, 1 << 20, 1) + runs)

# nbd_handshake_fuzz: [control][client bytes]
write("nbd_handshake_fuzz", "nbdinfo-go",
      b"\0" + struct.pack(">I", 3) + option(8) + option(10, meta_set) + option(7, info_go) + requests)
write("nbd_handshake_fuzz", "export-name",
      b"\0" + struct.pack(">I", 1) + option(1, b"fuzz") + request(READ, 0, 512) + request(DISC))
write("nbd_handshake_fuzz", "list-info-abort",
      b"\0" + struct.pack(">I", 3) + option(3) + option(6, struct.pack(">I", 4) + b"fuzz" + b"\0\0") +
      option(8) + option(9, struct.pack(">II", 0, 1) + struct.pack(">I", 5) + b"base:") +
      option(5) + option(99, b"??") + option(2))
write("nbd_handshake_fuzz", "go-unknown-export",
      b"\0" + struct.pack(">I", 1) + option(7, struct.pack(">I", 3) + b"who\0\0") + option(7, info_go) +
      request(READ, 0, 4096) + request(DISC))
write("nbd_handshake_fuzz", "requests", b"\1" + requests)
write("nbd_handshake_fuzz", "volume-requests", b"\3" + requests)
PY
