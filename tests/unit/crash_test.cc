// The crash harness: drives an insitu volume through a recording device
// (LogWritesDevice) with a randomized workload, replays the log into crash
// images (CrashReplayer), opens each image as the next start would, and
// checks every block against the BRIEF's durability rules:
//  1. durable data (flushed, or written with FUA) reads back exactly;
//  2. every other block reads back its last durable content or a content
//     written to it later — never an error, never other bytes, and blocks
//     not written since the last flush are never damaged.
//
// The model is per 4 KiB block: each client operation records the block's
// whole new content.  The durable content of a block is its content as of
// the last completed flush, or as of a later completed FUA operation that
// covered it; the allowed contents are that one and every later one up to
// the operation in flight.  For a FUA write covering part of a block this
// asks a little more than the byte-level contract (the block's other bytes
// become durable with it), which a volume that rewrites whole blocks gives.
//
// Also here: the unit tests of the recording device and of the replayer.
//
// INSITU_CRASH_POINTS sets the crash points checked per configuration
// (default 1000, 1.5 to 6 s per configuration in a RelWithDebInfo build;
// a soak run uses e.g. 100000), INSITU_CRASH_SEED the workload seed.  Each
// configuration prints "crash points checked: N, violations: V", V being
// the images with at least one bad block, and describes the first few.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string_view>
#include <thread>

#include "libcore/check.h"
#include "libcore/mem_device.h"
#include "libcore/volume.h"
#include "tests/support/crash_replayer.h"
#include "tests/support/log_writes_device.h"
#include "tests/unit/test_util.h"

namespace insitu {
namespace {

using format::kBlockSize;
using testing::BorrowedDevice;
using testing::CrashImage;
using testing::DataKind;
using testing::FillData;
using testing::LogEntry;
using testing::LogWritesDevice;
using testing::ReplayCrashes;
using testing::ReplayOptions;

uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v ? std::strtoull(v, nullptr, 0) : fallback;
}

uint64_t HashBlock(const uint8_t* p) {
  return std::hash<std::string_view>{}(
      std::string_view(reinterpret_cast<const char*>(p), kBlockSize));
}

// About the smallest device a volume fits on: 2 to 3 MiB of data (16 to
// 24 slots of 128 KiB), so writes overlap often and an image is cheap to
// check.
constexpr uint64_t kDeviceBytes = 4 << 20;

// Forwards to a device it does not own, and can hold one flush or fail one
// write: Arm() makes the next Flush or FlushRange wait, before it reaches
// the target, until Release(), so a test can stop a commit or a drain at
// its flush
// while other threads run and build interleavings one thread never
// reaches; FailWriteAt() makes the next write over one byte fail without
// reaching the target, whichever thread issues it.  Thread-safe.
class GateDevice : public BorrowedDevice {
 public:
  using BorrowedDevice::BorrowedDevice;
  Status Flush() override {
    HoldIfArmed();
    return BorrowedDevice::Flush();
  }
  Status FlushRange(uint64_t offset, uint64_t len) override {
    HoldIfArmed();
    return BorrowedDevice::FlushRange(offset, len);
  }
  Status Write(uint64_t offset, const void* buf, size_t len, bool fua) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (fail_err_ != 0 && offset <= fail_at_ && fail_at_ < offset + len) {
        const int err = fail_err_;
        fail_err_ = 0;
        ++faults_;
        return Status::IOError("injected write fault at " + std::to_string(offset), err);
      }
    }
    return BorrowedDevice::Write(offset, buf, len, fua);
  }
  void Arm() {
    std::lock_guard<std::mutex> lock(mu_);
    armed_ = true;
  }
  // Returns once a flush is held.
  void WaitHeld() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return held_; });
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = false;
    cv_.notify_all();
  }
  void FailWriteAt(uint64_t offset, int err) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_at_ = offset;
    fail_err_ = err;
  }
  uint64_t faults() {
    std::lock_guard<std::mutex> lock(mu_);
    return faults_;
  }

 private:
  // Waits in the flush until Release() when armed, disarming.
  void HoldIfArmed() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!armed_) return;
    armed_ = false;
    held_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !held_; });
  }

  std::mutex mu_;  // guards the fields below
  std::condition_variable cv_;
  bool armed_ = false;
  bool held_ = false;
  uint64_t fail_at_ = 0;
  int fail_err_ = 0;  // 0: no write fault armed
  uint64_t faults_ = 0;
};

// What the checks of one log found.
struct CrashReport {
  size_t replayed = 0;        // crash images the replay produced
  size_t points = 0;          // crash images checked (all, or a sample)
  size_t bad_points = 0;      // images with at least one violation
  size_t bad_blocks = 0;      // violations, counted per block
  uint64_t patch_writes = 0;  // writes the volume stored as patched blocks
  std::map<std::string, size_t> bad_by_kind;
  std::vector<std::string> examples;  // the first few bad images
  std::string Summary() const {
    std::string s = "crash points checked: " + std::to_string(points);
    if (replayed != points) s += " (sampled from " + std::to_string(replayed) + " replayed)";
    s += ", patch writes: " + std::to_string(patch_writes);
    s += ", violations: " + std::to_string(bad_points);
    if (bad_points != 0) {
      s += " (" + std::to_string(bad_blocks) + " bad blocks; by image kind:";
      for (const auto& [kind, n] : bad_by_kind) s += " " + kind + " " + std::to_string(n);
      s += ")";
    }
    return s;
  }
};

// A volume on a recording device plus the model of what each block may
// hold.  Client operations run one at a time; each is marked in the log
// when it returns, so a crash image's position tells how many completed.
// Not thread-safe: one thread at a time drives it.  A test may run other
// calls on volume() meanwhile, outside the model: a flush made that way
// promises nothing to the checker, and writes must go through the harness.
class CrashHarness {
 public:
  void Start(const FormatOptions& fopts) {
    backing_ = std::make_unique<MemDevice>(kDeviceBytes);
    Status st = FormatVolume(backing_.get(), fopts);
    ASSERT_TRUE(st.ok()) << st.ToString();
    initial_ = backing_->contents();
    log_ = std::make_unique<LogWritesDevice>(backing_.get());
    gate_ = std::make_unique<GateDevice>(log_.get());
    OpenOptions o;
    o.log = [](const std::string&) {};
    st = InsituVolume::Open(std::make_unique<BorrowedDevice>(gate_.get()), o, &vol_);
    ASSERT_TRUE(st.ok()) << st.ToString();
    data_offset_ = vol_->superblock().data_offset;
    reference_.assign(vol_->Size(), 0);
    history_.assign(vol_->Size() / kBlockSize, {Version{-1, HashBlock(reference_.data()), false}});
  }

  uint64_t size() const { return reference_.size(); }
  uint64_t data_offset() const { return data_offset_; }
  std::vector<LogEntry> Log() const { return log_->Entries(); }
  GateDevice& gate() { return *gate_; }
  InsituVolume& volume() { return *vol_; }

  void Write(uint64_t off, const std::vector<uint8_t>& data, bool fua) {
    Status st = TryWrite(off, data, fua);
    ASSERT_TRUE(st.ok()) << "write " << off << "+" << data.size() << ": " << st.ToString();
  }
  // A write that may fail: on failure the volume holds what it held, and
  // after a crash each block may hold either, as for a write in flight.
  Status TryWrite(uint64_t off, const std::vector<uint8_t>& data, bool fua) {
    Status st = vol_->Write(off, data.data(), data.size(), fua);
    std::vector<uint8_t> held;
    if (!st.ok()) held.assign(reference_.begin() + off, reference_.begin() + off + data.size());
    std::memcpy(reference_.data() + off, data.data(), data.size());
    Record(off / kBlockSize, (off + data.size() + kBlockSize - 1) / kBlockSize, fua && st.ok(),
           false,
           (st.ok() ? "write " : "failed write ") + std::to_string(off) + "+" +
               std::to_string(data.size()));
    if (!st.ok()) std::memcpy(reference_.data() + off, held.data(), held.size());
    return st;
  }
  void WriteZeroes(uint64_t off, uint64_t len, bool fua) {
    Status st = vol_->WriteZeroes(off, len, fua);
    ASSERT_TRUE(st.ok()) << "write-zeroes " << off << "+" << len << ": " << st.ToString();
    std::memset(reference_.data() + off, 0, len);
    Record(off / kBlockSize, (off + len + kBlockSize - 1) / kBlockSize, fua, false,
           "write-zeroes " + std::to_string(off) + "+" + std::to_string(len));
  }
  // Only whole blocks are trimmed (they read as zeros); the partial blocks
  // at the edges keep their data, as InsituVolume::Discard documents.
  void Trim(uint64_t off, uint64_t len) {
    Status st = vol_->Discard(off, len);
    ASSERT_TRUE(st.ok()) << "trim " << off << "+" << len << ": " << st.ToString();
    const uint64_t lo = (off + kBlockSize - 1) / kBlockSize, hi = (off + len) / kBlockSize;
    if (lo < hi) std::memset(reference_.data() + lo * kBlockSize, 0, (hi - lo) * kBlockSize);
    Record(lo, std::max(lo, hi), false, false,
           "trim " + std::to_string(off) + "+" + std::to_string(len));
  }
  void Flush() {
    Status st = vol_->Flush();
    ASSERT_TRUE(st.ok()) << st.ToString();
    Record(0, 0, false, true, "flush");
  }
  // A clean close flushes: the model treats it as one more flush.
  void Close() {
    Status st = vol_->Close();
    ASSERT_TRUE(st.ok()) << st.ToString();
    Record(0, 0, false, true, "close");
  }

  VolumeStats Stats() const { return vol_->Stats(); }

  // Without a crash, the volume must read back exactly the model's bytes.
  void VerifyLive() {
    std::vector<uint8_t> got(size());
    Status st = vol_->Read(0, got.data(), got.size());
    ASSERT_TRUE(st.ok()) << st.ToString();
    ASSERT_TRUE(got == reference_) << "the live volume differs from the model";
  }

  // Replays `log` (the recorded one, or an edited copy) and checks its
  // crash images: all of them, or an evenly spread sample of about
  // max_points when there are more (building an image is cheap, checking
  // one is not), so that every part of the log is covered.
  CrashReport Check(const std::vector<LogEntry>& log, const ReplayOptions& ropts,
                    size_t max_points = SIZE_MAX) const {
    // completed[p]: client operations completed once entries [0, p) were issued.
    std::vector<int64_t> completed(log.size() + 1, 0);
    for (size_t p = 0; p < log.size(); ++p) {
      completed[p + 1] = completed[p] + (log[p].kind == LogEntry::Kind::kMark ? 1 : 0);
    }
    CrashReport report;
    report.replayed =
        ReplayCrashes(initial_, log, ropts, [](const auto&, const auto&) { return true; });
    const size_t stride =
        report.replayed > max_points ? (report.replayed + max_points - 1) / max_points : 1;
    size_t index = 0;
    // One device for every image: allocating a fresh one each time was a
    // quarter of this test's time under ASan (page faults of new mappings).
    MemDevice mem(initial_.size());
    ReplayCrashes(initial_, log, ropts,
                  [&](const CrashImage& img, const std::vector<uint8_t>& image) {
                    if (index++ % stride == 0) {
                      CheckImage(img, image, completed[img.position], log, &mem, &report);
                    }
                    return true;
                  });
    return report;
  }

 private:
  // One content a block had: after client operation `op` (-1: the freshly
  // formatted volume).
  struct Version {
    int64_t op;
    uint64_t hash;
    bool fua;
  };

  void Record(uint64_t first_block, uint64_t end_block, bool fua, bool flush,
              const std::string& label) {
    const auto op = static_cast<int64_t>(flush_.size());
    flush_.push_back(flush);
    for (uint64_t b = first_block; b < end_block; ++b) {
      history_[b].push_back(Version{op, HashBlock(reference_.data() + b * kBlockSize), fua});
    }
    log_->Mark(static_cast<uint64_t>(op), label + (fua ? " fua" : "") + " completed");
  }

  static std::string OpName(int64_t op) {
    return op < 0 ? std::string("format") : "op " + std::to_string(op);
  }

  // Returns "" when block b may hold content `got` (nullopt: the read
  // failed) once ops [0, done) completed and op `last_flush` was the last
  // completed flush; otherwise what is wrong.
  std::string Judge(uint64_t b, std::optional<uint64_t> got, int64_t done,
                    int64_t last_flush) const {
    const std::vector<Version>& h = history_[b];
    size_t durable = 0;
    for (size_t j = 0; j < h.size(); ++j) {
      if (h[j].op < last_flush || (h[j].fua && h[j].op < done)) durable = j;
    }
    // The operation in flight (op `done`) may have landed in part.
    for (size_t j = durable; got && j < h.size() && h[j].op <= done; ++j) {
      if (h[j].hash == *got) return "";
    }
    std::string what = "block " + std::to_string(b) + " (durable: " + OpName(h[durable].op);
    if (durable + 1 < h.size() && h[durable + 1].op <= done) {
      what += ", rewritten since by " + OpName(h[durable + 1].op) + ")";
    } else {
      what += ", not written since)";
    }
    if (!got) return what + ": read failed";
    for (size_t j = 0; j < durable; ++j) {
      if (h[j].hash == *got) return what + ": read stale content of " + OpName(h[j].op);
    }
    static const uint8_t kZero[kBlockSize] = {};
    if (*got == HashBlock(kZero)) return what + ": read zeros";
    return what + ": read bytes never written there";
  }

  // Checks one crash image, copied into `mem` (a device of its size).
  void CheckImage(const CrashImage& img, const std::vector<uint8_t>& image, int64_t done,
                  const std::vector<LogEntry>& log, MemDevice* mem, CrashReport* report) const {
    ++report->points;
    int64_t last_flush = -1;
    for (int64_t op = 0; op < done; ++op) {
      if (flush_[static_cast<size_t>(op)]) last_flush = op;
    }
    size_t bad = 0;
    std::string first;
    auto note = [&](std::string what) {
      if (bad++ == 0) first = std::move(what);
    };

    ASSERT_EQ(mem->Size(), image.size());
    std::memcpy(mem->contents().data(), image.data(), image.size());
    OpenOptions o;
    o.log = [](const std::string&) {};
    std::unique_ptr<InsituVolume> vol;
    Status st = InsituVolume::Open(std::make_unique<BorrowedDevice>(mem), o, &vol);
    if (!st.ok()) {
      note("open failed: " + st.ToString());
    } else {
      // Read a slot at a time; only where that fails, block by block, so
      // one bad extent does not hide the state of its neighbours.
      constexpr uint64_t kChunk = format::kMaxExtentBlocks * kBlockSize;
      std::vector<uint8_t> buf(kChunk);
      for (uint64_t off = 0; off < size(); off += kChunk) {
        const uint64_t len = std::min(kChunk, size() - off);
        const bool chunk_ok = vol->Read(off, buf.data(), len).ok();
        for (uint64_t b = off / kBlockSize; b < (off + len) / kBlockSize; ++b) {
          uint8_t* p = buf.data() + (b * kBlockSize - off);
          std::optional<uint64_t> got;
          if (chunk_ok || vol->Read(b * kBlockSize, p, kBlockSize).ok()) got = HashBlock(p);
          std::string what = Judge(b, got, done, last_flush);
          if (!what.empty()) note(std::move(what));
        }
      }
      // Recovered and closed, the volume must pass a full fsck -n.
      st = vol->Close();
      vol.reset();
      if (!st.ok()) note("close after recovery failed: " + st.ToString());
      CheckOptions copts;
      copts.force = true;
      CheckReport check;
      st = CheckVolume(std::make_unique<BorrowedDevice>(mem), copts, &check);
      if (!st.ok() || check.ExitCode() != 0) {
        note("fsck -fn after recovery: exit " + std::to_string(check.ExitCode()) + " " +
             st.ToString() + (check.problems.empty() ? "" : ": " + check.problems.front().what));
      }
    }
    if (bad == 0) return;
    ++report->bad_points;
    report->bad_blocks += bad;
    ++report->bad_by_kind[testing::KindName(img.kind)];
    if (report->examples.size() < 5) {
      report->examples.push_back(img.Describe(log) + "; " + std::to_string(done) +
                                 " ops completed, last flush " + OpName(last_flush) + ": " +
                                 std::to_string(bad) + " bad blocks, first " + first);
    }
  }

  std::unique_ptr<MemDevice> backing_;
  std::vector<uint8_t> initial_;  // the device right after format
  uint64_t data_offset_ = 0;
  std::unique_ptr<LogWritesDevice> log_;
  std::unique_ptr<GateDevice> gate_;  // between the volume and log_
  std::unique_ptr<InsituVolume> vol_;
  std::vector<uint8_t> reference_;             // what the volume holds now
  std::vector<bool> flush_;                    // per client op: a flush?
  std::vector<std::vector<Version>> history_;  // per block, in op order
};

// The randomized workload: whole extents written first so that later
// small writes are read-modify-writes into shared 128 KiB extents, then a
// mix of small and large writes, trims, write-zeroes, flushes and FUA.
void RunWorkload(CrashHarness& h, std::mt19937_64& rng, uint64_t ops) {
  const uint64_t size = h.size();
  const uint64_t blocks = size / kBlockSize;
  constexpr uint64_t kSlot = format::kMaxExtentBlocks * kBlockSize;
  std::vector<uint8_t> buf;
  // Mostly compressible, so that extents are shared and RMW is common.
  auto data = [&](size_t len) {
    buf.resize(len);
    const uint64_t k = rng() % 20;
    DataKind kind = DataKind::kText;
    if (k >= 17) {
      kind = DataKind::kRandom;
    } else if (k >= 12) {
      kind = DataKind::kMixed;
    }
    FillData(rng, kind, buf.data(), len);
    return buf;
  };
  for (int i = 0; i < 6; ++i) {
    h.Write(rng() % (size / kSlot) * kSlot, data(kSlot), false);
    if (::testing::Test::HasFatalFailure()) return;
  }
  h.Flush();
  for (uint64_t op = 0; op < ops && !::testing::Test::HasFatalFailure(); ++op) {
    const uint64_t kind = rng() % 100;
    const bool fua = rng() % 7 == 0;
    if (kind < 18) {  // large: a whole slot, or a block range across slots
      if (rng() % 2) {
        h.Write(rng() % (size / kSlot) * kSlot, data(kSlot), fua);
      } else {
        const uint64_t n = 4 + rng() % 45;
        h.Write(rng() % (blocks - n + 1) * kBlockSize, data(n * kBlockSize), fua);
      }
    } else if (kind < 48) {  // small, at any byte: a read-modify-write
      const uint64_t len = 1 + rng() % 12000;
      h.Write(rng() % (size - len + 1), data(len), fua);
    } else if (kind < 62) {  // a few whole blocks inside an extent
      const uint64_t n = 1 + rng() % 4;
      h.Write(rng() % (blocks - n + 1) * kBlockSize, data(n * kBlockSize), fua);
    } else if (kind < 71) {
      const uint64_t len = 1 + rng() % (40 * kBlockSize);
      h.Trim(rng() % (size - len + 1), len);
    } else if (kind < 80) {
      const uint64_t len = 1 + rng() % (16 * kBlockSize);
      h.WriteZeroes(rng() % (size - len + 1), len, fua);
    } else if (kind < 90) {
      h.Flush();
    } else {  // a FUA write of one block, the way a journal commits
      h.Write(rng() % blocks * kBlockSize, data(kBlockSize), true);
    }
  }
  if (::testing::Test::HasFatalFailure()) return;
  h.VerifyLive();
  if (::testing::Test::HasFatalFailure()) return;
  h.Close();
}

struct CrashConfig {
  const char* codec;
  format::MetaMode mode;
};

std::string ConfigLabel(const CrashConfig& c) {
  return std::string(c.codec) +
         (c.mode == format::MetaMode::kWriteThrough ? " write-through" : " write-back");
}

void PrintTo(const CrashConfig& c, std::ostream* os) { *os << ConfigLabel(c); }

FormatOptions Options(const CrashConfig& c) {
  FormatOptions fopts;
  EXPECT_TRUE(ParseCodecSpec(c.codec, &fopts.codec).ok()) << c.codec;
  fopts.meta_mode = c.mode;
  // As `insitu format` makes them: lz4 and lzo payloads in segments.
  fopts.segment_blocks = DefaultSegmentBlocks(fopts.codec.id, fopts.extent_max_blocks);
  // No periodic write-back during the run: the log must be a function of
  // the seed alone.
  fopts.meta_interval_s = 3600;
  return fopts;
}

// One workload of at most this many crash points keeps the log (every
// write's bytes) small; longer runs are several workloads with seeds
// derived from the first.
constexpr uint64_t kPointsPerRound = 2000;

// Runs workloads on one configuration until about `points` crash images
// were checked.  A client operation yields 6 to 20 images, depending on
// how many backing writes and flushes the write path makes for it; the
// workload is sized for the low end and the images sampled down.
CrashReport RunConfig(const CrashConfig& cfg, uint64_t seed, uint64_t points) {
  CrashReport total;
  for (uint64_t round = 0; total.points < points; ++round) {
    std::mt19937_64 rng(seed + round);
    CrashHarness h;
    h.Start(Options(cfg));
    if (::testing::Test::HasFatalFailure()) return total;
    const uint64_t want = std::min(kPointsPerRound, points - total.points);
    RunWorkload(h, rng, std::max<uint64_t>(20, want / 6));
    if (::testing::Test::HasFatalFailure()) return total;
    total.patch_writes += h.Stats().patch_writes;
    ReplayOptions ropts;
    ropts.seed = seed + round;
    ropts.subsets_per_epoch = 3;
    ropts.torn_per_epoch = 4;
    const CrashReport r = h.Check(h.Log(), ropts, want);
    total.replayed += r.replayed;
    total.points += r.points;
    total.bad_points += r.bad_points;
    total.bad_blocks += r.bad_blocks;
    for (const auto& [kind, n] : r.bad_by_kind) total.bad_by_kind[kind] += n;
    for (const std::string& e : r.examples) {
      if (total.examples.size() < 5) {
        total.examples.push_back("round " + std::to_string(round) + ": " + e);
      }
    }
  }
  std::printf("[%s] %s\n", ConfigLabel(cfg).c_str(), total.Summary().c_str());
  for (const std::string& e : total.examples) std::printf("  e.g. %s\n", e.c_str());
  return total;
}

uint64_t SeedFor(const CrashConfig& cfg) {
  return EnvOr("INSITU_CRASH_SEED",
               0xc4a5'0000 + std::strlen(cfg.codec) * 16 + static_cast<uint64_t>(cfg.mode));
}

class CrashRules : public ::testing::TestWithParam<CrashConfig> {};

// The durability rules hold at every crash point.  The seed's write path
// (in-place rewrite of shared extents, metadata written with no flush
// after its data, write-back metadata older than the data after a crash)
// failed it by hundreds of crash points per configuration.
TEST_P(CrashRules, EveryCrashPointKeepsTheDurabilityRules) {
  const CrashConfig& cfg = GetParam();
  const uint64_t seed = SeedFor(cfg);
  SCOPED_TRACE("seed " + std::to_string(seed) + " (set INSITU_CRASH_SEED to reproduce)");
  const CrashReport report = RunConfig(cfg, seed, EnvOr("INSITU_CRASH_POINTS", 1000));
  EXPECT_GT(report.points, 0u);
  EXPECT_EQ(report.bad_points, 0u) << report.Summary();
  // The crash points cover patched blocks (a raw extent has no room for one).
  if (std::string(cfg.codec) != "none") {
    EXPECT_GT(report.patch_writes, 0u);
  }
}

std::string ConfigName(const ::testing::TestParamInfo<CrashConfig>& info) {
  std::string name = info.param.codec;
  for (char& c : name) {
    if (c == ':') c = '_';
  }
  return name +
         (info.param.mode == format::MetaMode::kWriteThrough ? "_writethrough" : "_writeback");
}

INSTANTIATE_TEST_SUITE_P(CrashCodecs, CrashRules,
                         ::testing::Values(CrashConfig{"none", format::MetaMode::kWriteThrough},
                                           CrashConfig{"none", format::MetaMode::kWriteBack},
                                           CrashConfig{"lzo", format::MetaMode::kWriteThrough},
                                           CrashConfig{"lzo", format::MetaMode::kWriteBack},
                                           CrashConfig{"zlib:1", format::MetaMode::kWriteThrough},
                                           CrashConfig{"zlib:1", format::MetaMode::kWriteBack},
                                           CrashConfig{"zstd:1", format::MetaMode::kWriteThrough},
                                           CrashConfig{"zstd:1", format::MetaMode::kWriteBack},
                                           CrashConfig{"lz4", format::MetaMode::kWriteThrough},
                                           CrashConfig{"lz4", format::MetaMode::kWriteBack}),
                         ConfigName);

// `len` bytes of data of one kind.
std::vector<uint8_t> Data(std::mt19937_64& rng, DataKind kind, size_t len) {
  std::vector<uint8_t> v(len);
  FillData(rng, kind, v.data(), len);
  return v;
}
std::vector<uint8_t> Text(std::mt19937_64& rng, size_t len) {
  return Data(rng, DataKind::kText, len);
}

// Replays every crash point of h's log (seeded variants too) and expects
// more than min_points of them, each keeping the rules.
void ExpectEveryCrashPointKeepsTheRules(const CrashHarness& h, uint64_t seed, size_t min_points) {
  ReplayOptions ropts;
  ropts.seed = seed;
  const CrashReport r = h.Check(h.Log(), ropts);
  EXPECT_GT(r.points, min_points);
  EXPECT_EQ(r.bad_points, 0u) << r.Summary() << (r.examples.empty() ? "" : "; " + r.examples[0]);
}

// A committed extent cut by a small write, then rewrites of the same block
// before the cut's overwrites are drained: the rewrites save nothing an
// earlier record of the same epoch saved and do not drain first
// (SlotRewrite::SavedByQueuedWrites), and every crash point, through the
// commit that finally drains them, keeps the rules.
class CrashRewrites : public ::testing::TestWithParam<const char*> {};

TEST_P(CrashRewrites, RewritesBeforeTheDrainKeepTheRules) {
  CrashHarness h;
  h.Start(Options(CrashConfig{GetParam(), format::MetaMode::kWriteBack}));
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  std::mt19937_64 rng(5);
  h.Write(0, Text(rng, format::kMaxExtentBlocks * kBlockSize), false);
  h.Flush();
  const size_t cut_done = h.Log().size();
  for (int i = 0; i < 7; ++i) h.Write(5 * kBlockSize, Text(rng, kBlockSize), false);
  const std::vector<LogEntry> before_flush = h.Log();
  h.Write(9 * kBlockSize + 100, Text(rng, 3000), false);
  h.Flush();
  h.VerifyLive();
  h.Close();
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  for (size_t i = cut_done; i < before_flush.size(); ++i) {
    EXPECT_NE(before_flush[i].kind, LogEntry::Kind::kFlush) << "a flush at entry " << i;
    EXPECT_NE(before_flush[i].kind, LogEntry::Kind::kFlushRange) << "a drain at entry " << i;
  }
  ExpectEveryCrashPointKeepsTheRules(h, 5, 100);
}

// With codec none the block is rewritten raw in place, each time over the
// bytes the previous rewrite queued.
INSTANTIATE_TEST_SUITE_P(Codecs, CrashRewrites,
                         ::testing::Values("none", "lz4", "lzo", "zstd:1", "zlib:1"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == ':') c = '_';
                           }
                           return name;
                         });

constexpr size_t kSlotBytes = format::kMaxExtentBlocks * kBlockSize;

// Builds the interleaving of the two tests below up to c2 held: slot 0 committed whole, cut
// by a 4 KiB write queued under commit c's epoch, and commit c2 held at
// its drain's flush (that drain's batch holds the cut).  *c2 runs c2,
// whose result goes to *commit_c2.
void HoldADrainWithACutQueued(CrashHarness& h, std::mt19937_64& rng, std::thread* c2,
                              Status* commit_c2) {
  h.Write(0, Text(rng, kSlotBytes), false);
  h.Flush();
  h.Write(kSlotBytes, Text(rng, kBlockSize), false);  // something for commit c to write

  // Commit c, held at its data flush; its drain found nothing queued.
  h.gate().Arm();
  Status commit_c;
  std::thread c([&] { commit_c = h.volume().Flush(); });
  h.gate().WaitHeld();
  h.Write(5 * kBlockSize, Text(rng, kBlockSize), false);  // the cut: queued, epoch (d, c)
  h.gate().Release();
  c.join();
  ASSERT_TRUE(commit_c.ok()) << commit_c.ToString();
  ASSERT_EQ(h.Stats().undo_drains, 0u);

  h.gate().Arm();
  *c2 = std::thread([&h, commit_c2] { *commit_c2 = h.volume().Flush(); });
  h.gate().WaitHeld();
}

// Runs `write` on another thread and returns once it counted an undo drain
// (it counts before it waits for the drain held) or finished; gives up
// after 20 s, so that a build without the drain fails instead of hanging.
uint64_t StartAndWaitForUndoDrain(CrashHarness& h, std::thread* writer,
                                  std::function<void()> write) {
  std::atomic<bool> done{false};
  *writer = std::thread([write = std::move(write), &done] {
    write();
    done = true;
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (h.Stats().undo_drains == 0 && !done && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return h.Stats().undo_drains;
}

// An overwrite queued under one epoch, then a rewrite of its sectors under
// another: a cut made while commit c writes its page (after that commit's
// drain, so it stays queued), then a whole-slot write while the next
// commit, c2, holds its drain at the flush.  c2's snapshot describes the
// cut's pieces, whose bytes are still only in the queue; the cut's own
// record saved the bytes under the previous layout, and is void once c2
// lands.  So the whole-slot write must drain before reading the bytes it
// saves (an undo drain), or its record would put the old extent's bytes
// back into the pieces c2 describes.  Every crash point keeps the rules.
TEST(CrashRewrites, ARewriteUnderAnotherEpochDrainsFirst) {
  for (const char* codec : {"lz4", "zstd:1"}) {
    SCOPED_TRACE(codec);
    CrashHarness h;
    h.Start(Options(CrashConfig{codec, format::MetaMode::kWriteBack}));
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    std::mt19937_64 rng(9);
    std::thread c2;
    Status commit_c2;
    HoldADrainWithACutQueued(h, rng, &c2, &commit_c2);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    const std::vector<uint8_t> whole = Text(rng, kSlotBytes);
    std::thread merge;
    const uint64_t undo_drains =
        StartAndWaitForUndoDrain(h, &merge, [&] { h.Write(0, whole, false); });
    h.gate().Release();
    c2.join();
    merge.join();
    ASSERT_TRUE(commit_c2.ok()) << commit_c2.ToString();
    EXPECT_EQ(undo_drains, 1u) << "the merge did not drain before saving its undo record";

    h.Flush();
    h.VerifyLive();
    h.Close();
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    ExpectEveryCrashPointKeepsTheRules(h, 9, 50);
  }
}

// The same undo drain failing: an overwrite of a committed raw extent is
// queued behind c2's batch, so only the merge's drain writes it, and that
// backing write fails.  The merge returns the error having saved no record
// and written nothing (the live volume reads as before it), the volume
// takes no more writes, and every crash point of the log keeps the rules:
// the failed drain leaves journal space it had reserved unused.
TEST(CrashRewrites, AFailedUndoDrainFailsTheRewriteAndLosesNothing) {
  for (const char* codec : {"lz4", "zstd:1"}) {
    SCOPED_TRACE(codec);
    CrashHarness h;
    h.Start(Options(CrashConfig{codec, format::MetaMode::kWriteBack}));
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    std::mt19937_64 rng(11);
    h.Write(2 * kSlotBytes, Data(rng, DataKind::kRandom, kSlotBytes), false);  // stored raw
    std::thread c2;
    Status commit_c2;
    HoldADrainWithACutQueued(h, rng, &c2, &commit_c2);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    const uint64_t raw_block_off = 2 * kSlotBytes + 3 * kBlockSize;
    h.Write(raw_block_off, Data(rng, DataKind::kRandom, kBlockSize), false);
    h.gate().FailWriteAt(h.data_offset() + raw_block_off, EIO);

    const std::vector<uint8_t> whole = Text(rng, kSlotBytes);
    Status merge_st;
    std::thread merge;
    const uint64_t undo_drains =
        StartAndWaitForUndoDrain(h, &merge, [&] { merge_st = h.TryWrite(0, whole, false); });
    h.gate().Release();
    c2.join();
    merge.join();
    EXPECT_EQ(undo_drains, 1u) << "the merge did not drain before saving its undo record";
    EXPECT_EQ(h.gate().faults(), 1u);
    EXPECT_EQ(merge_st.err(), EIO) << merge_st.ToString();
    // c2 ends before or after the merge stops the volume.
    EXPECT_TRUE(commit_c2.ok() || commit_c2.err() == EIO) << commit_c2.ToString();
    EXPECT_EQ(h.TryWrite(6 * kSlotBytes, Text(rng, kBlockSize), false).err(), EIO)
        << "writes still taken after the undo drain failed";
    h.VerifyLive();
    ASSERT_FALSE(::testing::Test::HasFatalFailure());

    // The log ends there, as if the daemon had been killed.
    ExpectEveryCrashPointKeepsTheRules(h, 11, 50);
  }
}

// The harness itself works: it finds nothing wrong with images taken only
// at completed flushes of a simple workload, and flags the same images once
// a flushed write is removed from the log — so the checker can fail.
TEST(CrashHarness, CheckerFlagsADroppedFlushedWrite) {
  for (const CrashConfig& cfg : {CrashConfig{"lz4", format::MetaMode::kWriteThrough},
                                 CrashConfig{"zstd:1", format::MetaMode::kWriteBack}}) {
    const CrashReport report = RunConfig(cfg, SeedFor(cfg), 150);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    EXPECT_GT(report.points, 100u) << ConfigLabel(cfg);
  }

  CrashHarness h;
  h.Start(Options({"lz4", format::MetaMode::kWriteThrough}));
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  std::mt19937_64 rng(7);
  std::vector<uint8_t> extent(format::kMaxExtentBlocks * kBlockSize);
  FillData(rng, DataKind::kText, extent.data(), extent.size());
  h.Write(0, extent, false);
  h.Flush();
  FillData(rng, DataKind::kText, extent.data(), extent.size());
  h.Write(4 * extent.size(), extent, false);
  h.Flush();
  h.Close();
  ASSERT_FALSE(::testing::Test::HasFatalFailure());

  ReplayOptions flush_points_only;
  flush_points_only.prefixes = false;
  flush_points_only.drop_each = false;
  flush_points_only.subsets_per_epoch = 0;
  flush_points_only.torn_per_epoch = 0;
  std::vector<LogEntry> log = h.Log();
  const CrashReport good = h.Check(log, flush_points_only);
  EXPECT_GT(good.points, 3u);
  EXPECT_EQ(good.bad_points, 0u) << good.Summary();

  // Remove every backing write into the place of the first extent (blocks
  // 0-31), which was written and flushed.  From the completion of that
  // flush (op 1) on, every flush point must read those blocks wrong; none
  // before the first write removed may.
  const uint64_t lo = h.data_offset(), hi = lo + extent.size();
  auto into_extent = [&](const LogEntry& e) {
    return e.kind == LogEntry::Kind::kWrite && e.offset < hi && e.offset + e.length > lo;
  };
  const auto first_removed = std::find_if(log.begin(), log.end(), into_extent) - log.begin();
  ASSERT_LT(static_cast<size_t>(first_removed), log.size());
  log.erase(std::remove_if(log.begin(), log.end(), into_extent), log.end());
  auto is_flush = [](const LogEntry& e) { return e.kind == LogEntry::Kind::kFlush; };
  const auto flushed = std::find_if(log.begin(), log.end(), [](const LogEntry& e) {
    return e.kind == LogEntry::Kind::kMark && e.tag == 1;
  });
  const auto at_most = std::count_if(log.begin() + first_removed, log.end(), is_flush);
  const auto at_least = std::count_if(flushed, log.end(), is_flush);
  ASSERT_GT(at_least, 0);
  const CrashReport broken = h.Check(log, flush_points_only);
  std::printf("[dropped flushed write] %s\n", broken.Summary().c_str());
  ASSERT_FALSE(broken.examples.empty());
  std::printf("  e.g. %s\n", broken.examples.front().c_str());
  EXPECT_GE(broken.bad_points, static_cast<size_t>(at_least)) << broken.Summary();
  EXPECT_LE(broken.bad_points, static_cast<size_t>(at_most)) << broken.Summary();
  // Each broken image loses the whole removed extent, and fsck -fn flags it
  // too (counted as one more finding per image).
  EXPECT_EQ(broken.bad_blocks, broken.bad_points * (format::kMaxExtentBlocks + 1))
      << broken.Summary();
}

// ---- the recording device -------------------------------------------------

TEST(LogWritesDevice, RecordsMutationsInOrderButNotReads) {
  MemDevice mem(1 << 20);
  LogWritesDevice dev(&mem);
  const std::vector<uint8_t> data(1000, 0x5a);
  uint8_t buf[16];
  ASSERT_TRUE(dev.Write(4096, data.data(), data.size(), false).ok());
  ASSERT_TRUE(dev.Read(0, buf, sizeof(buf)).ok());
  EXPECT_EQ(dev.Mark(0, "client write 0"), 1u);
  ASSERT_TRUE(dev.Flush().ok());
  ASSERT_TRUE(dev.Discard(8192, 4096).ok());
  ASSERT_TRUE(dev.WriteZeroes(512, 1024, true).ok());
  ASSERT_TRUE(dev.Write(0, data.data(), 10, true).ok());
  ASSERT_TRUE(dev.FlushRange(4096, 8192).ok());
  EXPECT_FALSE(dev.Write(mem.Size(), data.data(), 10, false).ok());  // failed: not logged
  EXPECT_FALSE(dev.FlushRange(mem.Size() - 10, 11).ok());

  const std::vector<LogEntry> log = dev.Entries();
  ASSERT_EQ(log.size(), 7u);
  EXPECT_EQ(log[0].Describe(), "write 4096+1000");
  EXPECT_TRUE(log[0].data == data);
  EXPECT_EQ(log[1].Describe(), "mark 0 (client write 0)");
  EXPECT_EQ(log[2].Describe(), "flush");
  EXPECT_EQ(log[3].Describe(), "discard 8192+4096");
  EXPECT_EQ(log[4].Describe(), "write-zeroes 512+1024 fua");
  EXPECT_EQ(log[5].Describe(), "write 0+10 fua");
  EXPECT_EQ(log[6].Describe(), "flush 4096+8192");
  EXPECT_FALSE(log[6].ChangesData());
  EXPECT_FALSE(log[1].ChangesData());
  EXPECT_FALSE(log[2].ChangesData());
  EXPECT_TRUE(log[3].ChangesData());
}

// Concurrent writers to overlapping ranges: the log order is the order
// the target applied them, so replaying it reproduces the target.
TEST(LogWritesDevice, ConcurrentWritersReplayToTheFinalContents) {
  constexpr uint64_t kSize = 256 * 1024;
  MemDevice mem(kSize);
  const std::vector<uint8_t> initial = mem.contents();
  LogWritesDevice dev(&mem);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&dev, t] {
      std::mt19937_64 rng(static_cast<uint64_t>(t));
      std::vector<uint8_t> buf;
      for (int i = 0; i < 300; ++i) {
        const uint64_t len = 1 + rng() % 20000, off = rng() % (kSize - len + 1);
        if (rng() % 8 == 0) {
          EXPECT_TRUE(dev.WriteZeroes(off, len, false).ok());
        } else {
          buf.assign(len, static_cast<uint8_t>(rng()));
          EXPECT_TRUE(dev.Write(off, buf.data(), len, false).ok());
        }
        if (i % 50 == 0) {
          EXPECT_TRUE(dev.Flush().ok());
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  std::vector<uint8_t> replayed = initial;
  const std::vector<LogEntry> log = dev.Entries();
  EXPECT_EQ(log.size(), 4u * (300 + 6));
  for (const LogEntry& e : log) testing::ApplyEntry(e, &replayed);
  EXPECT_TRUE(replayed == mem.contents());
}

// ---- the replayer ----------------------------------------------------------

// A log from random writes, write-zeroes, discards, FUA writes and flushes
// (and, with flush_ranges, FlushRanges of up to 32 KiB) over a small
// MemDevice; `at_flush` gets the device contents after each flush.
struct RecordedRun {
  std::vector<uint8_t> initial;
  std::vector<LogEntry> log;
  std::vector<std::vector<uint8_t>> at_flush;
};

RecordedRun Record(uint64_t seed, int ops, bool flush_ranges = false) {
  constexpr uint64_t kSize = 64 * 1024;
  MemDevice mem(kSize);
  std::mt19937_64 rng(seed);
  FillData(rng, DataKind::kRandom, mem.contents().data(), kSize);
  RecordedRun run;
  run.initial = mem.contents();
  LogWritesDevice dev(&mem);
  std::vector<uint8_t> buf;
  for (int i = 0; i < ops; ++i) {
    const uint64_t len = 1 + rng() % 6000, off = rng() % (kSize - len + 1);
    const uint64_t kind = rng() % 10;
    if (kind < 5) {
      buf.resize(len);
      FillData(rng, DataKind::kRandom, buf.data(), len);
      EXPECT_TRUE(dev.Write(off, buf.data(), len, rng() % 4 == 0).ok());
    } else if (kind < 6) {
      EXPECT_TRUE(dev.WriteZeroes(off, len, rng() % 2 == 0).ok());
    } else if (kind < 7) {
      EXPECT_TRUE(dev.Discard(off, len).ok());
    } else if (kind < 8) {
      EXPECT_TRUE(dev.Flush().ok());
      run.at_flush.push_back(mem.contents());
    } else if (kind < 9 && flush_ranges) {
      const uint64_t range = 1 + rng() % 32768, at = rng() % (kSize - range + 1);
      EXPECT_TRUE(dev.FlushRange(at, range).ok());
    } else {
      dev.Mark(static_cast<uint64_t>(i), "op");
    }
  }
  run.log = dev.Entries();
  return run;
}

// The image a CrashImage describes, built the slow, obvious way.
std::vector<uint8_t> Rebuild(const RecordedRun& run, const CrashImage& img) {
  std::vector<uint8_t> image = run.initial;
  for (size_t i = 0; i < img.position; ++i) {
    const LogEntry& e = run.log[i];
    if (i >= img.epoch_start && std::count(img.dropped.begin(), img.dropped.end(), i)) continue;
    if (i != img.torn) {
      testing::ApplyEntry(e, &image);
      continue;
    }
    for (uint32_t u : img.torn_units) {
      uint64_t lo, hi;
      testing::UnitRange(e, u, &lo, &hi);
      LogEntry part = e;
      part.offset = lo;
      part.length = hi - lo;
      if (e.kind == LogEntry::Kind::kWrite) {
        part.data.assign(e.data.begin() + static_cast<ptrdiff_t>(lo - e.offset),
                         e.data.begin() + static_cast<ptrdiff_t>(hi - e.offset));
      }
      testing::ApplyEntry(part, &image);
    }
  }
  return image;
}

TEST(CrashReplayer, FlushPointImagesEqualTheDeviceAtEachFlush) {
  const RecordedRun run = Record(1, 300);
  ASSERT_GT(run.at_flush.size(), 5u);
  size_t flushes = 0;
  ReplayCrashes(run.initial, run.log, ReplayOptions{},
                [&](const CrashImage& img, const std::vector<uint8_t>& image) {
                  if (img.kind != CrashImage::Kind::kFlushPoint) return true;
                  EXPECT_TRUE(image == run.at_flush[flushes]) << "flush " << flushes;
                  EXPECT_EQ(run.log[img.epoch_start - 1].kind, LogEntry::Kind::kFlush);
                  ++flushes;
                  return true;
                });
  EXPECT_EQ(flushes, run.at_flush.size());
}

TEST(CrashReplayer, EveryImageIsTheStateItDescribes) {
  const RecordedRun run = Record(2, 200);
  std::map<CrashImage::Kind, size_t> kinds;
  const size_t n = ReplayCrashes(run.initial, run.log, ReplayOptions{},
                                 [&](const CrashImage& img, const std::vector<uint8_t>& image) {
                                   ++kinds[img.kind];
                                   EXPECT_TRUE(image == Rebuild(run, img)) << img.Describe(run.log);
                                   // Whatever was before the epoch's flush is never dropped.
                                   for (size_t d : img.dropped)
                                     EXPECT_GE(d, img.epoch_start) << img.Describe(run.log);
                                   return !::testing::Test::HasFailure();
                                 });
  EXPECT_EQ(kinds.size(), 5u) << "every kind of image is produced";
  size_t data_entries = 0;
  for (const LogEntry& e : run.log) data_entries += e.ChangesData();
  EXPECT_EQ(kinds[CrashImage::Kind::kPrefix], data_entries);
  EXPECT_GT(n, 2 * data_entries);
}

TEST(CrashReplayer, TornImagesDifferOnlyInsideTheTornWrite) {
  const RecordedRun run = Record(3, 300);
  ReplayOptions opts;
  opts.torn_per_epoch = 20;
  size_t torn = 0;
  ReplayCrashes(run.initial, run.log, opts,
                [&](const CrashImage& img, const std::vector<uint8_t>& image) {
                  if (img.kind != CrashImage::Kind::kTorn) return true;
                  ++torn;
                  const LogEntry& e = run.log[img.torn];
                  const uint32_t units = testing::SectorUnits(e);
                  EXPECT_GE(units, 2u);
                  EXPECT_GT(img.torn_units.size(), 0u);
                  EXPECT_LT(img.torn_units.size(), units);
                  // Against the same image with the entry dropped: equal
                  // outside its range, and inside only where a unit landed
                  // (a unit that landed may carry the bytes already there).
                  CrashImage without = img;
                  without.torn = CrashImage::kNone;
                  without.dropped.push_back(img.torn);
                  const std::vector<uint8_t> base = Rebuild(run, without);
                  std::vector<bool> landed(units);
                  for (uint32_t u : img.torn_units) landed[u] = true;
                  for (uint64_t i = 0; i < image.size(); ++i) {
                    if (image[i] == base[i]) continue;
                    const bool inside = i >= e.offset && i < e.offset + e.length;
                    if (!inside || !landed[i / 512 - e.offset / 512]) {
                      ADD_FAILURE() << img.Describe(run.log) << ": byte " << i << " differs";
                      return false;
                    }
                  }
                  return true;
                });
  EXPECT_GT(torn, 50u);
}

TEST(CrashReplayer, FuaWritesAreInEveryImageAfterTheyComplete) {
  const RecordedRun run = Record(4, 300);
  size_t checked = 0;
  ReplayCrashes(run.initial, run.log, ReplayOptions{},
                [&](const CrashImage& img, const std::vector<uint8_t>&) {
                  for (size_t i = img.epoch_start; i < img.position; ++i) {
                    if (!run.log[i].fua) continue;
                    ++checked;
                    EXPECT_EQ(std::count(img.dropped.begin(), img.dropped.end(), i), 0)
                        << img.Describe(run.log);
                    // Only the entry in flight may be torn.
                    if (img.torn == i) {
                      EXPECT_EQ(img.position, i + 1) << img.Describe(run.log);
                    }
                  }
                  return true;
                });
  EXPECT_GT(checked, 100u);
}

// A write wholly inside a FlushRange that completed is in every image
// after it, never dropped or torn; a write the range does not wholly
// cover stays as droppable as before.  Images are still what they say.
TEST(CrashReplayer, FlushRangeMakesOnlyTheWritesInsideItDurable) {
  const RecordedRun run = Record(6, 400, true);
  auto covered = [&](size_t i, size_t position) {
    const LogEntry& e = run.log[i];
    if (e.kind != LogEntry::Kind::kWrite) return false;
    for (size_t f = i + 1; f < position; ++f) {
      const LogEntry& r = run.log[f];
      if (r.kind == LogEntry::Kind::kFlush) return false;  // another epoch
      if (r.kind == LogEntry::Kind::kFlushRange && r.offset <= e.offset &&
          e.offset + e.length <= r.offset + r.length) {
        return true;
      }
    }
    return false;
  };
  size_t kept = 0, dropped_before_a_range = 0;
  ReplayCrashes(run.initial, run.log, ReplayOptions{},
                [&](const CrashImage& img, const std::vector<uint8_t>& image) {
                  EXPECT_TRUE(image == Rebuild(run, img)) << img.Describe(run.log);
                  for (size_t i = img.epoch_start; i < img.position; ++i) {
                    if (!covered(i, img.position)) continue;
                    ++kept;
                    EXPECT_EQ(std::count(img.dropped.begin(), img.dropped.end(), i), 0)
                        << img.Describe(run.log);
                    EXPECT_NE(img.torn, i) << img.Describe(run.log);
                  }
                  for (size_t d : img.dropped) {
                    for (size_t f = d + 1; f < img.position; ++f) {
                      if (run.log[f].kind == LogEntry::Kind::kFlushRange) {
                        ++dropped_before_a_range;
                        break;
                      }
                    }
                  }
                  return !::testing::Test::HasFailure();
                });
  EXPECT_GT(kept, 100u);
  EXPECT_GT(dropped_before_a_range, 100u);
}

TEST(CrashReplayer, SameSeedSameImagesAndVisitorCanStop) {
  const RecordedRun run = Record(5, 120);
  auto describe_all = [&](uint64_t seed) {
    ReplayOptions opts;
    opts.seed = seed;
    std::vector<std::string> out;
    ReplayCrashes(run.initial, run.log, opts, [&](const CrashImage& img, const auto&) {
      out.push_back(img.Describe(run.log));
      return true;
    });
    return out;
  };
  EXPECT_EQ(describe_all(9), describe_all(9));
  EXPECT_NE(describe_all(9), describe_all(10));
  size_t seen = 0;
  EXPECT_EQ(ReplayCrashes(run.initial, run.log, ReplayOptions{},
                          [&](const CrashImage&, const auto&) { return ++seen < 7; }),
            7u);
}

}  // namespace
}  // namespace insitu
