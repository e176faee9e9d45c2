#include "libcore/file_device.h"

#include <fcntl.h>
#include <liburing.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "libcore/aligned_buffer.h"
#include "libcore/mapped_region.h"

namespace insitu {
namespace {

constexpr unsigned kRingEntries = 64;
// Unaligned requests are bounced through this much memory at a time; it is
// also the unit of zero-filling fallbacks.
constexpr size_t kBounceSize = 1 << 20;
// One sqe carries at most an `unsigned` length; stay well below and aligned.
constexpr size_t kMaxTransfer = 1 << 30;
// Volumes write 512-byte payload sectors; with a coarser direct-I/O
// alignment each of those would become a read-modify-write here, which the
// page cache does better.
constexpr uint32_t kMaxDirectOffsetAlign = 512;
constexpr uint32_t kMaxDirectMemAlign = AlignedBuffer::kAlignment;
constexpr size_t kSectorLockStripes = 64;

uint64_t AlignDown(uint64_t v, uint64_t a) { return v / a * a; }
uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

class UniqueFd {
 public:
  UniqueFd() = default;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(-1); }
  void reset(int fd) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }
  int get() const { return fd_; }

 private:
  int fd_ = -1;
};

// This thread's io_uring.  Requests are submitted and reaped synchronously,
// so the ring never holds more than one request between calls and needs no
// lock.  It serves every FileDevice the thread touches.
class Ring {
 public:
  Ring() { Init(); }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  ~Ring() { Exit(); }

  Status Check() const {
    if (init_err_ == 0) return Status::OK();
    return Status::FromErrno(init_err_,
                             "setting up io_uring (is it disabled by "
                             "/proc/sys/kernel/io_uring_disabled or a seccomp profile?)");
  }

  // A fresh sqe, or nullptr if the ring is unusable (Check() says why).
  io_uring_sqe* NewSqe() { return init_err_ == 0 ? io_uring_get_sqe(&ring_) : nullptr; }

  // Submits the prepared sqe and waits for its completion.  Returns the
  // cqe's result (bytes transferred or -errno).
  int Run() {
    int rc;
    do {
      rc = io_uring_submit_and_wait(&ring_, 1);
    } while (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY);
    io_uring_cqe* cqe = nullptr;
    if (rc >= 0) {
      do {
        rc = io_uring_wait_cqe(&ring_, &cqe);
      } while (rc == -EINTR);
    }
    if (rc < 0) {
      // Only a broken ring fails here (EINTR, EAGAIN and EBUSY were
      // retried).  Rebuild it so that no half-submitted sqe is picked up by
      // this thread's next request.
      Exit();
      Init();
      return rc;
    }
    const int res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    return res;
  }

 private:
  void Init() { init_err_ = -io_uring_queue_init(kRingEntries, &ring_, 0); }
  void Exit() {
    if (init_err_ == 0) io_uring_queue_exit(&ring_);
    init_err_ = EBADF;
  }

  io_uring ring_{};
  int init_err_ = 0;
};

Ring& ThreadRing() {
  thread_local Ring ring;
  return ring;
}

AlignedBuffer& ThreadBounce() {
  thread_local AlignedBuffer bounce(kBounceSize);
  return bounce;
}

const AlignedBuffer& Zeros() {
  static const AlignedBuffer zeros(kBounceSize);
  return zeros;
}

std::string Where(uint64_t len, uint64_t offset, const std::string& path) {
  return std::to_string(len) + " bytes at offset " + std::to_string(offset) + " of " + path;
}

int Fallocate(int fd, int mode, uint64_t offset, uint64_t len) {
  int rc;
  do {
    rc = fallocate(fd, mode, static_cast<off_t>(offset), static_cast<off_t>(len));
  } while (rc != 0 && errno == EINTR);
  return rc == 0 ? 0 : errno;
}

// Sets *align and *mem_align to a regular file's direct-I/O alignment, or
// *align to 0 when the file should stay buffered.
void ProbeFileDirectIo(int fd, uint64_t size, uint32_t* align, uint32_t* mem_align) {
  struct statx stx {};
  *align = 0;
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) != 0) return;
  if (!(stx.stx_mask & STATX_DIOALIGN)) return;
  const uint32_t off_align = stx.stx_dio_offset_align;
  const uint32_t m_align = stx.stx_dio_mem_align;
  if (off_align == 0 || off_align > kMaxDirectOffsetAlign || m_align == 0 ||
      m_align > kMaxDirectMemAlign) {
    return;
  }
  // The tail of a file whose size is not a multiple of the alignment could
  // only be written by extending the file.
  if (size % off_align != 0) return;
  *align = off_align;
  *mem_align = m_align;
}

// Takes the advisory lock that keeps two programs from changing one volume
// at once: a writer holds it exclusively, readers share it.  flock(), not
// fcntl() locks: it belongs to this open file description, so it is gone
// when the last reference to that goes (kill -9 leaves nothing stale), and
// a second open in the same process conflicts like any other.  The last
// reference is not always the process's: io_uring requests in flight when
// a process is killed (a flush, say) keep the file until they complete, so
// a lock may outlive its holder briefly; wait_ms covers that.
Status Claim(int fd, bool read_only, const std::string& path, int wait_ms) {
  constexpr int kPollMs = 10;
  int err = 0;
  for (int waited = 0;; waited += kPollMs) {
    int rc;
    do {
      rc = flock(fd, (read_only ? LOCK_SH : LOCK_EX) | LOCK_NB);
    } while (rc != 0 && errno == EINTR);
    if (rc == 0) return Status::OK();
    err = errno;
    if (err != EWOULDBLOCK || waited >= wait_ms) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(kPollMs));
  }
  if (err == EWOULDBLOCK) {
    return Status::Busy(path + " is in use: another program holds it " +
                        (read_only ? "for writing" : "open") +
                        " (insitud serving it, or fsck.insitu or insitu working on it)");
  }
  // File systems without flock support (some network ones) cannot lock;
  // refusing to open there would help nobody.
  if (err == ENOLCK || err == EOPNOTSUPP) return Status::OK();
  return Status::FromErrno(err, "locking " + path);
}

}  // namespace

struct FileDevice::Impl {
  std::string path;
  UniqueFd fd;
  bool block_device = false;
  bool read_only = false;
  bool direct = false;
  uint64_t size = 0;
  uint32_t sector_size = 512;  // block devices: logical sector size
  // I/O on fd must have offset and length multiples of `align` and buffers
  // aligned to `mem_align` (both 1 when buffered).
  uint32_t align = 1;
  uint32_t mem_align = 1;
  // Serializes read-modify-write of a partial sector by sector number, so
  // that two sub-sector writes to disjoint bytes of one sector cannot undo
  // each other.
  std::array<std::mutex, kSectorLockStripes> sector_locks;
  MappedRegion map;  // buffered devices only

  bool Aligned(uint64_t offset, uint64_t len, const void* buf) const {
    return offset % align == 0 && len % align == 0 &&
           reinterpret_cast<uintptr_t>(buf) % mem_align == 0;
  }

  Status ReadOnlyError(uint64_t len, uint64_t offset) const {
    return Status::IOError(
        "writing " + Where(len, offset, path) + ": the device was opened read-only", EROFS);
  }

  // Transfers exactly [offset, offset+len), which must satisfy Aligned(),
  // resubmitting the remainder after a short transfer.
  Status Transfer(bool write, uint8_t* buf, size_t len, uint64_t offset, bool fua) {
    if (write && !direct) return WriteBuffered(buf, len, offset, fua);
    Ring& ring = ThreadRing();
    size_t done = 0;
    while (done < len) {
      io_uring_sqe* sqe = ring.NewSqe();
      if (sqe == nullptr) {
        INSITU_RETURN_IF_ERROR(ring.Check());
        return Status::IOError("io_uring submission queue is unexpectedly full");
      }
      const auto chunk = static_cast<unsigned>(std::min(len - done, kMaxTransfer));
      if (write) {
        io_uring_prep_write(sqe, fd.get(), buf + done, chunk, offset + done);
        if (fua) sqe->rw_flags = RWF_DSYNC;
      } else {
        io_uring_prep_read(sqe, fd.get(), buf + done, chunk, offset + done);
      }
      const int res = ring.Run();
      if (res == -EINTR || res == -EAGAIN) continue;
      // Built only on failure: this runs for every transfer.
      auto what = [&] { return (write ? "writing " : "reading ") + Where(len, offset, path); };
      if (res < 0) return Status::FromErrno(-res, what());
      if (res == 0) {
        return Status::IOError(what() + ": the " + (block_device ? "device" : "file") +
                               " ended early at offset " + std::to_string(offset + done) +
                               (block_device ? "" : " (was it truncated?)"));
      }
      done += static_cast<size_t>(res);
    }
    return Status::OK();
  }

  // A buffered write is a copy into the page cache that io_uring cannot
  // complete without blocking on this kernel's file systems, so it hands
  // every one to an io-wq worker thread: two context switches per write.
  // pwritev2 does the same copy on the calling thread (measured: 4 KiB
  // writes through NBD +24 %).  Reads and direct I/O stay on io_uring.
  Status WriteBuffered(const uint8_t* buf, size_t len, uint64_t offset, bool fua) {
    size_t done = 0;
    while (done < len) {
      iovec iov{const_cast<uint8_t*>(buf) + done, len - done};
      const ssize_t n =
          pwritev2(fd.get(), &iov, 1, static_cast<off_t>(offset + done), fua ? RWF_DSYNC : 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Status::FromErrno(errno, "writing " + Where(len, offset, path));
      if (n == 0) {
        return Status::IOError("writing " + Where(len, offset, path) + ": no progress at offset " +
                               std::to_string(offset + done));
      }
      done += static_cast<size_t>(n);
    }
    return Status::OK();
  }

  Status ReadAny(uint64_t offset, uint8_t* buf, size_t len) {
    if (Aligned(offset, len, buf)) return Transfer(false, buf, len, offset, false);
    // Read the enclosing aligned range through the bounce buffer.  It never
    // passes the end: Open() only enables direct I/O on an aligned size.
    AlignedBuffer& bounce = ThreadBounce();
    const uint64_t end = offset + len;
    uint64_t pos = offset;
    while (pos < end) {
      const uint64_t start = AlignDown(pos, align);
      const uint64_t stop = std::min<uint64_t>(AlignUp(end, align), start + kBounceSize);
      INSITU_RETURN_IF_ERROR(Transfer(false, bounce.data(), stop - start, start, false));
      const uint64_t n = std::min(stop, end) - pos;
      std::memcpy(buf + (pos - offset), bounce.data() + (pos - start), n);
      pos += n;
    }
    return Status::OK();
  }

  // Writes data[0, n) at offset, all inside the one sector at sector_start.
  Status PatchSector(uint64_t sector_start, uint64_t offset, const uint8_t* data, size_t n,
                     bool fua) {
    uint8_t* sector = ThreadBounce().data();
    std::lock_guard lock(sector_locks[(sector_start / align) % kSectorLockStripes]);
    INSITU_RETURN_IF_ERROR(Transfer(false, sector, align, sector_start, false));
    std::memcpy(sector + (offset - sector_start), data, n);
    return Transfer(true, sector, align, sector_start, fua);
  }

  Status WriteAny(uint64_t offset, const uint8_t* buf, size_t len, bool fua) {
    // Transfer() takes a mutable buffer only so reads and writes share it;
    // a write never stores into it.
    if (Aligned(offset, len, buf)) {
      return Transfer(true, const_cast<uint8_t*>(buf), len, offset, fua);
    }
    const uint64_t end = offset + len;
    const uint64_t mid_start = AlignUp(offset, align);
    const uint64_t mid_end = AlignDown(end, align);
    if (mid_start > mid_end) return PatchSector(mid_end, offset, buf, len, fua);
    if (offset < mid_start) {
      INSITU_RETURN_IF_ERROR(PatchSector(mid_start - align, offset, buf, mid_start - offset, fua));
    }
    const uint8_t* mid = buf + (mid_start - offset);
    if (mid_end > mid_start) {
      if (reinterpret_cast<uintptr_t>(mid) % mem_align == 0) {
        INSITU_RETURN_IF_ERROR(
            Transfer(true, const_cast<uint8_t*>(mid), mid_end - mid_start, mid_start, fua));
      } else {
        AlignedBuffer& bounce = ThreadBounce();
        for (uint64_t pos = mid_start; pos < mid_end;) {
          const uint64_t n = std::min<uint64_t>(mid_end - pos, kBounceSize);
          std::memcpy(bounce.data(), mid + (pos - mid_start), n);
          INSITU_RETURN_IF_ERROR(Transfer(true, bounce.data(), n, pos, fua));
          pos += n;
        }
      }
    }
    if (mid_end < end) {
      INSITU_RETURN_IF_ERROR(
          PatchSector(mid_end, mid_end, buf + (mid_end - offset), end - mid_end, fua));
    }
    return Status::OK();
  }

  Status WriteZeroBuffers(uint64_t offset, uint64_t len) {
    for (uint64_t pos = offset; pos < offset + len;) {
      const uint64_t n = std::min<uint64_t>(offset + len - pos, kBounceSize);
      INSITU_RETURN_IF_ERROR(WriteAny(pos, Zeros().data(), n, false));
      pos += n;
    }
    return Status::OK();
  }

  // fdatasync of [offset, offset+len), or of the whole file when len is 0:
  // the kernel writes back only the range's dirty pages, then flushes the
  // device's cache (vfs_fsync_range).
  Status Sync(uint64_t offset = 0, uint64_t len = 0) {
    // The SQE's length is 32 bits; a longer range syncs to the end.
    if (len > UINT32_MAX) len = 0;
    Ring& ring = ThreadRing();
    for (;;) {
      io_uring_sqe* sqe = ring.NewSqe();
      if (sqe == nullptr) {
        INSITU_RETURN_IF_ERROR(ring.Check());
        return Status::IOError("io_uring submission queue is unexpectedly full");
      }
      io_uring_prep_fsync(sqe, fd.get(), IORING_FSYNC_DATASYNC);
      sqe->off = offset;
      sqe->len = static_cast<uint32_t>(len);
      const int res = ring.Run();
      if (res == -EINTR || res == -EAGAIN) continue;
      if (res < 0) return Status::FromErrno(-res, "flushing " + path);
      return Status::OK();
    }
  }

  // Runs a BLKDISCARD or BLKZEROOUT ioctl over [offset, offset+len).
  int BlockRangeIoctl(unsigned long request, uint64_t offset, uint64_t len) {
    uint64_t range[2] = {offset, len};
    int rc;
    do {
      rc = ioctl(fd.get(), request, range);
    } while (rc != 0 && errno == EINTR);
    return rc == 0 ? 0 : errno;
  }

  Status DiscardBlock(uint64_t offset, uint64_t len) {
    // The kernel only discards whole sectors; discard is advisory, so the
    // partial edges are simply left alone.
    const uint64_t start = AlignUp(offset, sector_size);
    const uint64_t stop = AlignDown(offset + len, sector_size);
    if (start >= stop) return Status::OK();
    const int err = BlockRangeIoctl(BLKDISCARD, start, stop - start);
    if (err == 0 || err == EOPNOTSUPP) return Status::OK();
    return Status::FromErrno(err, "discarding " + Where(stop - start, start, path));
  }

  Status ZeroBlock(uint64_t offset, uint64_t len) {
    const uint64_t end = offset + len;
    const uint64_t start = std::min(AlignUp(offset, sector_size), end);
    const uint64_t stop = std::max(AlignDown(end, sector_size), start);
    INSITU_RETURN_IF_ERROR(WriteZeroBuffers(offset, start - offset));
    if (stop > start) {
      const int err = BlockRangeIoctl(BLKZEROOUT, start, stop - start);
      if (err == EOPNOTSUPP) {
        INSITU_RETURN_IF_ERROR(WriteZeroBuffers(start, stop - start));
      } else if (err != 0) {
        return Status::FromErrno(err, "zeroing " + Where(stop - start, start, path));
      }
    }
    return WriteZeroBuffers(stop, end - stop);
  }

  // Discard and WriteZeroes of a regular file: a hole reads back as zeros
  // and gives the space back, so both punch one; zeros are written only
  // where the file system has no holes.  (FALLOC_FL_ZERO_RANGE would keep
  // the range allocated: a newly formatted volume then held its whole
  // journal and metadata area, 4 MiB of a 384 MiB volume.)
  Status PunchFile(uint64_t offset, uint64_t len) {
    const int err = Fallocate(fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
    if (err == EOPNOTSUPP) return WriteZeroBuffers(offset, len);
    if (err != 0) return Status::FromErrno(err, "punching a hole of " + Where(len, offset, path));
    return Status::OK();
  }
};

FileDevice::FileDevice(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FileDevice::~FileDevice() = default;

Status FileDevice::Open(const std::string& path, const FileDeviceOptions& opts,
                        std::unique_ptr<FileDevice>* out) {
  if (opts.read_only && (opts.create || opts.size != 0)) {
    return Status::InvalidArgument("cannot create or resize " + path +
                                   " when opening it read-only");
  }
  // Fail here, with the reason, rather than on the first I/O.
  INSITU_RETURN_IF_ERROR(ThreadRing().Check().Annotate("opening " + path));

  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->read_only = opts.read_only;

  int flags = (opts.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  struct stat st {};
  if (stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) {
    // A block device opened for writing is claimed exclusively, so that a
    // mounted file system or a second daemon cannot share it.  (O_CREAT
    // must stay off: with O_EXCL it would mean "fail if it exists".)
    if (!opts.read_only) flags |= O_EXCL;
  } else if (opts.create) {
    flags |= O_CREAT;
  }
  const int raw_fd = open(path.c_str(), flags, 0600);
  if (raw_fd < 0) {
    const int err = errno;
    std::string what = "opening " + path;
    if (err == EBUSY) what += " (is it mounted or in use by another program?)";
    return Status::FromErrno(err, what);
  }
  impl->fd.reset(raw_fd);
  INSITU_RETURN_IF_ERROR(Claim(raw_fd, opts.read_only, path, opts.lock_wait_ms));

  if (fstat(raw_fd, &st) != 0) return Status::FromErrno(errno, "examining " + path);
  if (S_ISBLK(st.st_mode)) {
    impl->block_device = true;
    uint64_t bytes = 0;
    int sector = 0;
    if (ioctl(raw_fd, BLKGETSIZE64, &bytes) != 0) {
      return Status::FromErrno(errno, "reading the size of " + path);
    }
    if (ioctl(raw_fd, BLKSSZGET, &sector) != 0 || sector <= 0) {
      return Status::FromErrno(errno, "reading the sector size of " + path);
    }
    impl->size = bytes;
    impl->sector_size = static_cast<uint32_t>(sector);
  } else if (S_ISREG(st.st_mode)) {
    impl->size = static_cast<uint64_t>(st.st_size);
    if (opts.size != 0 && opts.size != impl->size) {
      if (ftruncate(raw_fd, static_cast<off_t>(opts.size)) != 0) {
        return Status::FromErrno(
            errno, "resizing " + path + " to " + std::to_string(opts.size) + " bytes");
      }
      impl->size = opts.size;
    }
  } else {
    return Status::InvalidArgument(path + " is neither a regular file nor a block device");
  }

  if (opts.allow_direct) {
    uint32_t align = 0;
    uint32_t mem_align = 0;
    if (impl->block_device) {
      align = mem_align = impl->sector_size;
    } else {
      ProbeFileDirectIo(raw_fd, impl->size, &align, &mem_align);
    }
    // F_SETFL refuses O_DIRECT (EINVAL) where the file system cannot do it;
    // staying buffered is then the right answer, not an error.
    const int fl = fcntl(raw_fd, F_GETFL);
    if (align != 0 && fl >= 0 && fcntl(raw_fd, F_SETFL, fl | O_DIRECT) == 0) {
      impl->direct = true;
      impl->align = align;
      impl->mem_align = mem_align;
    }
  }
  // Without a mapping, View() shows nothing and reads copy, as with
  // direct I/O: slower, never wrong, so a failed mmap is not an error.
  if (!impl->direct) (void)MappedRegion::Map(raw_fd, impl->size, path, &impl->map);
  out->reset(new FileDevice(std::move(impl)));
  return Status::OK();
}

uint64_t FileDevice::Size() const { return impl_->size; }

const uint8_t* FileDevice::View(uint64_t offset, size_t len) {
  return impl_->map.View(offset, len);
}

Status FileDevice::Read(uint64_t offset, void* buf, size_t len) {
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  if (len == 0) return Status::OK();
  return impl_->ReadAny(offset, static_cast<uint8_t*>(buf), len);
}

Status FileDevice::Write(uint64_t offset, const void* buf, size_t len, bool fua) {
  if (impl_->read_only) return impl_->ReadOnlyError(len, offset);
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  if (len == 0) return fua ? Flush() : Status::OK();
  return impl_->WriteAny(offset, static_cast<const uint8_t*>(buf), len, fua);
}

Status FileDevice::Flush() { return impl_->Sync(); }

Status FileDevice::FlushRange(uint64_t offset, uint64_t len) {
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  if (len == 0) return Status::OK();
  return impl_->Sync(offset, len);
}

Status FileDevice::Discard(uint64_t offset, uint64_t len) {
  if (impl_->read_only) return impl_->ReadOnlyError(len, offset);
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  if (len == 0) return Status::OK();
  if (impl_->block_device) return impl_->DiscardBlock(offset, len);
  return impl_->PunchFile(offset, len);
}

Status FileDevice::WriteZeroes(uint64_t offset, uint64_t len, bool fua) {
  if (impl_->read_only) return impl_->ReadOnlyError(len, offset);
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  if (len != 0) {
    INSITU_RETURN_IF_ERROR(impl_->block_device ? impl_->ZeroBlock(offset, len)
                                               : impl_->PunchFile(offset, len));
  }
  // fallocate and ioctls take no per-request FUA; a flush gives the same
  // guarantee.
  return fua ? impl_->Sync() : Status::OK();
}

Status FileDevice::GetAllocation(uint64_t offset, uint64_t len, std::vector<AllocationRun>* runs) {
  if (impl_->block_device) return BlockDevice::GetAllocation(offset, len, runs);
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  runs->clear();
  auto add = [runs](uint64_t n, bool hole) {
    if (!runs->empty() && runs->back().hole == hole) {
      runs->back().length += n;
    } else {
      runs->push_back(AllocationRun{n, hole, hole});
    }
  };
  const int fd = impl_->fd.get();
  const uint64_t end = offset + len;
  uint64_t pos = offset;
  while (pos < end) {
    const off_t data = lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      // ENXIO: no data at or after pos; the rest is one hole.
      if (errno == ENXIO) {
        add(end - pos, true);
        break;
      }
      return Status::FromErrno(errno, "mapping " + Where(len, offset, impl_->path));
    }
    if (static_cast<uint64_t>(data) > pos) {
      const uint64_t hole_end = std::min<uint64_t>(static_cast<uint64_t>(data), end);
      add(hole_end - pos, true);
      pos = hole_end;
      continue;
    }
    const off_t hole = lseek(fd, static_cast<off_t>(pos), SEEK_HOLE);
    if (hole < 0) return Status::FromErrno(errno, "mapping " + Where(len, offset, impl_->path));
    // A hole exactly at pos can only appear if the range was punched
    // between the two lseeks; the next round sees it as a hole.
    const uint64_t data_end = std::min<uint64_t>(static_cast<uint64_t>(hole), end);
    if (data_end > pos) {
      add(data_end - pos, false);
      pos = data_end;
    }
  }
  return Status::OK();
}

std::string FileDevice::Describe() const {
  return (impl_->block_device ? "blockdev:" : "file:") + impl_->path;
}

bool FileDevice::is_block_device() const { return impl_->block_device; }

bool FileDevice::uses_direct_io() const { return impl_->direct; }

uint64_t FileDevice::AllocatedBytes() const {
  struct stat st {};
  if (fstat(impl_->fd.get(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

}  // namespace insitu
