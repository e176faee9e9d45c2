#include "libcore/nbd/buffer_pool.h"

#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <vector>

namespace insitu::nbd {
namespace {

TEST(BufferPool, BuffersAreAlignedAndReused) {
  BufferPool pool;
  uint8_t* first;
  {
    DataBuffer a = pool.Take(5000);  // the 8 KiB class
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.get()) % 4096, 0u);
    std::memset(a.get(), 0x5a, 8192);  // the whole class is usable
    first = a.get();
  }
  EXPECT_EQ(pool.cached_bytes(), 8192u);
  DataBuffer b = pool.Take(8192);
  EXPECT_EQ(b.get(), first);
  EXPECT_EQ(pool.cached_bytes(), 0u);
  DataBuffer c = pool.Take(4096);  // another class: a new buffer
  EXPECT_NE(c.get(), first);
  DataBuffer zero = pool.Take(0);
  EXPECT_NE(zero, nullptr);
}

TEST(BufferPool, LargeBuffersBypassThePoolAndTheCacheIsBounded) {
  BufferPool pool;
  { DataBuffer big = pool.Take(4u << 20); }
  EXPECT_EQ(pool.cached_bytes(), 0u);
  {
    std::vector<DataBuffer> many;
    for (size_t i = 0; i < BufferPool::kMaxCachedBytes / (1u << 20) + 8; ++i) {
      many.push_back(pool.Take(1u << 20));
    }
  }
  EXPECT_EQ(pool.cached_bytes(), BufferPool::kMaxCachedBytes);
}

TEST(BufferPool, ConcurrentTakeAndGiveAcrossThreads) {
  BufferPool pool;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&pool, t] {
      std::vector<DataBuffer> held;
      for (int i = 0; i < 2000; ++i) {
        held.push_back(pool.Take(4096u << ((i + t) % 6)));
        held.back().get()[0] = static_cast<uint8_t>(i);
        if (held.size() > 8) held.erase(held.begin());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_LE(pool.cached_bytes(), BufferPool::kMaxCachedBytes);
}

}  // namespace
}  // namespace insitu::nbd
