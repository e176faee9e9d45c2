// LogWritesDevice: a recording BlockDevice for the crash harness, in the
// spirit of the kernel's dm-log-writes target.
//
// It forwards every call to a device it does not own and appends each
// mutation that the target acknowledged to an in-memory log: Write (offset,
// bytes, FUA), Flush, FlushRange, Discard and WriteZeroes (offset, length,
// FUA).  The
// workload driver adds marks ("client write #k completed") so that a replay
// can tell which client operations had completed at any point of the log.
// CrashReplayer (crash_replayer.h) turns the log into crash images.
//
// Invariants:
//  - The log order is the order in which mutations reached the target: the
//    record and the forward happen under one mutex, so two concurrent writes
//    appear in the order the target applied them, and replaying the whole
//    log over the target's initial contents reproduces its final contents.
//  - Only acknowledged mutations are recorded.  A call the target failed is
//    not in the log, so the log describes a device that did exactly what it
//    reported; do not stack a fault-injecting device underneath when the
//    log is to be replayed.
//  - Reads are forwarded without the mutex and never recorded.
//
// Thread-safety: every method may be called concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "libcore/block_device.h"

namespace insitu::testing {

struct LogEntry {
  enum class Kind : uint8_t { kWrite, kFlush, kFlushRange, kDiscard, kWriteZeroes, kMark };
  Kind kind = Kind::kWrite;
  uint64_t offset = 0;        // kWrite, kFlushRange, kDiscard, kWriteZeroes
  uint64_t length = 0;        // bytes affected or flushed (data.size() for kWrite)
  bool fua = false;           // kWrite, kWriteZeroes
  std::vector<uint8_t> data;  // kWrite: the bytes written
  uint64_t tag = 0;           // kMark: the driver's number for the event
  std::string label;          // kMark: what happened, for messages

  // Whether replaying the entry changes device contents.  Discard counts:
  // every backing in this project reads a discarded range as zeros.
  bool ChangesData() const {
    return kind == Kind::kWrite || kind == Kind::kDiscard || kind == Kind::kWriteZeroes;
  }
  // "write 4096+8192 fua", "flush", "flush 4096+8192", "mark 7 (client
  // write completed)".
  std::string Describe() const;
};

class LogWritesDevice : public BlockDevice {
 public:
  explicit LogWritesDevice(BlockDevice* target) : target_(target) {}

  uint64_t Size() const override { return target_->Size(); }
  Status Read(uint64_t offset, void* buf, size_t len) override;
  Status Write(uint64_t offset, const void* buf, size_t len, bool fua) override;
  Status Flush() override;
  Status FlushRange(uint64_t offset, uint64_t len) override;
  Status Discard(uint64_t offset, uint64_t len) override;
  Status WriteZeroes(uint64_t offset, uint64_t len, bool fua) override;
  Status GetAllocation(uint64_t offset, uint64_t len, std::vector<AllocationRun>* runs) override;
  uint32_t PreferredBlockSize() const override { return target_->PreferredBlockSize(); }
  std::string Describe() const override { return "log-writes:" + target_->Describe(); }

  // Appends a mark and returns its index in the log.  Marks are ordered
  // with the mutations, so a mark added after a client operation returned
  // follows every backing write that operation made.
  size_t Mark(uint64_t tag, std::string label);

  // A copy of the log so far.
  std::vector<LogEntry> Entries() const;

 private:
  // Runs forward() under the lock and, if it succeeded, appends e.
  Status Forward(LogEntry e, const std::function<Status()>& forward);

  BlockDevice* const target_;
  mutable std::mutex mu_;  // serializes record+forward of mutations; guards log_
  std::vector<LogEntry> log_;
};

// Applies one data-changing entry to an image of the device (zeros for
// Discard and WriteZeroes); marks and flushes leave it unchanged.
void ApplyEntry(const LogEntry& e, std::vector<uint8_t>* image);

}  // namespace insitu::testing
