// FaultDevice: a BlockDevice that forwards to one it does not own and
// injects faults on cue, for tests of how layers above handle a backing
// device that fails, fills up or tears writes.
//
// Faults (all may be armed at once; the first that applies wins, in this
// order):
//  - FailAll: every call fails with the chosen errno until cleared.
//  - FailNth: the n-th call of one kind from now fails with the chosen
//    errno without reaching the target.  One armed fault per kind.
//  - TearNthWrite: the n-th write from now lands only partly (a seeded
//    random proper subset of its 512-byte sectors reaches the target, as a
//    power cut mid-transfer would leave it), then fails with EIO.
//  - SetWriteBudget: a thin backing file filling up.  Writes whose bytes
//    would take the total written since the call past the budget fail
//    with ENOSPC and store nothing; smaller later writes that still fit
//    succeed, as on a file system with a few blocks left.
// "Write" means Write and WriteZeroes (both store data); Discard is its own
// kind and, freeing space, never counts against the budget.  Size(),
// GetAllocation() and Describe() never fail.
//
// Thread-safety: every method may be called concurrently.  The decision
// for a call (which fault, if any) is taken under a mutex, so an armed
// fault hits exactly one call; the forward itself runs unlocked.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

#include "libcore/block_device.h"

namespace insitu::testing {

enum class FaultOp { kRead, kWrite, kFlush, kDiscard };

class FaultDevice : public BlockDevice {
 public:
  explicit FaultDevice(BlockDevice* target) : target_(target) {}

  uint64_t Size() const override { return target_->Size(); }
  Status Read(uint64_t offset, void* buf, size_t len) override;
  Status Write(uint64_t offset, const void* buf, size_t len, bool fua) override;
  Status Flush() override;
  Status FlushRange(uint64_t offset, uint64_t len) override;  // a kFlush call
  Status Discard(uint64_t offset, uint64_t len) override;
  Status WriteZeroes(uint64_t offset, uint64_t len, bool fua) override;
  Status GetAllocation(uint64_t offset, uint64_t len, std::vector<AllocationRun>* runs) override;
  uint32_t PreferredBlockSize() const override { return target_->PreferredBlockSize(); }
  std::string Describe() const override { return "fault:" + target_->Describe(); }

  // n >= 1: the n-th call of `op` from now fails with err (EIO, ENOSPC...).
  void FailNth(FaultOp op, uint64_t n, int err);
  void TearNthWrite(uint64_t n, uint64_t seed);
  void SetWriteBudget(uint64_t bytes);
  // err != 0 fails every call with err; 0 clears.
  void FailAll(int err);
  // Disarms every fault and drops the budget.
  void Heal();

  // Faults injected so far (calls failed or torn).
  uint64_t faults() const;

 private:
  struct Armed {
    uint64_t countdown = 0;  // 0: disarmed
    int err = 0;
  };
  // What to do with one call.
  struct Decision {
    int err = 0;  // fail with this errno (after a partial write when tear)
    bool tear = false;
    uint64_t seed = 0;
  };
  Decision Decide(FaultOp op, uint64_t write_bytes);
  static Status Fail(const Decision& d, FaultOp op, uint64_t offset, uint64_t len);
  // Forwards a random proper subset of the sectors of a write (buf) or a
  // write-zeroes (buf == nullptr).
  void ApplyTorn(uint64_t offset, const void* buf, size_t len, bool fua, uint64_t seed);

  BlockDevice* const target_;
  mutable std::mutex mu_;  // guards everything below
  int fail_all_ = 0;
  Armed armed_[4];
  Armed tear_;
  uint64_t tear_seed_ = 0;
  std::optional<uint64_t> budget_left_;
  uint64_t faults_ = 0;
};

}  // namespace insitu::testing
