#include "libcore/mem_device.h"

#include <algorithm>
#include <cstring>
#include <mutex>

namespace insitu {

MemDevice::MemDevice(uint64_t size) : data_(size, 0) {}

Status MemDevice::Read(uint64_t offset, void* buf, size_t len) {
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  std::shared_lock lock(mu_);
  if (len != 0) std::memcpy(buf, data_.data() + offset, len);
  return Status::OK();
}

// RAM is as durable as this device gets, so fua has nothing to add.
Status MemDevice::Write(uint64_t offset, const void* buf, size_t len, bool /*fua*/) {
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  std::unique_lock lock(mu_);
  if (len != 0) std::memcpy(data_.data() + offset, buf, len);
  return Status::OK();
}

Status MemDevice::Flush() { return Status::OK(); }

Status MemDevice::Discard(uint64_t offset, uint64_t len) { return WriteZeroes(offset, len, false); }

Status MemDevice::WriteZeroes(uint64_t offset, uint64_t len, bool /*fua*/) {
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  std::unique_lock lock(mu_);
  std::fill_n(data_.begin() + static_cast<ptrdiff_t>(offset), len, uint8_t{0});
  return Status::OK();
}

}  // namespace insitu
