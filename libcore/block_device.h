// BlockDevice: the one seam every layer implements and stacks on.
//
// A backing file or block device, an in-memory disk for tests, an insitu
// compressed volume, and (later) cache and ramback volumes all present this
// interface, so any of them can sit on top of any other, the way
// device-mapper targets stack.  The NBD server serves any BlockDevice.
//
// Semantics (the contract every implementation keeps):
//  - Byte addressed: any offset and length inside [0, Size()) is valid; an
//    implementation with an alignment requirement hides it (bounce buffers,
//    read-modify-write).  Ranges past the end get kOutOfRange.
//  - Write() returns when the data is visible to later reads.  It is durable
//    (survives a crash or power loss) only after a later Flush() returns, or
//    at once if `fua` was set.
//  - Flush() makes every write that completed before it was called durable.
//  - FlushRange(offset, len) makes durable at least every such write that
//    lies inside [offset, offset+len); it may make more durable (the
//    default is Flush()).  Callers use it when only some bytes must be
//    durable before their next write: the others stay in the cache.
//  - Discard() says the range is no longer needed; later reads of it return
//    zeros on every implementation in this project (a file gets a punched
//    hole, a volume marks the blocks unwritten).  A raw block device may only
//    guarantee that if the hardware does; see FileDevice.
//  - WriteZeroes() makes the range read back as zeros; it may deallocate.
//
// Thread-safety: every method may be called concurrently from any number of
// threads.  Concurrent overlapping writes land in an unspecified order; a
// caller that needs an order waits for the first to complete.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "libcore/status.h"

namespace insitu {

// One run of an allocation map, as reported to NBD block-status queries.
struct AllocationRun {
  uint64_t length = 0;
  bool hole = false;  // no storage is allocated for this run
  bool zero = false;  // this run reads as zeros
};

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;
  BlockDevice() = default;
  BlockDevice(const BlockDevice&) = delete;
  BlockDevice& operator=(const BlockDevice&) = delete;

  virtual uint64_t Size() const = 0;
  virtual Status Read(uint64_t offset, void* buf, size_t len) = 0;
  virtual Status Write(uint64_t offset, const void* buf, size_t len, bool fua) = 0;
  virtual Status Flush() = 0;
  virtual Status FlushRange(uint64_t offset, uint64_t len);
  virtual Status Discard(uint64_t offset, uint64_t len) = 0;
  virtual Status WriteZeroes(uint64_t offset, uint64_t len, bool fua) = 0;

  // Describes allocation of [offset, offset+len) as consecutive runs whose
  // lengths sum to len.  The default says "all data".
  virtual Status GetAllocation(uint64_t offset, uint64_t len, std::vector<AllocationRun>* runs);

  // The device's bytes [offset, offset+len) in memory, when it can show
  // them without a copy (a page-cache mapping, a memory device), else
  // nullptr (the default; also for ranges it cannot show).  The view stays
  // valid while the device lives and shows later writes.  Every access to
  // it must run inside GuardMappedAccess (mapped_region.h): a mapped page
  // that cannot be read faults at the access.
  virtual const uint8_t* View(uint64_t offset, size_t len) {
    (void)offset;
    (void)len;
    return nullptr;
  }

  // I/O granularity hints for clients (NBD block-size constraints).
  virtual uint32_t PreferredBlockSize() const { return 4096; }

  // A short description for logs and status output, e.g. "file:/path".
  virtual std::string Describe() const = 0;

 protected:
  // Validates [offset, offset+len) against Size().
  Status CheckRange(uint64_t offset, uint64_t len) const;
};

}  // namespace insitu
