// MappedRegion: a read-only shared mapping of a file or block device, and
// GuardMappedAccess, which turns a fault on a mapping into a Status.
//
// Reads through a mapping skip the system call, the page-cache lookup and
// the copy into a buffer that pread or io_uring make: a compressed 4 KiB
// read checks and decodes the payload straight from the page cache.  The
// price is how a mapping reports errors: a page the kernel cannot read
// (an I/O error, or a file truncated behind the device's back) raises
// SIGBUS at the access.  Every access to a mapping therefore runs inside
// GuardMappedAccess, whose SIGBUS handler jumps back to it, so the caller
// gets kIOError instead of a dead daemon.
//
// The jump leaves the accessing code in the middle, so what runs inside the
// guard must not hold anything that has to be undone: no lock, no
// allocation, no object with a destructor created after the guard began
// and alive at the access.  Checksums and the decoders qualify (their only
// state is per thread and reset by every call).
//
// Thread-safety: MappedRegion is immutable after Map(); GuardMappedAccess
// may run on any number of threads at once (the guard is per thread).
#pragma once

#include <setjmp.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "libcore/status.h"

namespace insitu {

class MappedRegion {
 public:
  MappedRegion() = default;
  ~MappedRegion();
  MappedRegion(const MappedRegion&) = delete;
  MappedRegion& operator=(const MappedRegion&) = delete;

  // Maps [0, size) of fd read-only and shared; `what` names it in errors.
  // Installs the process's SIGBUS handler on first use.
  static Status Map(int fd, uint64_t size, const std::string& what, MappedRegion* out);

  // [offset, offset+len) of the mapping, or nullptr when it is not mapped
  // or the range is not inside it.
  const uint8_t* View(uint64_t offset, size_t len) const {
    if (base_ == nullptr || offset > size_ || len > size_ - offset) return nullptr;
    return base_ + offset;
  }

 private:
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
};

namespace mapped_internal {
// The innermost active guard of this thread, or nullptr.
sigjmp_buf*& ThreadGuard();
Status FaultStatus();
}  // namespace mapped_internal

// Runs fn() (returning Status) and returns its result, or kIOError when an
// access to a mapping faulted inside it.  Not reentrant: fn must not start
// another guard.
template <typename Fn>
Status GuardMappedAccess(Fn&& fn) {
  sigjmp_buf jump;
  // The mask is not saved: the handler runs with SIGBUS unblocked
  // (SA_NODEFER), so the jump leaves the thread's mask as it was.
  if (sigsetjmp(jump, 0) != 0) {
    mapped_internal::ThreadGuard() = nullptr;
    return mapped_internal::FaultStatus();
  }
  mapped_internal::ThreadGuard() = &jump;
  Status st = fn();
  mapped_internal::ThreadGuard() = nullptr;
  return st;
}

}  // namespace insitu
