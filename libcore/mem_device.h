// MemDevice: a BlockDevice held in RAM, for tests and as the reference disk
// of the model tests and the device of the engine microbenchmark.  Discard
// and WriteZeroes zero the range.  Thread-safe: reader-writer locks, one per
// stripe of 1 MiB regions (region r belongs to stripe r mod kStripes), and
// a request holds every stripe its range touches, taken in stripe order, so
// each request is atomic against every other while requests in different
// regions run at once, as on a RAM disk (one lock over the whole buffer made
// the engine benchmark's threads take turns at copying their payloads).
#pragma once

#include <array>
#include <cstdint>
#include <shared_mutex>
#include <string>
#include <vector>

#include "libcore/block_device.h"

namespace insitu {

class MemDevice : public BlockDevice {
 public:
  explicit MemDevice(uint64_t size);

  uint64_t Size() const override { return data_.size(); }
  Status Read(uint64_t offset, void* buf, size_t len) override;
  Status Write(uint64_t offset, const void* buf, size_t len, bool fua) override;
  Status Flush() override;
  Status Discard(uint64_t offset, uint64_t len) override;
  Status WriteZeroes(uint64_t offset, uint64_t len, bool fua) override;
  // Views bypass the lock: a reader must not read bytes that a
  // concurrent write is changing (the volume's extent locks see to it).
  const uint8_t* View(uint64_t offset, size_t len) override {
    if (offset > data_.size() || len > data_.size() - offset) return nullptr;
    return data_.data() + offset;
  }
  std::string Describe() const override { return "memory"; }

  // Direct access for tests (not synchronized with concurrent I/O).
  std::vector<uint8_t>& contents() { return data_; }

 private:
  static constexpr unsigned kRegionShift = 20;
  static constexpr unsigned kStripes = 64;
  // Locks the stripes of [offset, offset + len) for the life of the guard.
  template <bool kExclusive>
  class RangeGuard;

  std::array<std::shared_mutex, kStripes> stripes_;
  std::vector<uint8_t> data_;
};

}  // namespace insitu
