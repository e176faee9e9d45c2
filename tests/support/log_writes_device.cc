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
    case Kind::kFlushRange:
      return "flush " + range;
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

namespace {

LogEntry Entry(LogEntry::Kind kind, uint64_t offset = 0, uint64_t length = 0, bool fua = false) {
  LogEntry e;
  e.kind = kind;
  e.offset = offset;
  e.length = length;
  e.fua = fua;
  return e;
}

}  // namespace

Status LogWritesDevice::Forward(LogEntry e, const std::function<Status()>& forward) {
  std::lock_guard<std::mutex> lock(mu_);
  INSITU_RETURN_IF_ERROR(forward());
  log_.push_back(std::move(e));
  return Status::OK();
}

Status LogWritesDevice::Write(uint64_t offset, const void* buf, size_t len, bool fua) {
  LogEntry e = Entry(LogEntry::Kind::kWrite, offset, len, fua);
  const auto* p = static_cast<const uint8_t*>(buf);
  e.data.assign(p, p + len);
  return Forward(std::move(e), [&] { return target_->Write(offset, buf, len, fua); });
}

Status LogWritesDevice::Flush() {
  return Forward(Entry(LogEntry::Kind::kFlush), [&] { return target_->Flush(); });
}

Status LogWritesDevice::FlushRange(uint64_t offset, uint64_t len) {
  return Forward(Entry(LogEntry::Kind::kFlushRange, offset, len),
                 [&] { return target_->FlushRange(offset, len); });
}

Status LogWritesDevice::Discard(uint64_t offset, uint64_t len) {
  return Forward(Entry(LogEntry::Kind::kDiscard, offset, len),
                 [&] { return target_->Discard(offset, len); });
}

Status LogWritesDevice::WriteZeroes(uint64_t offset, uint64_t len, bool fua) {
  return Forward(Entry(LogEntry::Kind::kWriteZeroes, offset, len, fua),
                 [&] { return target_->WriteZeroes(offset, len, fua); });
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
