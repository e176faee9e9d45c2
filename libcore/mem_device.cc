#include "libcore/mem_device.h"

#include <algorithm>
#include <cstring>

namespace insitu {

namespace {

// At most this many stripes, none smaller than kMinStripeBytes: enough that
// writers of different regions rarely meet, few enough to cost nothing.
constexpr uint64_t kMaxStripes = 64;
constexpr uint64_t kMinStripeBytes = 1 << 20;

}  // namespace

template <bool kExclusive>
class MemDevice::StripeLocks {
 public:
  StripeLocks(const MemDevice& dev, uint64_t offset, uint64_t len)
      : stripes_(dev.stripes_.get()),
        first_(offset / dev.stripe_bytes_),
        end_(len == 0 ? first_ : (offset + len - 1) / dev.stripe_bytes_ + 1) {
    for (uint64_t i = first_; i < end_; ++i) {
      if constexpr (kExclusive) {
        stripes_[i].lock();
      } else {
        stripes_[i].lock_shared();
      }
    }
  }
  StripeLocks(const StripeLocks&) = delete;
  StripeLocks& operator=(const StripeLocks&) = delete;
  ~StripeLocks() {
    for (uint64_t i = end_; i > first_; --i) {
      if constexpr (kExclusive) {
        stripes_[i - 1].unlock();
      } else {
        stripes_[i - 1].unlock_shared();
      }
    }
  }

 private:
  std::shared_mutex* stripes_;
  uint64_t first_;
  uint64_t end_;
};

MemDevice::MemDevice(uint64_t size)
    : data_(size, 0),
      stripe_bytes_(std::max(kMinStripeBytes, (size + kMaxStripes - 1) / kMaxStripes)),
      stripes_(std::make_unique<std::shared_mutex[]>((size + stripe_bytes_ - 1) / stripe_bytes_)) {}

Status MemDevice::Read(uint64_t offset, void* buf, size_t len) {
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  StripeLocks<false> lock(*this, offset, len);
  if (len != 0) std::memcpy(buf, data_.data() + offset, len);
  return Status::OK();
}

// RAM is as durable as this device gets, so fua has nothing to add.
Status MemDevice::Write(uint64_t offset, const void* buf, size_t len, bool /*fua*/) {
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  StripeLocks<true> lock(*this, offset, len);
  if (len != 0) std::memcpy(data_.data() + offset, buf, len);
  return Status::OK();
}

Status MemDevice::Flush() { return Status::OK(); }

Status MemDevice::Discard(uint64_t offset, uint64_t len) { return WriteZeroes(offset, len, false); }

Status MemDevice::WriteZeroes(uint64_t offset, uint64_t len, bool /*fua*/) {
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  StripeLocks<true> lock(*this, offset, len);
  std::fill_n(data_.begin() + static_cast<ptrdiff_t>(offset), len, uint8_t{0});
  return Status::OK();
}

}  // namespace insitu
