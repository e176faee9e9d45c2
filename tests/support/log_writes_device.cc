#include "tests/support/log_writes_device.h"

#include <algorithm>
#include <cstring>

namespace insitu::testing {

std::string LogEntry::Describe() const {
  const std::string range = std::to_string(offset) + "+" + std::to_string(length);
  switch (kind) {
    case Kind::kWrite:
      return "write " + range + (fua ? " fua" : "");
    case Kind::kFlush:
      return "flush";
    case Kind::kDiscard:
      return "discard " + range;
    case Kind::kWriteZeroes:
      return "write-zeroes " + range + (fua ? " fua" : "");
    case Kind::kMark:
      return "mark " + std::to_string(tag) + " (" + label + ")";
  }
  return "?";
}

void ApplyEntry(const LogEntry& e, std::vector<uint8_t>* image) {
  if (e.kind == LogEntry::Kind::kWrite) {
    std::memcpy(image->data() + e.offset, e.data.data(), e.data.size());
  } else if (e.ChangesData()) {
    std::fill_n(image->begin() + static_cast<ptrdiff_t>(e.offset), e.length, uint8_t{0});
  }
}

Status LogWritesDevice::Read(uint64_t offset, void* buf, size_t len) {
  return target_->Read(offset, buf, len);
}

Status LogWritesDevice::Write(uint64_t offset, const void* buf, size_t len, bool fua) {
  std::lock_guard<std::mutex> lock(mu_);
  INSITU_RETURN_IF_ERROR(target_->Write(offset, buf, len, fua));
  LogEntry e;
  e.kind = LogEntry::Kind::kWrite;
  e.offset = offset;
  e.length = len;
  e.fua = fua;
  const auto* p = static_cast<const uint8_t*>(buf);
  e.data.assign(p, p + len);
  log_.push_back(std::move(e));
  return Status::OK();
}

Status LogWritesDevice::Flush() {
  std::lock_guard<std::mutex> lock(mu_);
  INSITU_RETURN_IF_ERROR(target_->Flush());
  LogEntry e;
  e.kind = LogEntry::Kind::kFlush;
  log_.push_back(std::move(e));
  return Status::OK();
}

Status LogWritesDevice::Discard(uint64_t offset, uint64_t len) {
  std::lock_guard<std::mutex> lock(mu_);
  INSITU_RETURN_IF_ERROR(target_->Discard(offset, len));
  LogEntry e;
  e.kind = LogEntry::Kind::kDiscard;
  e.offset = offset;
  e.length = len;
  log_.push_back(std::move(e));
  return Status::OK();
}

Status LogWritesDevice::WriteZeroes(uint64_t offset, uint64_t len, bool fua) {
  std::lock_guard<std::mutex> lock(mu_);
  INSITU_RETURN_IF_ERROR(target_->WriteZeroes(offset, len, fua));
  LogEntry e;
  e.kind = LogEntry::Kind::kWriteZeroes;
  e.offset = offset;
  e.length = len;
  e.fua = fua;
  log_.push_back(std::move(e));
  return Status::OK();
}

Status LogWritesDevice::GetAllocation(uint64_t offset, uint64_t len,
                                      std::vector<AllocationRun>* runs) {
  return target_->GetAllocation(offset, len, runs);
}

size_t LogWritesDevice::Mark(uint64_t tag, std::string label) {
  std::lock_guard<std::mutex> lock(mu_);
  LogEntry e;
  e.kind = LogEntry::Kind::kMark;
  e.tag = tag;
  e.label = std::move(label);
  log_.push_back(std::move(e));
  return log_.size() - 1;
}

std::vector<LogEntry> LogWritesDevice::Entries() const {
  std::lock_guard<std::mutex> lock(mu_);
  return log_;
}

}  // namespace insitu::testing
