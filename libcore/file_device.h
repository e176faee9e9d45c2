// FileDevice: a BlockDevice over a regular file or a block device node,
// doing its I/O through io_uring.
//
// O_DIRECT is used when the target supports it (a block device, or a file
// system reporting direct-I/O alignment no larger than 512 bytes through
// statx STATX_DIOALIGN, on a file whose size is a multiple of it); otherwise
// the file is opened buffered and Flush() relies on fdatasync.  Unaligned
// requests are bounced through aligned buffers, so callers may pass any
// offset, length and buffer; a write that covers part of a sector
// read-modify-writes that sector under a per-sector lock, so concurrent
// writes to disjoint bytes of one sector are safe.  An unaligned write that
// overlaps a concurrent aligned write of the same sector may leave a mix of
// the two (the BlockDevice contract leaves overlapping writes unordered).
//
// A buffered device is also mapped read-only (MappedRegion), and View()
// shows the mapping, so a reader can use page-cache bytes without a copy.
//
// FUA writes carry RWF_DSYNC; Flush() is an fdatasync (IORING_OP_FSYNC with
// IORING_FSYNC_DATASYNC), and FlushRange() the same limited to the range
// (the SQE's offset and length), which writes back only that range's dirty
// pages before the device flush.  Buffered (page cache) writes use pwritev2 on the
// calling thread: io_uring would hand each to a kernel worker thread.
//
// Discard(): a file gets FALLOC_FL_PUNCH_HOLE (the space really returns to
// the file system, and the range reads back zeros; where holes are not
// supported zeros are written instead).  A block device gets BLKDISCARD of
// the whole sectors inside the range, ignored where the device does not
// support it: the range then need not read back as zeros, so layers above
// must not rely on that for block devices.  WriteZeroes(): a file gets a
// hole punched, like Discard() (it deallocates, as BlockDevice allows); a
// block device gets BLKZEROOUT; both fall back to writing zeros, and with
// fua are followed by a flush.
//
// A writable open of a block device claims it with O_EXCL (fails with kBusy
// if it is mounted or otherwise claimed).  Every open also takes an advisory
// flock() on the file or device node, held until the device is destroyed:
// exclusive for a writable open, shared for a read-only one, so one writer
// or any number of readers; a conflicting open fails with kBusy, at once or
// after lock_wait_ms.  (Where the file system cannot lock, the open goes on
// unlocked.)  Files are created mode 0600.  A
// read-only device rejects Write/Discard/WriteZeroes with kIOError (EROFS).
// ENOSPC from the file system surfaces as kNoSpace.  Size() is fixed at
// Open().
//
// Each calling thread gets its own io_uring ring (created on first use and
// destroyed when the thread exits), so no lock is taken on the I/O path.
// Open() fails with a clear error if io_uring is unavailable.
//
// Thread-safety: all methods may be called concurrently (BlockDevice).
#pragma once

#include <memory>
#include <string>

#include "libcore/block_device.h"

namespace insitu {

struct FileDeviceOptions {
  bool read_only = false;
  bool allow_direct = true;  // try O_DIRECT
  bool create = false;       // create the file if missing (with `size`)
  uint64_t size = 0;         // when nonzero on a regular file: truncate/extend to this
  // How long to wait for the lock another open holds before failing with
  // kBusy (0: fail at once).
  int lock_wait_ms = 0;
};

class FileDevice : public BlockDevice {
 public:
  static Status Open(const std::string& path, const FileDeviceOptions& opts,
                     std::unique_ptr<FileDevice>* out);
  ~FileDevice() override;

  uint64_t Size() const override;
  Status Read(uint64_t offset, void* buf, size_t len) override;
  Status Write(uint64_t offset, const void* buf, size_t len, bool fua) override;
  Status Flush() override;
  Status FlushRange(uint64_t offset, uint64_t len) override;
  Status Discard(uint64_t offset, uint64_t len) override;
  Status WriteZeroes(uint64_t offset, uint64_t len, bool fua) override;
  // A buffered (page cache) device is mapped read-only at Open(), and
  // View() shows the mapping; a direct-I/O device, or one whose mapping
  // failed, shows none.
  const uint8_t* View(uint64_t offset, size_t len) override;
  // Regular files: reports holes from SEEK_HOLE/SEEK_DATA.
  Status GetAllocation(uint64_t offset, uint64_t len, std::vector<AllocationRun>* runs) override;
  std::string Describe() const override;

  bool is_block_device() const;
  bool uses_direct_io() const;
  // Bytes the file system has allocated for a regular file (st_blocks*512).
  uint64_t AllocatedBytes() const;

 private:
  struct Impl;
  explicit FileDevice(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace insitu
