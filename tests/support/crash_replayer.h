// Crash replay: rebuilds, from a device's initial contents and the log a
// LogWritesDevice recorded, the images the device may hold after a power
// failure at points of the log (the CrashMonkey idea).
//
// The model of the device (the BlockDevice contract):
//  - A Flush makes every mutation acknowledged before it durable, so every
//    image at or after a completed flush holds all entries before it.
//  - A FlushRange makes durable the writes acknowledged before it that lie
//    wholly inside its range: images after it hold them.  Everything else
//    stays as undecided as before it (a write only partly inside the range,
//    discards and write-zeroes, which the model does not tie to a range),
//    and no epoch ends there.
//  - Between flushes ("an epoch") the device may have persisted any subset
//    of the acknowledged mutations, except that a FUA write or FUA
//    write-zeroes is durable once acknowledged.  The entry issued last may
//    still be in flight, so it may be missing or torn even with FUA.
//  - Only 512-byte sectors are atomic: a multi-sector mutation may land
//    partly, any subset of its sectors, in any order.  A range that starts
//    or ends inside a sector tears at sector boundaries too.
//  - Discard and WriteZeroes persist as zeros (hole punches in this
//    project's backings).
//  - Persisted entries are applied in log order: the driver issues a write
//    only after the writes it depends on completed, so a later write to
//    the same sector cannot be overtaken by an earlier one.
//
// What is produced, per epoch (the entries after one flush, up to the
// next): the image after each data-changing entry (a prefix); at the end of
// the epoch, the epoch with each non-durable entry dropped in turn; random
// subsets at random points; torn variants (one entry partly applied, either
// the one in flight or a completed non-durable one with everything else of
// the epoch applied, or with a random subset of the other non-durable
// entries dropped); and the image at each completed flush.
//
// A CrashImage's `position` says how far the log had got: entries
// [0, position) had been issued, and every mark among them had happened, so
// the client operations those marks describe had completed.  Where an
// image is equally possible a few marks later, the later position is used
// (the check against completed operations is then strictest).
//
// Thread-safety: ReplayCrashes is a pure function of its arguments; calls
// may run concurrently on different (or the same, unmodified) logs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tests/support/log_writes_device.h"

namespace insitu::testing {

struct CrashImage {
  enum class Kind {
    kFlushPoint,  // everything up to a completed flush
    kPrefix,      // every entry of the epoch up to one point
    kDropOne,     // the whole epoch but one entry
    kSubset,      // a random subset of the epoch up to a random point
    kTorn,        // one entry only partly persisted
  };
  static constexpr size_t kNone = static_cast<size_t>(-1);

  Kind kind = Kind::kPrefix;
  size_t position = 0;     // entries [0, position) had been issued
  size_t epoch_start = 0;  // every entry before this index is applied
  // Data-changing entries in [epoch_start, position) not applied, ascending.
  std::vector<size_t> dropped;
  // The entry applied only in part (never also in `dropped`), and which of
  // its sector units were applied (unit i is the i-th sector the entry
  // touches, clipped to the entry's range), ascending.
  size_t torn = kNone;
  std::vector<uint32_t> torn_units;

  // E.g. "torn: entry 41 (write 1052672+131072) 7/256 sectors, position 42".
  std::string Describe(const std::vector<LogEntry>& log) const;
};

const char* KindName(CrashImage::Kind kind);

struct ReplayOptions {
  uint64_t seed = 1;      // drives every random choice
  bool prefixes = true;   // an image after each data-changing entry
  bool drop_each = true;  // at each epoch's end, each droppable entry dropped
  uint32_t subsets_per_epoch = 4;
  uint32_t torn_per_epoch = 4;
};

// The sector units of a data-changing entry: how many, and the byte range
// of unit i.
uint32_t SectorUnits(const LogEntry& e);
void UnitRange(const LogEntry& e, uint32_t unit, uint64_t* lo, uint64_t* hi);

// Returns true to go on, false to stop the replay.  `image` is valid only
// during the call.
using CrashVisitor = std::function<bool(const CrashImage&, const std::vector<uint8_t>& image)>;

// Calls visit for every crash image of `log` replayed over `initial` (the
// device contents when recording started), epoch by epoch.  Deterministic
// for a given seed.  Holds one image in memory, whatever the log's length.
// Returns the number of images visited.
size_t ReplayCrashes(const std::vector<uint8_t>& initial, const std::vector<LogEntry>& log,
                     const ReplayOptions& opts, const CrashVisitor& visit);

}  // namespace insitu::testing
