#include "libcore/mem_device.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

namespace insitu {
namespace {

TEST(MemDeviceTest, StartsZeroedAndRoundTrips) {
  MemDevice dev(1 << 20);
  EXPECT_EQ(dev.Size(), 1u << 20);
  std::vector<uint8_t> buf(5000, 0xEE);
  ASSERT_TRUE(dev.Read(12345, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf, std::vector<uint8_t>(5000, 0));

  std::vector<uint8_t> data(777);
  std::iota(data.begin(), data.end(), 0);
  ASSERT_TRUE(dev.Write(3, data.data(), data.size(), true).ok());
  std::vector<uint8_t> back(data.size());
  ASSERT_TRUE(dev.Read(3, back.data(), back.size()).ok());
  EXPECT_EQ(back, data);
  EXPECT_TRUE(dev.Flush().ok());
}

TEST(MemDeviceTest, DiscardAndWriteZeroesReadBackZeros) {
  MemDevice dev(65536);
  std::vector<uint8_t> ones(65536, 1);
  ASSERT_TRUE(dev.Write(0, ones.data(), ones.size(), false).ok());
  ASSERT_TRUE(dev.Discard(100, 1000).ok());
  ASSERT_TRUE(dev.WriteZeroes(40000, 5, true).ok());
  std::vector<uint8_t> expect(65536, 1);
  std::fill_n(expect.begin() + 100, 1000, 0);
  std::fill_n(expect.begin() + 40000, 5, 0);
  std::vector<uint8_t> back(65536);
  ASSERT_TRUE(dev.Read(0, back.data(), back.size()).ok());
  EXPECT_EQ(back, expect);
}

TEST(MemDeviceTest, RejectsRangesPastTheEnd) {
  MemDevice dev(4096);
  uint8_t b[16] = {};
  EXPECT_EQ(dev.Read(4090, b, 16).code(), Status::Code::kOutOfRange);
  EXPECT_EQ(dev.Write(4096, b, 1, false).code(), Status::Code::kOutOfRange);
  EXPECT_EQ(dev.Discard(0, 4097).code(), Status::Code::kOutOfRange);
  EXPECT_EQ(dev.WriteZeroes(UINT64_MAX, 2, false).code(), Status::Code::kOutOfRange);
  EXPECT_TRUE(dev.Read(4096, b, 0).ok());
  EXPECT_TRUE(dev.Write(4080, b, 16, false).ok());
}

TEST(MemDeviceTest, ReportsAllDataAllocation) {
  MemDevice dev(8192);
  std::vector<AllocationRun> runs;
  ASSERT_TRUE(dev.GetAllocation(0, 8192, &runs).ok());
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].length, 8192u);
  EXPECT_FALSE(runs[0].hole);
  EXPECT_EQ(dev.Describe(), "memory");
}

TEST(MemDeviceTest, ConcurrentDisjointWrites) {
  constexpr int kThreads = 4;
  constexpr size_t kRegion = 65536;
  MemDevice dev(kThreads * kRegion);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&dev, t] {
      std::vector<uint8_t> data(kRegion, static_cast<uint8_t>(t + 1));
      for (size_t off = 0; off < kRegion; off += 512) {
        ASSERT_TRUE(dev.Write(t * kRegion + off, data.data() + off, 512, false).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    std::vector<uint8_t> back(kRegion);
    ASSERT_TRUE(dev.Read(t * kRegion, back.data(), kRegion).ok());
    EXPECT_EQ(back, std::vector<uint8_t>(kRegion, static_cast<uint8_t>(t + 1))) << t;
  }
}

// The device locks in stripes; a range over several of them must still be
// written and read as one: a reader sees the whole of one write, never a
// mix of two (or of a write and WriteZeroes), even when its range starts
// and ends in other stripes than the write's.
TEST(MemDeviceTest, ConcurrentOverlappingRangesAreNeverTorn) {
  constexpr uint64_t kMiB = 1 << 20;
  MemDevice dev(4 * kMiB);
  const uint64_t offset = kMiB - 8192;  // 4 stripes of 1 MiB
  const size_t len = 2 * kMiB + 16384;
  std::atomic<bool> done{false};
  std::thread writer([&] {
    std::vector<uint8_t> data(len);
    for (int i = 1; i <= 200; ++i) {
      if (i % 3 == 0) {
        EXPECT_TRUE(dev.WriteZeroes(offset, len, false).ok());
      } else {
        std::fill(data.begin(), data.end(), static_cast<uint8_t>(i));
        EXPECT_TRUE(dev.Write(offset, data.data(), len, false).ok());
      }
    }
    done = true;
  });
  // The reader's range shares only the writes' inner stripes.
  std::vector<uint8_t> back(kMiB + 4096);
  const uint64_t read_offset = kMiB + kMiB / 2;
  int reads = 0;
  while (!done || reads == 0) {  // a failure breaks out, and the writer is joined
    if (!dev.Read(read_offset, back.data(), back.size()).ok()) {
      ADD_FAILURE() << "read " << reads << " failed";
      break;
    }
    ++reads;
    const auto odd =
        std::find_if(back.begin(), back.end(), [&](uint8_t b) { return b != back[0]; });
    if (odd != back.end()) {
      ADD_FAILURE() << "read " << reads << " torn at byte " << (odd - back.begin()) << ": "
                    << int{back[0]} << " then " << int{*odd};
      break;
    }
  }
  writer.join();
}

}  // namespace
}  // namespace insitu
