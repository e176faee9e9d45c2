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

// A request locks the stripe of every 1 MiB region it touches, so requests
// that overlap never mix, even when they start in different regions and
// their stripes wrap around the stripe count.
TEST(MemDeviceTest, OverlappingRequestsAcrossRegionsStayAtomic) {
  constexpr size_t kMiB = 1 << 20;
  constexpr uint64_t kWriteAt = 63 * kMiB - 4096;  // regions 63-65: stripes 63, 0, 1
  constexpr size_t kWriteLen = 3 * kMiB;
  constexpr uint64_t kReadAt = 64 * kMiB;  // regions 64-65: stripes 0 and 1
  constexpr size_t kReadLen = 2 * kMiB - 4096;
  MemDevice dev(kWriteAt + kWriteLen);
  std::atomic<int> torn{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&dev, t] {
      const std::vector<uint8_t> data(kWriteLen, static_cast<uint8_t>(t + 1));
      for (int i = 0; i < 100; ++i)
        ASSERT_TRUE(dev.Write(kWriteAt, data.data(), kWriteLen, false).ok());
    });
  }
  threads.emplace_back([&] {
    std::vector<uint8_t> back(kReadLen);
    for (int i = 0; i < 200; ++i) {
      ASSERT_TRUE(dev.Read(kReadAt, back.data(), kReadLen).ok());
      if (back.front() != back.back()) torn++;
    }
  });
  for (auto& th : threads) th.join();
  EXPECT_EQ(torn.load(), 0) << "reads saw two writes at once";
  std::vector<uint8_t> back(kWriteLen);
  ASSERT_TRUE(dev.Read(kWriteAt, back.data(), kWriteLen).ok());
  EXPECT_EQ(std::count(back.begin(), back.end(), back.front()), static_cast<ptrdiff_t>(kWriteLen));
}

}  // namespace
}  // namespace insitu
