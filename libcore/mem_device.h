// MemDevice: a BlockDevice held in RAM, for tests, for the engine
// benchmarks and as the reference disk of the model tests.  Discard and
// WriteZeroes zero the range.
//
// Thread-safety: Read/Write/Discard/WriteZeroes may be called from any
// number of threads.  The buffer is cut into stripes, each with its own
// reader-writer lock, and a call locks the stripes its range touches in
// ascending order: calls on disjoint stripes run in parallel (as a disk
// takes writes from several queues), and overlapping ones are serialized,
// so a read never sees a torn write of the range it overlaps.
#pragma once

#include <cstdint>
#include <memory>
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
  // Views bypass the locks: a reader must not read bytes that a
  // concurrent write is changing (the volume's extent locks see to it).
  const uint8_t* View(uint64_t offset, size_t len) override {
    if (offset > data_.size() || len > data_.size() - offset) return nullptr;
    return data_.data() + offset;
  }
  std::string Describe() const override { return "memory"; }

  // Direct access for tests (not synchronized with concurrent I/O).
  std::vector<uint8_t>& contents() { return data_; }

 private:
  // Holds the stripes of [offset, offset + len) (len > 0) until it goes.
  template <bool kExclusive>
  class StripeLocks;

  std::vector<uint8_t> data_;
  uint64_t stripe_bytes_;
  std::unique_ptr<std::shared_mutex[]> stripes_;
};

}  // namespace insitu
