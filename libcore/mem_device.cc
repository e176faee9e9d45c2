#include "libcore/mem_device.h"

#include <algorithm>
#include <bitset>
#include <cstring>

namespace insitu {

template <bool kExclusive>
class MemDevice::RangeGuard {
 public:
  RangeGuard(MemDevice* dev, uint64_t offset, uint64_t len) : dev_(dev) {
    if (len == 0) return;
    const uint64_t first = offset >> kRegionShift;
    const uint64_t last = (offset + len - 1) >> kRegionShift;
    if (last - first + 1 >= kStripes) {
      held_.set();
    } else {
      for (uint64_t r = first; r <= last; r++) held_.set(r % kStripes);
    }
    ForEachHeld([](std::shared_mutex& m) {
      if constexpr (kExclusive) {
        m.lock();
      } else {
        m.lock_shared();
      }
    });
  }
  ~RangeGuard() {
    ForEachHeld([](std::shared_mutex& m) {
      if constexpr (kExclusive) {
        m.unlock();
      } else {
        m.unlock_shared();
      }
    });
  }
  RangeGuard(const RangeGuard&) = delete;
  RangeGuard& operator=(const RangeGuard&) = delete;

 private:
  // In stripe order, the same for every request: no two requests can each
  // hold a stripe the other waits for.
  template <typename Fn>
  void ForEachHeld(Fn fn) {
    for (unsigned i = 0; i < kStripes; i++) {
      if (held_[i]) fn(dev_->stripes_[i]);
    }
  }

  MemDevice* dev_;
  std::bitset<kStripes> held_;
};

MemDevice::MemDevice(uint64_t size) : data_(size, 0) {}

Status MemDevice::Read(uint64_t offset, void* buf, size_t len) {
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  RangeGuard<false> guard(this, offset, len);
  if (len != 0) std::memcpy(buf, data_.data() + offset, len);
  return Status::OK();
}

// RAM is as durable as this device gets, so fua has nothing to add.
Status MemDevice::Write(uint64_t offset, const void* buf, size_t len, bool /*fua*/) {
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  RangeGuard<true> guard(this, offset, len);
  if (len != 0) std::memcpy(data_.data() + offset, buf, len);
  return Status::OK();
}

Status MemDevice::Flush() { return Status::OK(); }

Status MemDevice::Discard(uint64_t offset, uint64_t len) { return WriteZeroes(offset, len, false); }

Status MemDevice::WriteZeroes(uint64_t offset, uint64_t len, bool /*fua*/) {
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  RangeGuard<true> guard(this, offset, len);
  std::fill_n(data_.begin() + static_cast<ptrdiff_t>(offset), len, uint8_t{0});
  return Status::OK();
}

}  // namespace insitu
