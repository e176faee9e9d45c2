// DeferredWrites: queued overwrites read back before they are drained, a
// drain flushes before it writes, a failed drain keeps its entries, and a
// reader racing a drain never sees older bytes than were queued.
#include "libcore/deferred_writes.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "libcore/mem_device.h"
#include "tests/support/fault_device.h"
#include "tests/support/log_writes_device.h"

namespace insitu {
namespace {

using testing::FaultDevice;
using testing::FaultOp;
using testing::LogEntry;
using testing::LogWritesDevice;

// Widens the window between a read of the device and what follows it.
class SlowReadDevice : public MemDevice {
 public:
  using MemDevice::MemDevice;
  Status Read(uint64_t offset, void* buf, size_t len) override {
    Status st = MemDevice::Read(offset, buf, len);
    std::this_thread::sleep_for(std::chrono::microseconds(50));
    return st;
  }
};

std::vector<uint8_t> Bytes(size_t len, uint8_t v) { return std::vector<uint8_t>(len, v); }

std::vector<uint8_t> DeviceBytes(BlockDevice* dev, uint64_t off, size_t len) {
  std::vector<uint8_t> out(len);
  EXPECT_TRUE(dev->Read(off, out.data(), len).ok());
  return out;
}

TEST(DeferredWrites, QueuedBytesReadBackLaterEntriesWinAndTheDeviceIsUntouched) {
  MemDevice mem(1 << 20);
  DeferredWrites q(&mem, 1 << 20, 0, 4096);
  EXPECT_TRUE(q.empty());
  q.Add(4096, Bytes(8192, 1).data(), 8192, WriteEpoch{});  // [4096, 12288)
  q.Add(8192, Bytes(512, 2).data(), 512, WriteEpoch{});    // inside the first
  q.Add(0, Bytes(5120, 3).data(), 5120, WriteEpoch{});     // overlaps its head
  EXPECT_FALSE(q.empty());
  EXPECT_TRUE(q.Overlaps(12287, 1));
  EXPECT_FALSE(q.Overlaps(12288, 4096));
  EXPECT_FALSE(q.Overlaps(16384, 100));

  std::vector<uint8_t> got(16384);
  ASSERT_TRUE(q.Read(0, got.data(), got.size()).ok());
  for (size_t i = 0; i < got.size(); ++i) {
    const uint8_t want = i < 5120 ? 3 : i >= 8192 && i < 8704 ? 2 : i < 12288 ? 1 : 0;
    ASSERT_EQ(got[i], want) << "byte " << i;
  }
  // A read that starts inside an entry sees only its part.
  uint8_t one = 0;
  ASSERT_TRUE(q.Read(8700, &one, 1).ok());
  EXPECT_EQ(one, 2);
  EXPECT_EQ(DeviceBytes(&mem, 0, 16384), Bytes(16384, 0));
}

TEST(DeferredWrites, ForEachQueuedReportsOverlappingWritesWithTheirEpochs) {
  MemDevice mem(1 << 20);
  DeferredWrites q(&mem, 1 << 20, 0, 4096);
  q.Add(4096, Bytes(8192, 1).data(), 8192, WriteEpoch{7, 0});  // [4096, 12288)
  q.Add(8192, Bytes(512, 2).data(), 512, WriteEpoch{7, 8});    // [8192, 8704)
  q.Add(0, Bytes(5120, 3).data(), 5120, WriteEpoch{6, 7});     // [0, 5120)
  std::vector<std::pair<uint64_t, WriteEpoch>> seen;
  q.ForEachQueued(4096, 4096, [&](uint64_t offset, size_t len, const WriteEpoch& e) {
    EXPECT_GT(len, 0u);
    seen.emplace_back(offset, e);
  });
  ASSERT_EQ(seen.size(), 2u);  // [8192, 8704) starts where the range ends
  EXPECT_EQ(seen[0].first, 0u);
  EXPECT_TRUE(seen[0].second == (WriteEpoch{6, 7}));
  EXPECT_EQ(seen[1].first, 4096u);
  EXPECT_TRUE(seen[1].second == (WriteEpoch{7, 0}));
  ASSERT_TRUE(q.Drain().ok());
  seen.clear();
  q.ForEachQueued(0, 1 << 20, [&](uint64_t offset, size_t, const WriteEpoch& e) {
    seen.emplace_back(offset, e);
  });
  EXPECT_TRUE(seen.empty());
}

TEST(DeferredWrites, DrainFlushesTheJournalBeforeWritingInQueueOrder) {
  MemDevice mem(1 << 20);
  LogWritesDevice log(&mem);
  DeferredWrites q(&log, 10000, 4 << 16, 1 << 16);
  q.Add(0, Bytes(4096, 1).data(), 4096, WriteEpoch{});
  EXPECT_FALSE(q.ShouldDrain());
  q.Add(2048, Bytes(4096, 2).data(), 4096, WriteEpoch{});
  q.Add(65536, Bytes(4096, 3).data(), 4096, WriteEpoch{});
  EXPECT_TRUE(q.ShouldDrain());
  ASSERT_TRUE(q.Drain().ok());
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.ShouldDrain());

  const std::vector<LogEntry> entries = log.Entries();
  ASSERT_EQ(entries.size(), 4u);
  EXPECT_EQ(entries[0].Describe(), "flush 262144+65536");
  EXPECT_EQ(entries[1].offset, 0u);
  EXPECT_EQ(entries[2].offset, 2048u);
  EXPECT_EQ(entries[3].offset, 65536u);
  std::vector<uint8_t> want = Bytes(6144, 1);
  std::memset(want.data() + 2048, 2, 4096);
  EXPECT_EQ(DeviceBytes(&mem, 0, 6144), want);
  EXPECT_EQ(DeviceBytes(&mem, 65536, 4096), Bytes(4096, 3));
  // An empty queue drains without touching the device.
  ASSERT_TRUE(q.Drain().ok());
  EXPECT_EQ(log.Entries().size(), 4u);
}

// The soft and hard limits, and a drain called for more bytes than are
// left (another drain took them) touching nothing.
TEST(DeferredWrites, DrainAtLeastSkipsWhatAnotherDrainTook) {
  MemDevice mem(1 << 20);
  LogWritesDevice log(&mem);
  DeferredWrites q(&log, 8192, 0, 4096);
  q.Add(0, Bytes(8192, 1).data(), 8192, WriteEpoch{});
  EXPECT_TRUE(q.ShouldDrain());
  EXPECT_FALSE(q.MustDrain());
  q.Add(16384, Bytes(8192, 2).data(), 8192, WriteEpoch{});
  EXPECT_TRUE(q.MustDrain());
  ASSERT_TRUE(q.Drain(2 * q.drain_bytes()).ok());
  EXPECT_TRUE(q.empty());
  const size_t after_first = log.Entries().size();
  EXPECT_EQ(after_first, 3u);  // flush, two writes
  // A writer that found the queue full and waited behind that drain.
  q.Add(0, Bytes(4096, 3).data(), 4096, WriteEpoch{});
  ASSERT_TRUE(q.Drain(2 * q.drain_bytes()).ok());
  EXPECT_EQ(log.Entries().size(), after_first);
  EXPECT_FALSE(q.empty());
  std::vector<uint8_t> got(4096);
  ASSERT_TRUE(q.Read(0, got.data(), got.size()).ok());
  EXPECT_EQ(got, Bytes(4096, 3));
  // Without a floor it drains.
  ASSERT_TRUE(q.Drain().ok());
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(DeviceBytes(&mem, 0, 4096), Bytes(4096, 3));
}

TEST(DeferredWrites, FailedDrainKeepsEveryEntryReadable) {
  MemDevice mem(1 << 20);
  FaultDevice fault(&mem);
  DeferredWrites q(&fault, 1 << 20, 0, 4096);
  q.Add(0, Bytes(4096, 7).data(), 4096, WriteEpoch{});
  q.Add(8192, Bytes(4096, 8).data(), 4096, WriteEpoch{});

  fault.FailNth(FaultOp::kFlush, 1, EIO);
  Status st = q.Drain();
  EXPECT_EQ(st.err(), EIO) << st.ToString();
  EXPECT_EQ(DeviceBytes(&mem, 0, 4096), Bytes(4096, 0));  // nothing written before the flush

  fault.FailNth(FaultOp::kWrite, 2, EIO);
  st = q.Drain();
  EXPECT_EQ(st.err(), EIO) << st.ToString();
  EXPECT_FALSE(q.empty());
  std::vector<uint8_t> got(12288);
  ASSERT_TRUE(q.Read(0, got.data(), got.size()).ok());
  EXPECT_EQ(got[0], 7);
  EXPECT_EQ(got[8192], 8);

  fault.Heal();
  ASSERT_TRUE(q.Drain().ok());
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(DeviceBytes(&mem, 8192, 4096), Bytes(4096, 8));
}

// One writer queues ever larger values over the same block and drains now
// and then; readers must never see a value older than the newest one queued
// before their read began (an entry leaves the queue only after its bytes
// are on the device).
TEST(DeferredWrites, ConcurrentReadsDuringDrainsNeverGoBack) {
  SlowReadDevice mem(1 << 20);
  DeferredWrites q(&mem, 64 * 1024, 0, 4096);
  std::atomic<uint32_t> queued{0};
  std::atomic<bool> stop{false}, failed{false};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&] {
      std::vector<uint8_t> buf(4096);
      while (!stop.load()) {
        const uint32_t floor = queued.load();
        if (!q.Read(4096, buf.data(), buf.size()).ok()) failed = true;
        uint32_t v;
        std::memcpy(&v, buf.data(), sizeof(v));
        if (v < floor) failed = true;
      }
    });
  }
  std::vector<uint8_t> block(4096);
  for (uint32_t v = 1; v <= 3000 && !failed; ++v) {
    std::memcpy(block.data(), &v, sizeof(v));
    q.Add(4096, block.data(), block.size(), WriteEpoch{});
    queued = v;
    if (q.ShouldDrain()) {
      ASSERT_TRUE(q.Drain().ok());
    }
  }
  ASSERT_TRUE(q.Drain().ok());
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_FALSE(failed.load());
  uint32_t last;
  std::memcpy(&last, DeviceBytes(&mem, 4096, 4).data(), sizeof(last));
  EXPECT_EQ(last, 3000u);
}

}  // namespace
}  // namespace insitu
