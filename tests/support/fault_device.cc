#include "tests/support/fault_device.h"

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

namespace insitu::testing {

namespace {

constexpr uint64_t kSector = 512;

const char* OpName(FaultOp op) {
  switch (op) {
    case FaultOp::kRead:
      return "read";
    case FaultOp::kWrite:
      return "write";
    case FaultOp::kFlush:
      return "flush";
    case FaultOp::kDiscard:
      return "discard";
  }
  return "?";
}

}  // namespace

void FaultDevice::FailNth(FaultOp op, uint64_t n, int err) {
  std::lock_guard<std::mutex> lock(mu_);
  armed_[static_cast<int>(op)] = Armed{n, err};
}

void FaultDevice::TearNthWrite(uint64_t n, uint64_t seed) {
  std::lock_guard<std::mutex> lock(mu_);
  tear_ = Armed{n, EIO};
  tear_seed_ = seed;
}

void FaultDevice::SetWriteBudget(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  budget_left_ = bytes;
}

void FaultDevice::FailAll(int err) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_all_ = err;
}

void FaultDevice::Heal() {
  std::lock_guard<std::mutex> lock(mu_);
  fail_all_ = 0;
  for (Armed& a : armed_) a = Armed{};
  tear_ = Armed{};
  budget_left_.reset();
}

uint64_t FaultDevice::faults() const {
  std::lock_guard<std::mutex> lock(mu_);
  return faults_;
}

FaultDevice::Decision FaultDevice::Decide(FaultOp op, uint64_t write_bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  Decision d;
  // Every armed countdown of this kind advances on every call, so "the
  // n-th call" counts calls, not calls that no other fault took.
  Armed& armed = armed_[static_cast<int>(op)];
  const bool nth = armed.countdown != 0 && --armed.countdown == 0;
  const bool tear = op == FaultOp::kWrite && tear_.countdown != 0 && --tear_.countdown == 0;
  if (fail_all_ != 0) {
    d.err = fail_all_;
  } else if (nth) {
    d.err = armed.err;
  } else if (tear) {
    d.err = EIO;
    d.tear = true;
    d.seed = tear_seed_;
  } else if (op == FaultOp::kWrite && budget_left_) {
    if (write_bytes > *budget_left_) {
      d.err = ENOSPC;
    } else {
      *budget_left_ -= write_bytes;
    }
  }
  if (d.err != 0) ++faults_;
  return d;
}

Status FaultDevice::Fail(const Decision& d, FaultOp op, uint64_t offset, uint64_t len) {
  return Status::IOError(std::string("injected ") + (d.tear ? "torn " : "") + OpName(op) +
                             " fault at " + std::to_string(offset) + "+" + std::to_string(len),
                         d.err);
}

void FaultDevice::ApplyTorn(uint64_t offset, const void* buf, size_t len, bool fua, uint64_t seed) {
  const uint64_t first = offset / kSector;
  const uint64_t n = len == 0 ? 0 : (offset + len - 1) / kSector - first + 1;
  if (n < 2) return;  // a single sector is atomic: the write is simply lost
  std::mt19937_64 rng(seed);
  std::vector<bool> land(n);
  size_t landed = 0;
  while (landed == 0 || landed == n) {
    landed = 0;
    for (uint64_t i = 0; i < n; ++i) {
      land[i] = rng() % 2;
      landed += land[i];
    }
  }
  for (uint64_t i = 0; i < n; ++i) {
    if (!land[i]) continue;
    const uint64_t lo = std::max(offset, (first + i) * kSector);
    const uint64_t hi = std::min(offset + len, (first + i + 1) * kSector);
    // The target's own result does not matter: the caller sees EIO anyway.
    if (buf != nullptr) {
      (void)target_->Write(lo, static_cast<const uint8_t*>(buf) + (lo - offset), hi - lo, fua);
    } else {
      (void)target_->WriteZeroes(lo, hi - lo, fua);
    }
  }
}

Status FaultDevice::Read(uint64_t offset, void* buf, size_t len) {
  const Decision d = Decide(FaultOp::kRead, 0);
  if (d.err != 0) return Fail(d, FaultOp::kRead, offset, len);
  return target_->Read(offset, buf, len);
}

Status FaultDevice::Write(uint64_t offset, const void* buf, size_t len, bool fua) {
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  const Decision d = Decide(FaultOp::kWrite, len);
  if (d.tear) ApplyTorn(offset, buf, len, fua, d.seed);
  if (d.err != 0) return Fail(d, FaultOp::kWrite, offset, len);
  return target_->Write(offset, buf, len, fua);
}

Status FaultDevice::WriteZeroes(uint64_t offset, uint64_t len, bool fua) {
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  const Decision d = Decide(FaultOp::kWrite, len);
  if (d.tear) ApplyTorn(offset, nullptr, len, fua, d.seed);
  if (d.err != 0) return Fail(d, FaultOp::kWrite, offset, len);
  return target_->WriteZeroes(offset, len, fua);
}

Status FaultDevice::Flush() {
  const Decision d = Decide(FaultOp::kFlush, 0);
  if (d.err != 0) return Fail(d, FaultOp::kFlush, 0, 0);
  return target_->Flush();
}

Status FaultDevice::FlushRange(uint64_t offset, uint64_t len) {
  const Decision d = Decide(FaultOp::kFlush, 0);
  if (d.err != 0) return Fail(d, FaultOp::kFlush, offset, len);
  return target_->FlushRange(offset, len);
}

Status FaultDevice::Discard(uint64_t offset, uint64_t len) {
  const Decision d = Decide(FaultOp::kDiscard, 0);
  if (d.err != 0) return Fail(d, FaultOp::kDiscard, offset, len);
  return target_->Discard(offset, len);
}

Status FaultDevice::GetAllocation(uint64_t offset, uint64_t len, std::vector<AllocationRun>* runs) {
  return target_->GetAllocation(offset, len, runs);
}

}  // namespace insitu::testing
