#include "libcore/file_device.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>
#include <vector>

#include "libcore/aligned_buffer.h"
#include "libcore/mapped_region.h"
#include "tests/unit/test_util.h"

namespace insitu {
namespace {

using testing::TempDir;
using testing::TempFile;

std::vector<uint8_t> RandomBytes(std::mt19937_64& rng, size_t n) {
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Runs each test with O_DIRECT allowed (true) and with buffered I/O.
class FileDeviceTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { ASSERT_FALSE(file_.path().empty()) << "mkstemp in " << TempDir(); }

  FileDeviceOptions Options(uint64_t size) const {
    FileDeviceOptions opts;
    opts.allow_direct = GetParam();
    opts.create = true;
    opts.size = size;
    return opts;
  }

  std::unique_ptr<FileDevice> OpenDevice(uint64_t size) {
    std::unique_ptr<FileDevice> dev;
    const Status st = FileDevice::Open(file_.path(), Options(size), &dev);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return dev;
  }

  static std::vector<uint8_t> ReadAll(FileDevice* dev) {
    std::vector<uint8_t> all(dev->Size());
    const Status st = dev->Read(0, all.data(), all.size());
    EXPECT_TRUE(st.ok()) << st.ToString();
    return all;
  }

  // Writes `data` at `offset` from a buffer displaced by `shift` bytes from
  // a 4 KiB boundary, so buffer alignment varies independently.
  static Status WriteShifted(FileDevice* dev, uint64_t offset, const std::vector<uint8_t>& data,
                             size_t shift, bool fua) {
    AlignedBuffer buf(data.size() + shift);
    std::memcpy(buf.data() + shift, data.data(), data.size());
    return dev->Write(offset, buf.data() + shift, data.size(), fua);
  }

  static Status ReadShifted(FileDevice* dev, uint64_t offset, size_t len, size_t shift,
                            std::vector<uint8_t>* out) {
    AlignedBuffer buf(len + shift);
    const Status st = dev->Read(offset, buf.data() + shift, len);
    out->assign(buf.data() + shift, buf.data() + shift + len);
    return st;
  }

  TempFile file_{TempDir()};
};

TEST_P(FileDeviceTest, CreatesResizesAndDescribes) {
  {
    auto dev = OpenDevice(1 << 20);
    ASSERT_NE(dev, nullptr);
    EXPECT_EQ(dev->Size(), 1u << 20);
    EXPECT_FALSE(dev->is_block_device());
    EXPECT_EQ(dev->Describe(), "file:" + file_.path());
    EXPECT_LT(dev->AllocatedBytes(), 65536u) << "a new file should be sparse";
    std::cout << "[ info     ] " << TempDir() << ": allow_direct=" << GetParam()
              << " uses_direct_io=" << dev->uses_direct_io() << "\n";
    RecordProperty("uses_direct_io", dev->uses_direct_io() ? "true" : "false");
  }
  auto bigger = OpenDevice(2 << 20);
  ASSERT_NE(bigger, nullptr);
  EXPECT_EQ(bigger->Size(), 2u << 20);
  bigger.reset();
  FileDeviceOptions keep;
  keep.allow_direct = GetParam();
  std::unique_ptr<FileDevice> same;
  ASSERT_TRUE(FileDevice::Open(file_.path(), keep, &same).ok());
  EXPECT_EQ(same->Size(), 2u << 20);
  struct stat st {};
  ASSERT_EQ(stat(file_.path().c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 2 << 20);
}

TEST_P(FileDeviceTest, RandomIoMatchesReferenceAndSurvivesReopen) {
  constexpr uint64_t kSize = 4 << 20;
  auto dev = OpenDevice(kSize);
  ASSERT_NE(dev, nullptr);
  std::vector<uint8_t> ref(kSize, 0);
  std::mt19937_64 rng(1);
  for (int op = 0; op < 400; ++op) {
    uint64_t offset;
    size_t len;
    if (rng() % 2) {  // block aligned offset and length
      len = 4096 * (1 + rng() % 16);
      offset = 4096 * (rng() % ((kSize - len) / 4096 + 1));
    } else {
      len = 1 + rng() % 70000;
      offset = rng() % (kSize - len + 1);
    }
    const size_t shift = (rng() % 3 == 0) ? 0 : rng() % 4096;
    if (rng() % 3 != 0) {
      const std::vector<uint8_t> data = RandomBytes(rng, len);
      const Status st = WriteShifted(dev.get(), offset, data, shift, rng() % 4 == 0);
      ASSERT_TRUE(st.ok()) << st.ToString();
      std::copy(data.begin(), data.end(), ref.begin() + static_cast<ptrdiff_t>(offset));
    } else {
      std::vector<uint8_t> got;
      const Status st = ReadShifted(dev.get(), offset, len, shift, &got);
      ASSERT_TRUE(st.ok()) << st.ToString();
      ASSERT_TRUE(std::equal(got.begin(), got.end(), ref.begin() + static_cast<ptrdiff_t>(offset)))
          << "op " << op << " read " << len << " at " << offset << " shift " << shift;
    }
  }
  ASSERT_TRUE(dev->Flush().ok());
  dev.reset();
  dev = OpenDevice(0);
  ASSERT_NE(dev, nullptr);
  EXPECT_TRUE(ReadAll(dev.get()) == ref);
}

TEST_P(FileDeviceTest, LargeUnalignedTransfersSpanManyBounceBuffers) {
  auto dev = OpenDevice(8 << 20);
  ASSERT_NE(dev, nullptr);
  std::mt19937_64 rng(2);
  const std::vector<uint8_t> data = RandomBytes(rng, (3 << 20) + 123);
  ASSERT_TRUE(WriteShifted(dev.get(), 777, data, 5, false).ok());
  std::vector<uint8_t> got;
  ASSERT_TRUE(ReadShifted(dev.get(), 777, data.size(), 3, &got).ok());
  EXPECT_TRUE(got == data);
  // Aligned offset and length but an unaligned buffer.
  ASSERT_TRUE(WriteShifted(dev.get(), 4 << 20, data, 1, true).ok());
  ASSERT_TRUE(ReadShifted(dev.get(), 4 << 20, data.size(), 0, &got).ok());
  EXPECT_TRUE(got == data);
}

TEST_P(FileDeviceTest, FlushAndFuaWritesSucceed) {
  auto dev = OpenDevice(1 << 20);
  ASSERT_NE(dev, nullptr);
  AlignedBuffer block(4096);
  std::memset(block.data(), 0x5A, 4096);
  ASSERT_TRUE(dev->Write(8192, block.data(), 4096, true).ok());
  ASSERT_TRUE(dev->Write(100, block.data(), 10, true).ok());
  ASSERT_TRUE(dev->Write(0, block.data(), 0, true).ok());
  ASSERT_TRUE(dev->Flush().ok());
  ASSERT_TRUE(dev->Write(65536, block.data(), 4096, false).ok());
  ASSERT_TRUE(dev->FlushRange(65536, 4096).ok());
  ASSERT_TRUE(dev->FlushRange(0, 1 << 20).ok());
  ASSERT_TRUE(dev->FlushRange(1 << 20, 0).ok());
  std::vector<uint8_t> got;
  ASSERT_TRUE(ReadShifted(dev.get(), 8192, 4096, 0, &got).ok());
  EXPECT_EQ(got, std::vector<uint8_t>(4096, 0x5A));
}

// Discard and WriteZeroes both give the space back (a new volume zeroes its
// metadata area and journal with WriteZeroes, and must not hold them
// allocated before they are written).
TEST_P(FileDeviceTest, DiscardAndWriteZeroesPunchRealHoles) {
  constexpr uint64_t kSize = 2 << 20;
  auto dev = OpenDevice(kSize);
  ASSERT_NE(dev, nullptr);
  std::mt19937_64 rng(3);
  const std::vector<uint8_t> data = RandomBytes(rng, kSize);
  ASSERT_TRUE(WriteShifted(dev.get(), 0, data, 0, false).ok());
  ASSERT_TRUE(dev->Flush().ok());
  const uint64_t before = dev->AllocatedBytes();
  ASSERT_GE(before, kSize);

  ASSERT_TRUE(dev->Discard(512 << 10, 1 << 20).ok());
  EXPECT_LE(dev->AllocatedBytes(), before - (1 << 20) + 65536);
  std::vector<uint8_t> expect = data;
  std::fill_n(expect.begin() + (512 << 10), 1 << 20, 0);
  EXPECT_TRUE(ReadAll(dev.get()) == expect);

  std::vector<AllocationRun> runs;
  ASSERT_TRUE(dev->GetAllocation(0, kSize, &runs).ok());
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[0].length, 512u << 10);
  EXPECT_FALSE(runs[0].hole);
  EXPECT_EQ(runs[1].length, 1u << 20);
  EXPECT_TRUE(runs[1].hole);
  EXPECT_TRUE(runs[1].zero);
  EXPECT_EQ(runs[2].length, 512u << 10);
  EXPECT_FALSE(runs[2].hole);

  const uint64_t discarded = dev->AllocatedBytes();
  ASSERT_TRUE(dev->WriteZeroes(0, 256 << 10, true).ok());
  EXPECT_LE(dev->AllocatedBytes(), discarded - (256 << 10) + 65536);
  std::fill_n(expect.begin(), 256 << 10, 0);
  EXPECT_TRUE(ReadAll(dev.get()) == expect);
}

TEST_P(FileDeviceTest, UnalignedDiscardAndWriteZeroesAffectExactlyTheirRange) {
  constexpr uint64_t kSize = 256 << 10;
  auto dev = OpenDevice(kSize);
  ASSERT_NE(dev, nullptr);
  std::vector<uint8_t> ref(kSize, 0x11);
  ASSERT_TRUE(WriteShifted(dev.get(), 0, ref, 0, false).ok());
  struct Op {
    bool discard;
    uint64_t offset, len;
    bool fua;
  };
  const Op ops[] = {{true, 1000, 10000, false},   {false, 4096, 65536, false},
                    {false, 100001, 3333, true},  {true, 200000, 7, false},
                    {false, kSize - 5, 5, false}, {true, 0, 0, false}};
  for (const Op& op : ops) {
    const Status st =
        op.discard ? dev->Discard(op.offset, op.len) : dev->WriteZeroes(op.offset, op.len, op.fua);
    ASSERT_TRUE(st.ok()) << st.ToString();
    std::fill_n(ref.begin() + static_cast<ptrdiff_t>(op.offset), op.len, 0);
    ASSERT_TRUE(ReadAll(dev.get()) == ref)
        << (op.discard ? "discard " : "zeroes ") << op.len << " at " << op.offset;
  }
}

TEST_P(FileDeviceTest, GetAllocationDescribesASparseFile) {
  auto dev = OpenDevice(1 << 20);
  ASSERT_NE(dev, nullptr);
  AlignedBuffer block(4096);
  std::memset(block.data(), 1, 4096);
  ASSERT_TRUE(dev->Write(65536, block.data(), 4096, false).ok());
  ASSERT_TRUE(dev->Flush().ok());

  std::vector<AllocationRun> runs;
  ASSERT_TRUE(dev->GetAllocation(0, 1 << 20, &runs).ok());
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_TRUE(runs[0].hole && runs[0].zero);
  EXPECT_EQ(runs[0].length, 65536u);
  EXPECT_FALSE(runs[1].hole || runs[1].zero);
  EXPECT_EQ(runs[1].length, 4096u);
  EXPECT_TRUE(runs[2].hole);
  EXPECT_EQ(runs[2].length, (1u << 20) - 65536 - 4096);

  ASSERT_TRUE(dev->GetAllocation(61440, 8192, &runs).ok());
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_TRUE(runs[0].hole);
  EXPECT_EQ(runs[0].length, 4096u);
  EXPECT_FALSE(runs[1].hole);
  EXPECT_EQ(runs[1].length, 4096u);

  ASSERT_TRUE(dev->GetAllocation(65536 + 100, 50, &runs).ok());
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_FALSE(runs[0].hole);
  EXPECT_EQ(runs[0].length, 50u);
}

TEST_P(FileDeviceTest, RejectsRangesPastTheEnd) {
  auto dev = OpenDevice(65536);
  ASSERT_NE(dev, nullptr);
  std::vector<uint8_t> buf(8192);
  std::vector<AllocationRun> runs;
  EXPECT_EQ(dev->Read(61440, buf.data(), 8192).code(), Status::Code::kOutOfRange);
  EXPECT_EQ(dev->Write(65536, buf.data(), 1, false).code(), Status::Code::kOutOfRange);
  EXPECT_EQ(dev->Write(UINT64_MAX - 10, buf.data(), 100, false).code(), Status::Code::kOutOfRange);
  EXPECT_EQ(dev->Discard(0, 65537).code(), Status::Code::kOutOfRange);
  EXPECT_EQ(dev->WriteZeroes(65535, 2, false).code(), Status::Code::kOutOfRange);
  EXPECT_EQ(dev->FlushRange(65535, 2).code(), Status::Code::kOutOfRange);
  EXPECT_EQ(dev->GetAllocation(1, 65536, &runs).code(), Status::Code::kOutOfRange);
  EXPECT_TRUE(dev->Read(65536, buf.data(), 0).ok());
}

TEST_P(FileDeviceTest, ReadOnlyRejectsEveryWrite) {
  {
    auto dev = OpenDevice(65536);
    ASSERT_NE(dev, nullptr);
    std::vector<uint8_t> data(100, 7);
    ASSERT_TRUE(dev->Write(10, data.data(), data.size(), true).ok());
  }
  FileDeviceOptions opts;
  opts.read_only = true;
  opts.allow_direct = GetParam();
  std::unique_ptr<FileDevice> dev;
  ASSERT_TRUE(FileDevice::Open(file_.path(), opts, &dev).ok());
  std::vector<uint8_t> got(100);
  ASSERT_TRUE(dev->Read(10, got.data(), got.size()).ok());
  EXPECT_EQ(got, std::vector<uint8_t>(100, 7));
  for (const Status& st : {dev->Write(0, got.data(), 10, false), dev->Discard(0, 4096),
                           dev->WriteZeroes(0, 4096, false)}) {
    EXPECT_FALSE(st.ok());
    EXPECT_EQ(st.err(), EROFS);
    EXPECT_NE(st.message().find("read-only"), std::string::npos) << st.message();
    EXPECT_NE(st.message().find(file_.path()), std::string::npos) << st.message();
  }
  ASSERT_TRUE(dev->Read(10, got.data(), got.size()).ok());
  EXPECT_EQ(got, std::vector<uint8_t>(100, 7));

  opts.create = true;
  EXPECT_EQ(FileDevice::Open(file_.path(), opts, &dev).code(), Status::Code::kInvalidArgument);
}

TEST_P(FileDeviceTest, ConcurrentWritesToDisjointRegions) {
  constexpr int kThreads = 4;
  constexpr uint64_t kRegion = 512 << 10;
  auto dev = OpenDevice(kThreads * kRegion);
  ASSERT_NE(dev, nullptr);
  std::vector<std::vector<uint8_t>> refs(kThreads, std::vector<uint8_t>(kRegion, 0));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(50 + t);
      for (int i = 0; i < 150; ++i) {
        const size_t len = 1 + rng() % 40000;
        const uint64_t off = rng() % (kRegion - len + 1);
        const std::vector<uint8_t> data = RandomBytes(rng, len);
        if (!WriteShifted(dev.get(), t * kRegion + off, data, rng() % 64, i % 10 == 0).ok()) {
          ++failures;
        }
        std::copy(data.begin(), data.end(), refs[t].begin() + static_cast<ptrdiff_t>(off));
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0);
  const std::vector<uint8_t> all = ReadAll(dev.get());
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_TRUE(std::equal(refs[t].begin(), refs[t].end(), all.begin() + t * kRegion)) << t;
  }
}

// Pieces of 100 bytes straddle sector boundaries, so with O_DIRECT threads
// read-modify-write the same sectors for disjoint bytes.
TEST_P(FileDeviceTest, ConcurrentSubSectorWritesDoNotUndoEachOther) {
  constexpr int kThreads = 4;
  constexpr size_t kPiece = 100;
  constexpr size_t kPieces = 160;
  auto dev = OpenDevice(65536);
  ASSERT_NE(dev, nullptr);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(70 + t);
      std::vector<size_t> mine;
      for (size_t p = t; p < kPieces; p += kThreads) mine.push_back(p);
      for (uint8_t pass = 1; pass <= 3; ++pass) {
        std::shuffle(mine.begin(), mine.end(), rng);
        for (size_t p : mine) {
          const std::vector<uint8_t> data(kPiece, static_cast<uint8_t>(pass * 16 + t));
          if (!dev->Write(p * kPiece, data.data(), kPiece, false).ok()) ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0);
  std::vector<uint8_t> got(kPiece * kPieces);
  ASSERT_TRUE(dev->Read(0, got.data(), got.size()).ok());
  for (size_t p = 0; p < kPieces; ++p) {
    const auto want = static_cast<uint8_t>(3 * 16 + p % kThreads);
    for (size_t i = 0; i < kPiece; ++i) {
      ASSERT_EQ(got[p * kPiece + i], want) << "piece " << p << " byte " << i;
    }
  }
}

TEST_P(FileDeviceTest, FileOfUnalignedSizeWorksBuffered) {
  constexpr uint64_t kSize = 100003;
  auto dev = OpenDevice(kSize);
  ASSERT_NE(dev, nullptr);
  EXPECT_FALSE(dev->uses_direct_io()) << "the tail sector could not be written directly";
  std::vector<uint8_t> tail(3000, 9);
  ASSERT_TRUE(dev->Write(kSize - tail.size(), tail.data(), tail.size(), false).ok());
  std::vector<uint8_t> got(tail.size());
  ASSERT_TRUE(dev->Read(kSize - got.size(), got.data(), got.size()).ok());
  EXPECT_EQ(got, tail);
}

TEST_P(FileDeviceTest, FileTruncatedBehindOurBackIsAClearError) {
  auto dev = OpenDevice(1 << 20);
  ASSERT_NE(dev, nullptr);
  ASSERT_EQ(truncate(file_.path().c_str(), 4096), 0);
  std::vector<uint8_t> got(4096);
  const Status st = dev->Read(65536, got.data(), got.size());
  EXPECT_EQ(st.code(), Status::Code::kIOError);
  EXPECT_NE(st.message().find("ended early"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find(file_.path()), std::string::npos) << st.message();
}

// A buffered device shows its page cache through a read-only mapping (the
// volume checks and decodes payloads in place); a direct one shows none.
TEST_P(FileDeviceTest, ViewShowsTheFileAndFollowsWrites) {
  auto dev = OpenDevice(1 << 20);
  ASSERT_NE(dev, nullptr);
  std::mt19937_64 rng(11);
  const auto data = RandomBytes(rng, 3 * 4096);
  ASSERT_TRUE(dev->Write(4096, data.data(), data.size(), false).ok());
  const uint8_t* view = dev->View(4096, data.size());
  if (dev->uses_direct_io()) {
    EXPECT_EQ(view, nullptr);
    return;
  }
  ASSERT_NE(view, nullptr);
  int diff = -1;
  ASSERT_TRUE(GuardMappedAccess([&] {
                diff = std::memcmp(view, data.data(), data.size());
                return Status::OK();
              }).ok());
  EXPECT_EQ(diff, 0);
  const auto later = RandomBytes(rng, 100);
  ASSERT_TRUE(dev->Write(5000, later.data(), later.size(), false).ok());
  ASSERT_TRUE(GuardMappedAccess([&] {
                diff = std::memcmp(view + 5000 - 4096, later.data(), later.size());
                return Status::OK();
              }).ok());
  EXPECT_EQ(diff, 0);
  EXPECT_NE(dev->View(dev->Size() - 10, 10), nullptr);
  EXPECT_EQ(dev->View(dev->Size() - 10, 11), nullptr);
  EXPECT_EQ(dev->View(dev->Size() + 1, 0), nullptr);
}

INSTANTIATE_TEST_SUITE_P(FileDevice, FileDeviceTest, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "DirectAllowed" : "Buffered";
                         });

// A mapped page that cannot be read (here the file was truncated behind
// the device's back; on a disk, an I/O error) raises SIGBUS at the access.
// Inside GuardMappedAccess that is an error, as often as it happens;
// outside one the process still dies of it, as it would without the guard.
// A buffered (page cache) FileDevice on a new file of `size` bytes, or null.
std::unique_ptr<FileDevice> OpenBuffered(const std::string& path, uint64_t size) {
  FileDeviceOptions opts;
  opts.allow_direct = false;
  opts.create = true;
  opts.size = size;
  std::unique_ptr<FileDevice> dev;
  const Status st = FileDevice::Open(path, opts, &dev);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return dev;
}

// How many of the 4 KiB pages of [offset, offset+len) of the buffered
// device `dev` are dirty in the page cache: its View() maps them, and
// /proc/self/pagemap and /proc/kpageflags (page frame numbers need
// CAP_SYS_ADMIN) give their flags.  -1 when they cannot be read.
int DirtyPages(FileDevice* dev, uint64_t offset, size_t len) {
  constexpr uint64_t kPresent = 1ull << 63, kPfnMask = (1ull << 55) - 1, kDirty = 1ull << 4;
  const uint8_t* view = dev->View(offset, len);
  // Unbuffered: a buffered stream reading ahead of the entry failed on
  // pagemap; one 8-byte read per page is what these files are for.
  std::ifstream pagemap, kpageflags;
  pagemap.rdbuf()->pubsetbuf(nullptr, 0);
  kpageflags.rdbuf()->pubsetbuf(nullptr, 0);
  pagemap.open("/proc/self/pagemap", std::ios::binary);
  kpageflags.open("/proc/kpageflags", std::ios::binary);
  if (view == nullptr || !pagemap || !kpageflags) return -1;
  const Status touched = GuardMappedAccess([&] {
    for (size_t at = 0; at < len; at += 4096) (void)static_cast<const volatile uint8_t*>(view)[at];
    return Status::OK();
  });
  if (!touched.ok()) return -1;
  int dirty = 0;
  for (size_t at = 0; at < len; at += 4096) {
    uint64_t entry = 0, flags = 0;
    pagemap.seekg(static_cast<std::streamoff>(reinterpret_cast<uintptr_t>(view + at) / 4096 * 8));
    pagemap.read(reinterpret_cast<char*>(&entry), 8);
    if (!pagemap || !(entry & kPresent) || (entry & kPfnMask) == 0) return -1;
    kpageflags.seekg(static_cast<std::streamoff>((entry & kPfnMask) * 8));
    kpageflags.read(reinterpret_cast<char*>(&flags), 8);
    if (!kpageflags) return -1;
    if (flags & kDirty) ++dirty;
  }
  return dirty;
}

// FlushRange writes back the range's dirty pages and leaves the others in
// the page cache (what lets a drain skip the data written since the last
// commit); Flush writes back everything.
TEST(FileDeviceFlushRangeTest, WritesBackOnlyTheRange) {
  TempFile file(TempDir());
  struct statfs fs {};
  ASSERT_EQ(statfs(file.path().c_str(), &fs), 0);
  if (fs.f_type == TMPFS_MAGIC) GTEST_SKIP() << TempDir() << " is tmpfs: nothing is written back";
  std::unique_ptr<FileDevice> dev = OpenBuffered(file.path(), 4 << 20);
  ASSERT_NE(dev, nullptr);
  constexpr size_t kLen = 64 * 1024;
  constexpr uint64_t kOther = 2 << 20;
  std::mt19937_64 rng(11);
  const std::vector<uint8_t> data = RandomBytes(rng, kLen);
  ASSERT_TRUE(dev->Write(0, data.data(), kLen, false).ok());
  ASSERT_TRUE(dev->Write(kOther, data.data(), kLen, false).ok());
  const int before = DirtyPages(dev.get(), 0, kLen);
  if (before < 0) GTEST_SKIP() << "page flags unreadable here (needs /proc/kpageflags and root)";
  ASSERT_EQ(before, 16);
  ASSERT_EQ(DirtyPages(dev.get(), kOther, kLen), 16);

  ASSERT_TRUE(dev->FlushRange(0, kLen).ok());
  EXPECT_EQ(DirtyPages(dev.get(), 0, kLen), 0);
  EXPECT_EQ(DirtyPages(dev.get(), kOther, kLen), 16) << "written back outside the range";

  ASSERT_TRUE(dev->Flush().ok());
  EXPECT_EQ(DirtyPages(dev.get(), kOther, kLen), 0);
}

TEST(MappedViewTest, AFaultIsAnErrorInsideTheGuardOnly) {
  TempFile file(TempDir());
  ASSERT_FALSE(file.path().empty());
  std::unique_ptr<FileDevice> dev = OpenBuffered(file.path(), 1 << 20);
  ASSERT_NE(dev, nullptr);
  const std::vector<uint8_t> ones(dev->Size(), 1);
  ASSERT_TRUE(dev->Write(0, ones.data(), ones.size(), false).ok());
  const uint8_t* view = dev->View(0, dev->Size());
  ASSERT_NE(view, nullptr);
  ASSERT_EQ(truncate(file.path().c_str(), 4096), 0);
  for (int i = 0; i < 3; ++i) {  // again: the jump must leave SIGBUS unblocked
    volatile uint8_t sink = 0;
    const Status st = GuardMappedAccess([&] {
      sink = view[65536 + i * 4096];
      return Status::OK();
    });
    EXPECT_EQ(st.code(), Status::Code::kIOError) << st.ToString();
    EXPECT_NE(st.message().find("SIGBUS"), std::string::npos) << st.message();
  }
  uint8_t first = 0;
  EXPECT_TRUE(GuardMappedAccess([&] {
                first = view[0];
                return Status::OK();
              }).ok());
  EXPECT_EQ(first, 1);
  // The threadsafe style re-runs this test in a child, which makes its own
  // file and dies before its TempFile could remove it: it unlinks the file
  // first (the mapping, and the fault, outlive the name).
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        unlink(file.path().c_str());
        volatile uint8_t sink = view[65536];
        (void)sink;
      },
      "");
}

TEST(FileDeviceOpenTest, MissingFileWithoutCreateSaysWhatAndWhere) {
  std::string path;
  {
    TempFile gone(TempDir());
    path = gone.path() + "-missing";
  }
  std::unique_ptr<FileDevice> dev;
  const Status st = FileDevice::Open(path, FileDeviceOptions{}, &dev);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.err(), ENOENT);
  EXPECT_NE(st.message().find(path), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("No such file"), std::string::npos) << st.message();
  EXPECT_EQ(dev, nullptr);
}

TEST(FileDeviceOpenTest, RejectsCharacterDevices) {
  FileDeviceOptions opts;
  opts.read_only = true;
  std::unique_ptr<FileDevice> dev;
  const Status st = FileDevice::Open("/dev/null", opts, &dev);
  EXPECT_EQ(st.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(st.message().find("/dev/null"), std::string::npos) << st.message();
}

// One writer or any number of readers, refused at once (kBusy, naming the
// file) rather than waited for; the lock goes with the device.
TEST(FileDeviceOpenTest, OneWriterOrManyReaders) {
  TempFile file(TempDir());
  ASSERT_FALSE(file.path().empty());
  FileDeviceOptions rw;
  rw.size = 1 << 20;
  FileDeviceOptions ro;
  ro.read_only = true;
  auto open = [&file](const FileDeviceOptions& opts, std::unique_ptr<FileDevice>* dev) {
    return FileDevice::Open(file.path(), opts, dev);
  };

  std::unique_ptr<FileDevice> writer, other;
  ASSERT_TRUE(open(rw, &writer).ok());
  Status st = open(rw, &other);
  EXPECT_EQ(st.code(), Status::Code::kBusy) << st.ToString();
  EXPECT_NE(st.message().find(file.path()), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("in use"), std::string::npos) << st.message();
  EXPECT_EQ(other, nullptr);
  st = open(ro, &other);
  EXPECT_EQ(st.code(), Status::Code::kBusy) << st.ToString();
  // A writable open that resizes must not have resized the file it lost.
  FileDeviceOptions grow = rw;
  grow.size = 2 << 20;
  EXPECT_EQ(open(grow, &other).code(), Status::Code::kBusy);
  EXPECT_EQ(writer->Size(), 1u << 20);
  struct stat sb {};
  ASSERT_EQ(stat(file.path().c_str(), &sb), 0);
  EXPECT_EQ(sb.st_size, 1 << 20);

  writer.reset();
  std::unique_ptr<FileDevice> reader1, reader2;
  ASSERT_TRUE(open(ro, &reader1).ok());
  ASSERT_TRUE(open(ro, &reader2).ok());
  EXPECT_EQ(open(rw, &other).code(), Status::Code::kBusy);
  reader1.reset();
  EXPECT_EQ(open(rw, &other).code(), Status::Code::kBusy);
  reader2.reset();
  EXPECT_TRUE(open(rw, &other).ok());
}

// A daemon restarted right after a kill waits for the lock its predecessor's
// in-flight I/O still holds: an open with lock_wait_ms gets the lock once the
// holder lets go, and fails with kBusy if the holder stays.
TEST(FileDeviceOpenTest, AnOpenMayWaitForTheLock) {
  TempFile file(TempDir());
  ASSERT_FALSE(file.path().empty());
  FileDeviceOptions rw;
  rw.size = 1 << 20;
  std::unique_ptr<FileDevice> holder;
  ASSERT_TRUE(FileDevice::Open(file.path(), rw, &holder).ok());

  FileDeviceOptions patient = rw;
  patient.lock_wait_ms = 50;
  std::unique_ptr<FileDevice> waiter;
  EXPECT_EQ(FileDevice::Open(file.path(), patient, &waiter).code(), Status::Code::kBusy);

  patient.lock_wait_ms = 20000;
  std::thread release([&holder] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    holder.reset();
  });
  const Status st = FileDevice::Open(file.path(), patient, &waiter);
  release.join();
  EXPECT_TRUE(st.ok()) << st.ToString();
}

// tmpfs has no direct-I/O alignment to report (or refuses O_DIRECT): the
// device must fall back to buffered I/O and work.
TEST(FileDeviceOpenTest, WorksOnTmpfs) {
  struct stat st {};
  if (stat("/dev/shm", &st) != 0 || access("/dev/shm", W_OK) != 0) {
    GTEST_SKIP() << "no writable /dev/shm";
  }
  TempFile file("/dev/shm");
  ASSERT_FALSE(file.path().empty());
  FileDeviceOptions opts;
  opts.size = 1 << 20;
  std::unique_ptr<FileDevice> dev;
  const Status s = FileDevice::Open(file.path(), opts, &dev);
  ASSERT_TRUE(s.ok()) << s.ToString();
  std::cout << "[ info     ] /dev/shm: uses_direct_io=" << dev->uses_direct_io() << "\n";
  std::vector<uint8_t> data(5000, 3);
  ASSERT_TRUE(dev->Write(777, data.data(), data.size(), true).ok());
  std::vector<uint8_t> got(data.size());
  ASSERT_TRUE(dev->Read(777, got.data(), got.size()).ok());
  EXPECT_EQ(got, data);
  ASSERT_TRUE(dev->Discard(0, 1 << 20).ok());
  ASSERT_TRUE(dev->Read(777, got.data(), got.size()).ok());
  EXPECT_EQ(got, std::vector<uint8_t>(data.size(), 0));
}

}  // namespace
}  // namespace insitu
