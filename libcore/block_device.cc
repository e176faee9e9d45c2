#include "libcore/block_device.h"

namespace insitu {

Status BlockDevice::GetAllocation(uint64_t offset, uint64_t len, std::vector<AllocationRun>* runs) {
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  runs->clear();
  runs->push_back(AllocationRun{len, false, false});
  return Status::OK();
}

Status BlockDevice::FlushRange(uint64_t offset, uint64_t len) {
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  return Flush();
}

Status BlockDevice::CheckRange(uint64_t offset, uint64_t len) const {
  const uint64_t size = Size();
  if (offset > size || len > size - offset) {
    return Status::OutOfRange("range " + std::to_string(offset) + "+" + std::to_string(len) +
                              " is past the end of the device (" + std::to_string(size) +
                              " bytes)");
  }
  return Status::OK();
}

}  // namespace insitu
