#include "tests/support/crash_replayer.h"

#include <algorithm>
#include <cstring>
#include <random>

namespace insitu::testing {

namespace {

constexpr uint64_t kSector = 512;

// Builds the images of one log.  The working image always holds the
// durable base of the current epoch (all entries before it) plus whatever
// has been applied since; variants apply their entries through an undo
// journal and roll back, so an image costs the bytes its entries touch,
// not a copy of the device.
class Replay {
 public:
  Replay(const std::vector<uint8_t>& initial, const std::vector<LogEntry>& log,
         const ReplayOptions& opts, const CrashVisitor& visit)
      : log_(log), opts_(opts), visit_(visit), rng_(opts.seed), image_(initial) {}

  size_t Run() {
    size_t start = 0;
    for (;;) {
      size_t end = start;
      while (end < log_.size() && log_[end].kind != LogEntry::Kind::kFlush) ++end;
      if (!Epoch(start, end)) break;
      if (end == log_.size()) break;
      CrashImage img;
      img.kind = CrashImage::Kind::kFlushPoint;
      img.epoch_start = end + 1;
      img.position = SkipMarks(end + 1);
      if (!Visit(img)) break;
      start = end + 1;
    }
    return visited_;
  }

 private:
  struct Undo {
    uint64_t offset;
    std::vector<uint8_t> old;
  };

  size_t SkipMarks(size_t i) const {
    while (i < log_.size() && log_[i].kind == LogEntry::Kind::kMark) ++i;
    return i;
  }

  bool Visit(const CrashImage& img) {
    ++visited_;
    return visit_(img, image_);
  }

  // Writes bytes [lo, hi) of entry e into the image, remembering the old
  // bytes when `undo` is set.
  void ApplyRange(const LogEntry& e, uint64_t lo, uint64_t hi, bool undo) {
    uint8_t* dst = image_.data() + lo;
    if (undo) undo_.push_back({lo, std::vector<uint8_t>(dst, dst + (hi - lo))});
    if (e.kind == LogEntry::Kind::kWrite) {
      std::memcpy(dst, e.data.data() + (lo - e.offset), hi - lo);
    } else {
      std::memset(dst, 0, hi - lo);
    }
  }
  void ApplyTorn(const LogEntry& e, const std::vector<uint32_t>& units) {
    for (uint32_t u : units) {
      uint64_t lo, hi;
      UnitRange(e, u, &lo, &hi);
      ApplyRange(e, lo, hi, true);
    }
  }
  void Rollback() {
    for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) {
      std::memcpy(image_.data() + it->offset, it->old.data(), it->old.size());
    }
    undo_.clear();
  }

  // Applies, in log order, the data-changing entries among `entries` that
  // are not in img.dropped, tearing img.torn; visits; rolls back.
  bool VisitVariant(const std::vector<size_t>& entries, const CrashImage& img) {
    for (size_t i : entries) {
      if (std::binary_search(img.dropped.begin(), img.dropped.end(), i)) continue;
      const LogEntry& e = log_[i];
      if (i == img.torn) {
        ApplyTorn(e, img.torn_units);
      } else {
        ApplyRange(e, e.offset, e.offset + e.length, true);
      }
    }
    const bool go_on = Visit(img);
    Rollback();
    return go_on;
  }

  // Which units of an n-unit entry land: a leading run, a trailing run
  // (the two a sequential transfer leaves), or any proper subset.  Never
  // none or all: those are the dropped and the complete entry.
  std::vector<uint32_t> PickUnits(uint32_t n) {
    std::vector<uint32_t> units;
    const uint32_t shape = static_cast<uint32_t>(rng_() % 3);
    if (shape < 2) {
      const uint32_t k = 1 + static_cast<uint32_t>(rng_() % (n - 1));
      const uint32_t first = shape == 0 ? 0 : n - k;
      for (uint32_t u = first; u < first + k; ++u) units.push_back(u);
      return units;
    }
    while (units.empty() || units.size() == n) {
      units.clear();
      for (uint32_t u = 0; u < n; ++u) {
        if (rng_() % 2) units.push_back(u);
      }
    }
    return units;
  }

  // The index of the first FlushRange among `ranges` (ascending log
  // indexes) that follows entry i and makes it durable, or
  // CrashImage::kNone.
  size_t CoveredAt(size_t i, const std::vector<size_t>& ranges) const {
    const LogEntry& e = log_[i];
    if (e.kind != LogEntry::Kind::kWrite) return CrashImage::kNone;
    for (auto f = std::upper_bound(ranges.begin(), ranges.end(), i); f != ranges.end(); ++f) {
      const LogEntry& r = log_[*f];
      if (r.offset <= e.offset && e.offset + e.length <= r.offset + r.length) return *f;
    }
    return CrashImage::kNone;
  }

  bool Epoch(size_t start, size_t end) {
    std::vector<size_t> data;    // the epoch's data-changing entries
    std::vector<size_t> ranges;  // and its FlushRanges
    for (size_t i = start; i < end; ++i) {
      if (log_[i].ChangesData()) data.push_back(i);
      if (log_[i].kind == LogEntry::Kind::kFlushRange) ranges.push_back(i);
    }
    if (data.empty()) return true;
    // Entry data[k] is durable in any image whose position is past
    // covered[k]: an acknowledged FUA entry at once, others once a
    // FlushRange covered them.
    std::vector<size_t> covered;
    for (size_t i : data) covered.push_back(log_[i].fua ? i : CoveredAt(i, ranges));
    auto durable = [&](size_t k, size_t position) {
      return covered[k] != CrashImage::kNone && covered[k] < position;
    };

    if (opts_.drop_each) {
      for (size_t k = 0; k < data.size(); ++k) {
        if (durable(k, end)) continue;
        CrashImage img;
        img.kind = CrashImage::Kind::kDropOne;
        img.position = end;
        img.epoch_start = start;
        img.dropped = {data[k]};
        if (!VisitVariant(data, img)) return false;
      }
    }

    for (uint32_t r = 0; r < opts_.subsets_per_epoch; ++r) {
      const size_t k = 1 + rng_() % data.size();
      const std::vector<size_t> upto(data.begin(), data.begin() + static_cast<ptrdiff_t>(k));
      CrashImage img;
      img.kind = CrashImage::Kind::kSubset;
      img.position = SkipMarks(upto.back() + 1);
      img.epoch_start = start;
      for (size_t j = 0; j < upto.size(); ++j) {
        if (!durable(j, img.position) && rng_() % 2) img.dropped.push_back(upto[j]);
      }
      if (!VisitVariant(upto, img)) return false;
    }

    std::vector<size_t> tearable;  // indexes into data
    for (size_t k = 0; k < data.size(); ++k) {
      if (SectorUnits(log_[data[k]]) >= 2) tearable.push_back(k);
    }
    for (uint32_t r = 0; r < opts_.torn_per_epoch && !tearable.empty(); ++r) {
      const size_t k = tearable[rng_() % tearable.size()];
      const size_t t = data[k];
      const LogEntry& e = log_[t];
      CrashImage img;
      img.kind = CrashImage::Kind::kTorn;
      img.epoch_start = start;
      img.torn = t;
      img.torn_units = PickUnits(SectorUnits(e));
      std::vector<size_t> applied;
      // A FUA entry, or one a FlushRange makes durable, can only be torn
      // while in flight; a completed plain write may also be torn in the
      // cache while later ones persist.
      if (durable(k, end) || rng_() % 2) {
        // In flight: nothing after it had been issued.  A FUA entry's own
        // completion mark must not be passed.
        img.position = e.fua ? t + 1 : SkipMarks(t + 1);
        for (size_t i : data) {
          if (i <= t) applied.push_back(i);
        }
      } else {
        // Torn in the cache.  In half of these images each other entry
        // not yet durable is also dropped at random: a lost undo record
        // beside the torn overwrite it protects is one such image.
        img.position = end;
        applied = data;
        const bool drop_others = rng_() % 2;
        for (size_t j = 0; drop_others && j < data.size(); ++j) {
          if (j != k && !durable(j, end) && rng_() % 2) img.dropped.push_back(data[j]);
        }
      }
      if (!VisitVariant(applied, img)) return false;
    }

    // Prefixes last: they advance the working image to the next epoch's
    // durable base.
    for (size_t d : data) {
      const LogEntry& e = log_[d];
      ApplyRange(e, e.offset, e.offset + e.length, false);
      if (!opts_.prefixes) continue;
      CrashImage img;
      img.kind = CrashImage::Kind::kPrefix;
      img.position = SkipMarks(d + 1);
      img.epoch_start = start;
      if (!Visit(img)) return false;
    }
    return true;
  }

  const std::vector<LogEntry>& log_;
  const ReplayOptions& opts_;
  const CrashVisitor& visit_;
  std::mt19937_64 rng_;
  std::vector<uint8_t> image_;
  std::vector<Undo> undo_;
  size_t visited_ = 0;
};

}  // namespace

const char* KindName(CrashImage::Kind kind) {
  switch (kind) {
    case CrashImage::Kind::kFlushPoint:
      return "flush point";
    case CrashImage::Kind::kPrefix:
      return "prefix";
    case CrashImage::Kind::kDropOne:
      return "drop one";
    case CrashImage::Kind::kSubset:
      return "subset";
    case CrashImage::Kind::kTorn:
      return "torn";
  }
  return "?";
}

std::string CrashImage::Describe(const std::vector<LogEntry>& log) const {
  std::string s = KindName(kind);
  s += ": position " + std::to_string(position) + ", epoch from entry " +
       std::to_string(epoch_start);
  if (!dropped.empty()) {
    s += ", dropped entries";
    for (size_t i = 0; i < dropped.size() && i < 8; ++i) {
      s += ' ';
      s += std::to_string(dropped[i]);
    }
    if (dropped.size() > 8) s += " ... (" + std::to_string(dropped.size()) + " in all)";
  }
  if (torn != kNone) {
    s += ", entry " + std::to_string(torn) + " (" + log[torn].Describe() + ") torn, " +
         std::to_string(torn_units.size()) + "/" + std::to_string(SectorUnits(log[torn])) +
         " sectors applied";
  }
  return s;
}

uint32_t SectorUnits(const LogEntry& e) {
  if (e.length == 0) return 0;
  return static_cast<uint32_t>((e.offset + e.length - 1) / kSector - e.offset / kSector + 1);
}

void UnitRange(const LogEntry& e, uint32_t unit, uint64_t* lo, uint64_t* hi) {
  const uint64_t sector_start = (e.offset / kSector + unit) * kSector;
  *lo = std::max(e.offset, sector_start);
  *hi = std::min(e.offset + e.length, sector_start + kSector);
}

size_t ReplayCrashes(const std::vector<uint8_t>& initial, const std::vector<LogEntry>& log,
                     const ReplayOptions& opts, const CrashVisitor& visit) {
  return Replay(initial, log, opts, visit).Run();
}

}  // namespace insitu::testing
