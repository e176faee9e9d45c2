#include "libcore/extent_lock.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

namespace insitu {
namespace {

using namespace std::chrono_literals;

TEST(ExtentLock, SharedHoldersOverlapExclusiveOnesDoNot) {
  ExtentLock lock;
  auto a = lock.Lock(0, 10, false);
  auto b = lock.Lock(5, 15, false);  // shared with shared: granted at once
  std::atomic<bool> got{false};
  std::thread writer([&] {
    auto w = lock.Lock(9, 10, true);
    got = true;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(got);  // overlaps both readers
  a.Release();
  std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(got);  // still overlaps b
  b.Release();
  writer.join();
  EXPECT_TRUE(got);
}

TEST(ExtentLock, DisjointRangesNeverWait) {
  ExtentLock lock;
  auto a = lock.Lock(0, 10, true);
  auto b = lock.Lock(10, 20, true);  // would deadlock the test if it waited
  auto c = lock.Lock(20, 21, false);
  SUCCEED();
}

TEST(ExtentLock, ConflictingRequestsAreGrantedInArrivalOrder) {
  ExtentLock lock;
  auto first = lock.Lock(0, 4, true);
  std::vector<int> order;
  std::mutex mu;
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      auto g = lock.Lock(0, 4, i % 2 == 0);  // writers and readers interleaved
      std::lock_guard<std::mutex> l(mu);
      order.push_back(i);
    });
    std::this_thread::sleep_for(20ms);  // arrive in order 0, 1, 2, 3
  }
  first.Release();
  for (auto& t : threads) t.join();
  ASSERT_EQ(order.size(), 4u);
  // Writer 0 goes first, and writer 2 cannot overtake reader 1.
  EXPECT_EQ(order[0], 0);
  EXPECT_LT(std::find(order.begin(), order.end(), 1), std::find(order.begin(), order.end(), 2));
}

TEST(ExtentLock, ManyThreadsKeepMutualExclusion) {
  ExtentLock lock;
  std::atomic<int> inside[8] = {};
  std::atomic<bool> broken{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        const uint64_t unit = (t * 7 + i) % 8;
        auto g = lock.Lock(unit, unit + 1, true);
        if (inside[unit].fetch_add(1) != 0) broken = true;
        inside[unit].fetch_sub(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(broken);
}

}  // namespace
}  // namespace insitu
