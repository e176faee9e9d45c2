// FlushGate: a BlockDevice that forwards to one it does not own and can
// hold one Flush, so a test can stop a commit or a drain at its flush while
// other threads run, and so build interleavings that a single thread never
// reaches (a write made while a commit writes its page, say).
//
// Arm() makes the next Flush wait, before it reaches the target, until
// Release(); WaitHeld() returns once it waits.  Disarmed, every call goes
// straight through.
//
// Thread-safety: every method may be called concurrently.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "libcore/block_device.h"

namespace insitu::testing {

class FlushGate : public BlockDevice {
 public:
  explicit FlushGate(BlockDevice* target) : target_(target) {}

  uint64_t Size() const override { return target_->Size(); }
  Status Read(uint64_t offset, void* buf, size_t len) override {
    return target_->Read(offset, buf, len);
  }
  Status Write(uint64_t offset, const void* buf, size_t len, bool fua) override {
    return target_->Write(offset, buf, len, fua);
  }
  Status Flush() override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (armed_) {
        armed_ = false;
        held_ = true;
        cv_.notify_all();
        cv_.wait(lock, [&] { return !held_; });
      }
    }
    return target_->Flush();
  }
  Status Discard(uint64_t offset, uint64_t len) override { return target_->Discard(offset, len); }
  Status WriteZeroes(uint64_t offset, uint64_t len, bool fua) override {
    return target_->WriteZeroes(offset, len, fua);
  }
  Status GetAllocation(uint64_t offset, uint64_t len, std::vector<AllocationRun>* runs) override {
    return target_->GetAllocation(offset, len, runs);
  }
  const uint8_t* View(uint64_t offset, size_t len) override { return target_->View(offset, len); }
  uint32_t PreferredBlockSize() const override { return target_->PreferredBlockSize(); }
  std::string Describe() const override { return "gate:" + target_->Describe(); }

  void Arm() {
    std::lock_guard<std::mutex> lock(mu_);
    armed_ = true;
  }
  void WaitHeld() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return held_; });
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = false;
    cv_.notify_all();
  }

 private:
  BlockDevice* const target_;
  std::mutex mu_;  // guards the flags
  std::condition_variable cv_;
  bool armed_ = false;
  bool held_ = false;
};

}  // namespace insitu::testing
