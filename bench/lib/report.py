#!/usr/bin/env python3
"""Helpers for bench/run.sh and bench/dataset.sh (standard library only).

  report.py json-get FILE KEY.PATH...         values, space separated
  report.py fio-summary FIO_JSON              iops mbps read_bytes write_bytes p99_us client_cpu_s
  report.py pick-files BUDGET LIST ROOT...    choose the dataset's files; prints "files dirs bytes"
  report.py nonzero FILE                      bytes in 4 KiB blocks that are not all zero
  report.py dataset OUT                       OUT/dataset.csv -> OUT/dataset.md
  report.py results OUT                       OUT/*.csv, micro.json -> OUT/results.md and PNGs

The shell scripts measure; everything that computes medians, ratios and
tables lives here, so the scripts stay small.
"""

import csv
import json
import math
import os
import statistics
import subprocess
import sys

PEERS = ["nbdkit-file", "nbdkit-memory", "qemu-nbd", "fio-raw"]
PRIMARY = "nbdkit-file"
WORKLOADS = ["randread4k", "randwrite4k", "randrw4k", "seqread128k", "seqwrite128k"]
WRITE_WORKLOADS = {"randwrite4k", "seqwrite128k"}
READ_WORKLOADS = {"randread4k", "seqread128k"}
CODEC_OF = {"none": "none", "lz4": "lz4", "lzo": "lzo", "zstd1": "zstd:1", "zlib1": "zlib:1"}
# A cell whose rounds differ by more than this factor (fastest over slowest)
# is listed under "Rounds that disagree".
SPREAD_LIMIT = 1.5
GIB = 1 << 30
MIB = 1 << 20


# ---- small helpers -----------------------------------------------------------


def json_path(obj, path):
    for key in path.split("."):
        obj = obj[key]
    return obj


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def geomean(values):
    values = [v for v in values if v and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def fmt_int(v):
    return "—" if v is None else f"{v:,.0f}"


def fmt(v, digits=1):
    return "—" if v is None else f"{v:.{digits}f}"


def fmt_ratio(v):
    return "—" if v is None else f"{v:.2f}×"


def fmt_bytes(v):
    if v is None:
        return "—"
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if abs(v) >= size:
            return f"{v / size:.1f} {unit}"
    return f"{v:.0f} B"


def met(ok):
    return "met" if ok else "**not met**"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


# Codecs whose volumes store 128 KiB extents in 16 KiB segments unless told
# otherwise (DefaultSegmentBlocks in libcore/volume_format.cc).
SEGMENTED_BY_DEFAULT = ("lz4", "lzo")


def insitu_codec(target):
    """The codec and the unit it compresses, as the codec microbenchmarks
    name it: insitu-zstd1-wb-4k -> ("zstd:1", "4k"), insitu-lz4-wb ->
    ("lz4", "128k-seg16k"), insitu-lz4-wb-noseg -> ("lz4", "128k"); peers
    -> (None, None).  A segment size without a microbenchmark gives None."""
    parts = target.split("-")
    if parts[0] != "insitu" or len(parts) < 3:
        return None, None
    codec = CODEC_OF.get(parts[1])
    suffix = parts[3] if len(parts) > 3 else ""
    if suffix == "4k":
        return codec, "4k"
    if suffix == "noseg" or (suffix == "" and codec not in SEGMENTED_BY_DEFAULT):
        return codec, "128k"
    if suffix in ("", "seg16k"):
        return codec, "128k-seg16k"
    return codec, None


def is_insitu(target):
    return target.startswith("insitu-")


# ---- commands used while measuring ------------------------------------------


def cmd_json_get(path, *keys):
    with open(path) as f:
        obj = json.load(f)
    print(" ".join(str(json_path(obj, k)) for k in keys))


def cmd_fio_summary(path):
    # fio's nbd engine prints a line before the JSON on stdout, so run.sh
    # has fio write the JSON to a file; skip anything before the first brace
    # all the same.
    with open(path) as f:
        text = f.read()
    job = json.loads(text[text.index("{"):])["jobs"][0]
    read, write = job["read"], job["write"]
    iops = read["iops"] + write["iops"]
    mbps = (read["bw_bytes"] + write["bw_bytes"]) / 1e6
    p99 = 0.0
    for d in (read, write):
        pct = d.get("clat_ns", {}).get("percentile", {})
        if d["total_ios"] and "99.000000" in pct:
            p99 = max(p99, pct["99.000000"] / 1000)
    runtime_s = max(read["runtime"], write["runtime"]) / 1000
    client_cpu = (job["usr_cpu"] + job["sys_cpu"]) / 100 * runtime_s
    print(f"{iops:.0f} {mbps:.1f} {read['io_bytes']} {write['io_bytes']} {p99:.0f} "
          f"{client_cpu:.2f}")


def cmd_pick_files(budget, list_path, *roots):
    """Deterministic subset of the regular files under roots: each root gets
    a share of the budget in proportion to its size, filled in sorted path
    order.  Sizes count in whole 4 KiB blocks, as ext4 stores them."""
    budget = int(budget)
    per_root = []
    for root in roots:
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    files.append((path, -(-os.path.getsize(path) // 4096) * 4096))
        per_root.append(files)
    total = sum(size for files in per_root for _, size in files)
    chosen, used = [], 0
    for files in per_root:
        share = sum(size for _, size in files) * min(1.0, budget / total) if total else 0
        taken = 0
        for path, size in files:
            if taken + size > share:
                break
            chosen.append(path)
            taken += size
        used += taken
    dirs = {os.path.dirname(p) for p in chosen}
    for d in list(dirs):  # and every parent directory
        while d not in ("/", ""):
            dirs.add(d)
            d = os.path.dirname(d)
    with open(list_path, "wb") as f:
        for path in chosen:
            f.write(path.lstrip("/").encode() + b"\0")
    print(len(chosen), len(dirs), used)


def cmd_nonzero(path):
    zero = bytes(4096)
    count = 0
    with open(path, "rb") as f:
        while block := f.read(4096):
            if block != zero[: len(block)]:
                count += len(block)
    print(count)


# ---- the dataset table -------------------------------------------------------


def dataset_rows(out):
    return read_csv(os.path.join(out, "dataset.csv"))


def cmd_dataset(out):
    rows = dataset_rows(out)
    if not rows:
        return
    md = [dataset_markdown(rows)]
    with open(os.path.join(out, "dataset.md"), "w") as f:
        f.write("\n".join(md))


def dataset_markdown(rows):
    first = rows[0]
    image, image_alloc, nonzero = (int(first[k]) for k in
                                   ("image_bytes", "image_alloc_bytes", "nonzero_bytes"))
    text = ["## Real data: nbdcopy of an ext4 image into each target\n",
            f"The image ({fmt_bytes(image)}, {fmt_bytes(image_alloc)} allocated, "
            f"{fmt_bytes(nonzero)} of non-zero 4 KiB blocks) is an ext4 file system built with "
            f"`mkfs.ext4 -d` from {first['source']}. `nbdcopy --flush` copies it into a "
            f"fresh target. {os.environ.get('PLACEMENT', 'CPU placement not recorded')}. "
            "MB/s is image bytes over wall time. After a clean stop: the counters of "
            "`insitu dump`, and the allocated size of the backing file (st_blocks × 512). "
            "\"Data\" below is the image's non-zero data.\n",
            "Targets: allocated ≤ 0.25× data with zstd:1, ≤ 0.30× with lz4 and lzo; "
            "metadata ≤ 1 % of payload bytes in write-back mode.\n"]
    header = ["target", "MB/s", "server CPU s", "compression", "payload written",
              "metadata written", "meta/payload", "allocated", "alloc/data", "alloc/image",
              "alloc/image alloc", "allocation target", "metadata target"]
    body = []
    for r in rows:
        alloc = int(r["alloc_bytes"])
        payload, meta = num(r["payload_bytes"]), num(r["meta_bytes"])
        meta_ratio = meta / payload if payload and meta is not None else None
        codec, _ = insitu_codec(r["target"])
        limit = {"zstd:1": 0.25, "lz4": 0.30, "lzo": 0.30}.get(codec)
        alloc_ratio = alloc / nonzero if nonzero else None
        alloc_goal = met(alloc_ratio <= limit) + f" (≤ {limit:.2f})" if limit else "—"
        if not is_insitu(r["target"]):
            meta_goal = "—"
        elif r["target"].split("-")[2] == "wb":
            meta_goal = met(meta_ratio is not None and meta_ratio <= 0.01)
        else:
            meta_goal = "— (write-through)"
        body.append([r["target"], fmt(num(r["mbps"])), fmt(num(r["server_cpu_s"]), 2),
                     fmt_ratio(num(r["compression_ratio"])), fmt_bytes(payload), fmt_bytes(meta),
                     "—" if meta_ratio is None else f"{meta_ratio * 100:.2f} %",
                     fmt_bytes(alloc), fmt(alloc_ratio, 3), fmt(alloc / image, 3),
                     fmt(alloc / image_alloc, 3), alloc_goal, meta_goal])
    text.append(table(header, body))
    return "\n".join(text)


# ---- the NBD matrix ----------------------------------------------------------


class Matrix:
    """Medians per (target, workload, depth, conns) over the rounds."""

    def __init__(self, rows):
        self.targets = list(dict.fromkeys(r["target"] for r in rows))
        self.workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in rows)]
        self.cells = sorted({(int(r["depth"]), int(r["conns"])) for r in rows},
                            key=lambda c: (c[1], c[0]))
        runs = {}
        for r in rows:
            key = (r["target"], r["workload"], int(r["depth"]), int(r["conns"]))
            runs.setdefault(key, []).append(r)
        self.runs = runs
        self.rounds = max((len(v) for v in runs.values()), default=0)

    def values(self, target, workload, cell, field=None):
        """The cell's figures in round order; field defaults to the workload's
        metric."""
        field = field or self.metric(workload)[0]
        vals = [num(r[field]) for r in self.runs.get((target, workload) + cell, [])]
        return [v for v in vals if v is not None]

    def median(self, target, workload, cell, field):
        vals = self.values(target, workload, cell, field)
        return statistics.median(vals) if vals else None

    def metric(self, workload):
        return ("mbps", "MB/s") if workload.endswith("128k") else ("iops", "IOPS")

    def value(self, target, workload, cell):
        return self.median(target, workload, cell, self.metric(workload)[0])

    def best_ratio(self, target, peer, workload, cell):
        """target's median against the peer's fastest round: a peer's slow
        round cannot flatter target."""
        a, b = self.value(target, workload, cell), self.values(peer, workload, cell)
        return a / max(b) if a is not None and b and max(b) else None

    def ratio(self, target, peer, workload, cell):
        a, b = self.value(target, workload, cell), self.value(peer, workload, cell)
        return a / b if a is not None and b else None


def cell_name(cell):
    return f"qd{cell[0]}·{cell[1]}c"


def workload_tables(m):
    out = [f"## NBD workloads: median of {m.rounds} round(s)\n",
           "4k workloads in IOPS, 128k workloads in MB/s; `qdN·Mc` is iodepth N per "
           f"connection with M connections; `×file` is the ratio to `{PRIMARY}`.\n"]
    for w in m.workloads:
        unit = m.metric(w)[1]
        header = ["target"]
        for c in m.cells:
            header += [f"{cell_name(c)} {unit}", "×file"]
        body = []
        for t in m.targets:
            row = [f"`{t}`"]
            for c in m.cells:
                v = m.value(t, w, c)
                row += [fmt_int(v) if unit == "IOPS" else fmt(v),
                        "" if t == PRIMARY else fmt_ratio(m.ratio(t, PRIMARY, w, c))]
            body.append(row)
        out.append(f"### {w}\n")
        out.append(table(header, body))
    return "\n".join(out)


def peer_summary(m):
    peers = [p for p in PEERS if p in m.targets]
    insitu = [t for t in m.targets if is_insitu(t)]
    if not peers or not insitu:
        return ""
    primary = PRIMARY in peers
    header = (["target"] + [f"×{p}" for p in peers] +
              ([f"×{PRIMARY} best round"] if primary else []) + [f"worst ×{PRIMARY}", "worst cell"])
    body = []
    for t in insitu:
        row = [f"`{t}`"]
        for p in peers:
            row.append(fmt_ratio(geomean(
                [m.ratio(t, p, w, c) for w in m.workloads for c in m.cells])))
        if primary:
            row.append(fmt_ratio(geomean(
                [m.best_ratio(t, PRIMARY, w, c) for w in m.workloads for c in m.cells])))
        worst = None
        for w in m.workloads:
            for c in m.cells:
                r = m.ratio(t, PRIMARY, w, c)
                if r is not None and (worst is None or r < worst[0]):
                    worst = (r, f"{w} {cell_name(c)}")
        row += [fmt_ratio(worst[0]), worst[1]] if worst else ["—", "—"]
        body.append(row)
    return ("## insitu against every peer\n\nGeometric mean over all cells of the ratio "
            "insitu / peer (above 1: insitu faster), and the worst cell against "
            f"`{PRIMARY}`. `×{PRIMARY} best round` takes, in every cell, the peer's fastest "
            "round instead of its median, so that a peer's slow rounds cannot flatter "
            "insitu.\n\n" + table(header, body))


def round_spread(m):
    """The cells whose rounds disagree by more than SPREAD_LIMIT."""
    if m.rounds < 2:
        return ""
    body = []
    for t in m.targets:
        for w in m.workloads:
            for c in m.cells:
                vals = m.values(t, w, c)
                if len(vals) < 2 or min(vals) <= 0 or max(vals) / min(vals) <= SPREAD_LIMIT:
                    continue
                show = fmt_int if m.metric(w)[1] == "IOPS" else fmt
                body.append([f"`{t}`", w, cell_name(c), ", ".join(show(v) for v in vals),
                             f"{max(vals) / min(vals):.2f}"])
    intro = (f"## Rounds that disagree\n\nCells whose fastest round is more than {SPREAD_LIMIT}× "
             "their slowest, in round order (IOPS or MB/s). A peer's cell here moves every "
             "insitu ratio of that cell; the medians above hide which rounds were slow.\n")
    return intro + ("\n" + table(["target", "workload", "cell", "rounds", "max/min"], body)
                    if body else "\nNone.\n")


def resource_table(m, target_rows, run_rows, range_bytes):
    by_target = {}
    for r in target_rows:
        by_target.setdefault(r["target"], []).append(r)
    header = ["target", "peak RSS", "peak anon RSS", "server CPU s/GiB written", "server CPU s/GiB read",
              "first fill MB/s", "logical written", "payload written", "metadata written",
              "payload/logical", "meta/payload", "backing allocated", "alloc/range", "server"]
    body = []
    for t in m.targets:
        rows = by_target.get(t, [])
        last = rows[-1] if rows else {}
        rss = [num(r["peak_rss_kib"]) for r in rows if num(r["peak_rss_kib"])]
        anon = [num(r.get("peak_anon_kib")) for r in rows if num(r.get("peak_anon_kib"))]
        fills = [num(r["fill_mbps"]) for r in rows if r["fresh"] == "1" and num(r["fill_mbps"])]
        logical, payload, meta = (num(last.get(k)) for k in
                                  ("logical_bytes", "payload_bytes", "meta_bytes"))
        alloc = num(last.get("alloc_bytes"))
        body.append([
            f"`{t}`", fmt_bytes(max(rss) * 1024) if rss else "—",
            fmt_bytes(max(anon) * 1024) if anon else "—",
            fmt(cpu_per_gib(run_rows, t, WRITE_WORKLOADS, "write_bytes"), 2),
            fmt(cpu_per_gib(run_rows, t, READ_WORKLOADS, "read_bytes"), 2),
            fmt(statistics.median(fills)) if fills else "—",
            fmt_bytes(logical), fmt_bytes(payload), fmt_bytes(meta),
            fmt(payload / logical, 3) if payload is not None and logical else "—",
            f"{meta / payload * 100:.2f} %" if meta is not None and payload else "—",
            fmt_bytes(alloc), fmt(alloc / range_bytes, 3) if alloc is not None else "—",
            last.get("note", "") or "—"])
    return ("## Resources per target\n\nPeak RSS is the server's VmHWM just before it "
            "stopped (highest over the rounds); it counts the page-cache pages of a "
            "file the server maps (insitu maps its backing file to read payloads in "
            "place), which are the page cache's, not the server's. Peak anon RSS is "
            "the highest RssAnon + RssShmem sampled after every fio run: the "
            "server's own memory. Server CPU is utime+stime over the write "
            "workloads (randwrite4k, seqwrite128k) per GiB the client wrote, and over the "
            "read workloads per GiB read. Byte counters and allocation are from the last "
            "round, after a clean stop: lifetime counters of the volume (fill and every "
            "round), and st_blocks × 512 of the backing file; range is the "
            f"{fmt_bytes(range_bytes)} fio touches.\n\n" + table(header, body))


def cpu_per_gib(run_rows, target, workloads, field):
    cpu = sum(num(r["server_cpu_s"]) or 0 for r in run_rows
              if r["target"] == target and r["workload"] in workloads)
    data = sum(num(r[field]) or 0 for r in run_rows
               if r["target"] == target and r["workload"] in workloads)
    has_server = any(r["server_cpu_s"] for r in run_rows if r["target"] == target)
    return cpu / (data / GIB) if data and has_server else None


# ---- microbenchmarks ---------------------------------------------------------


MICRO_FIELDS = ("bytes_per_second", "items_per_second", "real_time", "ratio")


def load_micro(out):
    """One entry per benchmark: the median of its repetitions in every
    field the tables use, and the repetitions' bytes/s in "reps"."""
    path = os.path.join(out, "micro.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        runs = [b for b in json.load(f)["benchmarks"] if b.get("run_type") == "iteration"]
    by_name = {}
    for b in runs:
        by_name.setdefault(b.get("run_name", b["name"]), []).append(b)
    merged = []
    # Registration order: interleaving wrote the repetitions shuffled.
    order = lambda item: (item[1][0].get("family_index", 0),  # noqa: E731
                          item[1][0].get("per_family_instance_index", 0))
    for name, reps in sorted(by_name.items(), key=order):
        m = dict(reps[0], name=name)
        for k in MICRO_FIELDS:
            vals = [r[k] for r in reps if k in r]
            if vals:
                m[k] = statistics.median(vals)
        m["reps"] = [r.get("bytes_per_second", 0) for r in reps]
        merged.append(m)
    return merged


def codec_speeds(micro):
    """{(op, codec, chunk, data): (MB/s, ratio)}"""
    speeds = {}
    for b in micro:
        parts = b["name"].split("/")
        if parts[0] in ("compress", "decompress") and len(parts) == 4:
            speeds[tuple(parts)] = (b["bytes_per_second"] / 1e6, b.get("ratio"))
    return speeds


def micro_tables(micro):
    speeds = codec_speeds(micro)
    if not micro:
        return ""
    reps = max(len(b["reps"]) for b in micro)
    out = ["## Microbenchmarks (one core, Google Benchmark)\n",
           f"Every figure is the median of {reps} repetition(s), run in random order "
           "interleaved with the other benchmarks'.\n"]
    codecs = list(dict.fromkeys(k[1] for k in speeds))
    for data, label in (("fio", "fio-like data (60 % compressible, as the NBD runs write)"),
                        ("real", "real data")):
        header = ["codec", "compress 4k MB/s", "compress 128k MB/s",
                  "compress 128k in 16k segments MB/s", "decompress 4k MB/s",
                  "decompress 128k MB/s", "decompress 128k in 16k segments MB/s",
                  "4k reads of 128k k/s",
                  "4k reads of 128k in 16k segments k/s", "ratio 4k", "ratio 128k"]
        body = []
        for c in codecs:
            get = lambda op, ch: speeds.get((op, c, ch, data), (None, None))  # noqa: E731

            def reads(chunk):
                return next((b.get("items_per_second", 0) / 1e3 for b in micro
                             if b["name"] == f"read4k/{c}/{chunk}/{data}"), None)
            body.append([c, fmt(get("compress", "4k")[0], 0), fmt(get("compress", "128k")[0], 0),
                         fmt(get("compress", "128k-seg16k")[0], 0),
                         fmt(get("decompress", "4k")[0], 0), fmt(get("decompress", "128k")[0], 0),
                         fmt(get("decompress", "128k-seg16k")[0], 0),
                         fmt(reads("128k"), 1), fmt(reads("128k-seg16k"), 1),
                         fmt_ratio(get("compress", "4k")[1]),
                         fmt_ratio(get("compress", "128k")[1])])
        out.append(f"### Codecs on {label}\n")
        out.append("`none` is a plain copy of the chunk. Ratio is input bytes over stored "
                   "bytes (a chunk that does not save a sector is stored raw). A 4k read "
                   "opens the 128 KiB chunk's sealed payload and decodes its block as the "
                   "read path does (blocks spread evenly): the checksum and decode of the "
                   "stream up to the block, or of the one 16 KiB segment holding it. That "
                   "is the codec's ceiling for 4 KiB random reads of 128 KiB extents on "
                   "one core.\n")
        out.append(table(header, body))
    out.append(engine_table(micro))
    meta = [[f"`{b['name']}`", fmt(b.get("items_per_second", 0) / 1e6, 0),
             fmt(b["real_time"], 1) + " " + b["time_unit"]]
            for b in micro if b["name"].split("/")[0] in ("decode_slot", "meta_entry")]
    if meta:
        out.append("### Metadata hot paths\n")
        out.append(table(["benchmark", "M entries/s", "time per call"], meta))
    return "\n".join(out)


def engine_table(micro):
    by_codec = {}
    for b in micro:
        if b["name"].startswith("engine_write/"):
            by_codec.setdefault(b["name"].split("/")[1], {})[b["threads"]] = \
                (b["bytes_per_second"] / 1e6, [v / 1e6 for v in b["reps"]])
    if not by_codec:
        return ""
    body = []
    for codec, t in by_codec.items():
        r = t[2][0] / t[1][0] if 1 in t and 2 in t else None
        spread = (f"{min(t[2][1]) / max(t[1][1]):.2f}–{max(t[2][1]) / min(t[1][1]):.2f}×"
                  if r else "—")
        body.append([codec, fmt(t[1][0] if 1 in t else None, 0),
                     fmt(t[2][0] if 2 in t else None, 0), str(len(t.get(1, (0, []))[1])),
                     fmt_ratio(r), spread, met(r >= 1.8) if r else "—"])
    return ("### Engine scaling\n\n128 KiB writes of fio-like data into an InsituVolume on a "
            "MemDevice, each thread its own region, wall-clock time; medians of the "
            "repetitions, which ran interleaved with each other and with the other "
            "microbenchmarks. The range is the lowest 2-thread repetition over the highest "
            "1-thread one, and the highest over the lowest. Target: 2 threads ≥ "
            "1.8× one thread.\n\n" +
            table(["codec", "1 thread MB/s", "2 threads MB/s", "repetitions", "2T/1T",
                   "range", "target"], body))


def streaming_table(m, micro):
    speeds = codec_speeds(micro)
    insitu = [t for t in m.targets if is_insitu(t)]
    if not speeds or not insitu:
        return ""
    body = []
    for t in insitu:
        codec, chunk = insitu_codec(t)
        for w, op in (("seqwrite128k", "compress"), ("seqread128k", "decompress")):
            if w not in m.workloads:
                continue
            best = max(((m.value(t, w, c), c) for c in m.cells if m.value(t, w, c) is not None),
                       default=None)
            codec_mbps = speeds.get((op, codec, chunk, "fio"), (None,))[0]
            if best is None:
                continue
            ratio = best[0] / codec_mbps if codec_mbps else None
            goal = "n/a (no codec)" if codec == "none" else (met(ratio >= 0.8) if ratio else "—")
            body.append([f"`{t}`", w, fmt(best[0]), cell_name(best[1]), f"{op} {chunk}",
                         fmt(codec_mbps, 0), fmt(ratio, 2), goal])
    return ("## 128k streaming against single-core codec speed\n\nBest median MB/s over the "
            "cells of the sequential NBD workloads, against the codec's one-core speed on "
            "fio-like data in the unit the volume compresses: 128 KiB extents (4 KiB with "
            "`-4k`), in 16 KiB segments for lz4 and lzo unless `-noseg`. Target: "
            "≥ 0.8×.\n\n" +
            table(["target", "workload", "NBD MB/s", "cell", "codec bench", "codec MB/s",
                   "ratio", "target"], body))


# ---- plots -------------------------------------------------------------------


def write_dat(path, header, rows):
    with open(path, "w") as f:
        f.write(" ".join(header) + "\n")
        for row in rows:
            f.write(" ".join("?" if v is None else str(v) for v in row) + "\n")


def gnuplot(out, dat, png, title, ylabel, ncols, refline):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plot.gp")
    args = (f"datafile='{dat}'; outfile='{png}'; plottitle='{title}'; ylab='{ylabel}'; "
            f"ncols={ncols}; refline={refline}")
    try:
        subprocess.run(["gnuplot", "-e", args, script], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        # The tables matter more than the pictures: report and go on.
        print(f"report.py: no plot {os.path.basename(png)}: {e}", file=sys.stderr)
        return None
    return os.path.basename(png)


def plots(m, out):
    data_dir = os.path.join(out, "plot-data")
    os.makedirs(data_dir, exist_ok=True)
    made = []
    cells = [cell_name(c).replace("·", "-") for c in m.cells]
    insitu = [t for t in m.targets if is_insitu(t)]
    for w in m.workloads:
        unit = m.metric(w)[1]
        dat = os.path.join(data_dir, f"{w}.dat")
        write_dat(dat, ["target"] + cells,
                  [[t] + [m.value(t, w, c) for c in m.cells] for t in m.targets])
        made.append(gnuplot(out, dat, os.path.join(out, f"{unit.lower().replace('/', '')}-{w}.png"),
                            f"{w}: median {unit} per target", unit, len(cells) + 1, 0))
        if PRIMARY in m.targets and insitu:
            dat = os.path.join(data_dir, f"{w}-ratio.dat")
            write_dat(dat, ["target"] + cells,
                      [[t] + [m.ratio(t, PRIMARY, w, c) for c in m.cells] for t in insitu])
            made.append(gnuplot(out, dat, os.path.join(out, f"ratio-{w}.png"),
                                f"{w}: insitu / {PRIMARY}", f"ratio to {PRIMARY}",
                                len(cells) + 1, 1))
    return made


# ---- results.md --------------------------------------------------------------


def read_text(path):
    return open(path).read() if os.path.exists(path) else ""


def cmd_results(out):
    run_rows = read_csv(os.path.join(out, "results.csv"))
    target_rows = read_csv(os.path.join(out, "targets.csv"))
    config = dict(line.rstrip("\n").split("=", 1)
                  for line in read_text(os.path.join(out, "config.txt")).splitlines() if "=" in line)
    micro = load_micro(out)
    parts = ["# insitu benchmarks\n", read_text(os.path.join(out, "host.md")),
             read_text(os.path.join(out, "method.md"))]
    if run_rows:
        m = Matrix(run_rows)
        range_bytes = int(config.get("range_bytes", 512 * MIB))
        parts += [workload_tables(m), peer_summary(m), round_spread(m),
                  resource_table(m, target_rows, run_rows, range_bytes),
                  streaming_table(m, micro)]
        pngs = [p for p in plots(m, out) if p]
        if pngs:
            parts.append("## Plots\n\n" + "\n".join(f"![{p}]({p})" for p in pngs) + "\n")
    parts.append(micro_tables(micro))
    ds = dataset_rows(out)
    if ds:
        parts.append(dataset_markdown(ds))
    parts.append("Raw data: `results.csv` (one row per fio run), `targets.csv` (one row per "
                 "target and round), `dataset.csv`, `micro.json`; server logs in `logs/`.\n")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(p for p in parts if p))


COMMANDS = {
    "json-get": cmd_json_get,
    "fio-summary": cmd_fio_summary,
    "pick-files": cmd_pick_files,
    "nonzero": cmd_nonzero,
    "dataset": cmd_dataset,
    "results": cmd_results,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
