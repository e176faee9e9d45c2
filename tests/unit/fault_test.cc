// Fault injection: FaultDevice itself, and an insitu volume over a backing
// device that fails, fills up or tears writes.  The contract (BRIEF, "Bad
// input gets a clear error and loses nothing"): the failing request returns
// an error carrying the backing errno (EIO -> kIOError, ENOSPC -> kNoSpace);
// reads fail rather than return garbage; the volume still opens afterwards;
// every block the failed request was not writing keeps its content, and the
// blocks it was writing hold their old or their new content.
//
// Whether the volume accepts further writes after a backing failure (or
// refuses them until reopened) is the volume's policy; these tests accept
// either, but not a loss.
//
// The shared-extent tests cover what the seed's in-place write path broke:
// a failed or torn backing write in the middle of a read-modify-write left
// the slot's old extent partly overwritten (docs/design.md, Crash safety).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "libcore/mem_device.h"
#include "libcore/volume.h"
#include "tests/support/fault_device.h"
#include "tests/unit/test_util.h"

namespace insitu {
namespace {

using format::kBlockSize;
using testing::BorrowedDevice;
using testing::DataKind;
using testing::FaultDevice;
using testing::FaultOp;
using testing::FillData;

constexpr uint64_t kSlot = format::kMaxExtentBlocks * kBlockSize;

// ---- the device ------------------------------------------------------------

TEST(FaultDevice, FailsOnlyTheNthCallOfItsKind) {
  MemDevice mem(64 * 1024);
  FaultDevice dev(&mem);
  const std::vector<uint8_t> data(4096, 0x11);
  uint8_t buf[4096];
  dev.FailNth(FaultOp::kWrite, 3, EIO);
  EXPECT_TRUE(dev.Write(0, data.data(), data.size(), false).ok());
  EXPECT_TRUE(dev.WriteZeroes(4096, 4096, false).ok());  // write-zeroes counts as a write
  EXPECT_TRUE(dev.Read(0, buf, sizeof(buf)).ok());
  Status st = dev.Write(8192, data.data(), data.size(), false);
  EXPECT_EQ(st.code(), Status::Code::kIOError);
  EXPECT_EQ(st.err(), EIO);
  EXPECT_EQ(mem.contents()[8192], 0) << "a failed write stores nothing";
  EXPECT_TRUE(dev.Write(8192, data.data(), data.size(), false).ok());

  dev.FailNth(FaultOp::kRead, 2, EIO);
  dev.FailNth(FaultOp::kFlush, 1, EIO);
  dev.FailNth(FaultOp::kDiscard, 1, ENOSPC);
  EXPECT_TRUE(dev.Read(0, buf, sizeof(buf)).ok());
  EXPECT_EQ(dev.Read(0, buf, sizeof(buf)).err(), EIO);
  EXPECT_TRUE(dev.Read(0, buf, sizeof(buf)).ok());
  EXPECT_EQ(dev.Flush().err(), EIO);
  EXPECT_TRUE(dev.Flush().ok());
  EXPECT_EQ(dev.Discard(0, 4096).code(), Status::Code::kNoSpace);
  EXPECT_TRUE(dev.Discard(0, 4096).ok());
  EXPECT_EQ(dev.faults(), 4u);
}

TEST(FaultDevice, WriteBudgetRunsOutWithEnospc) {
  MemDevice mem(64 * 1024);
  FaultDevice dev(&mem);
  const std::vector<uint8_t> data(4096, 0x22);
  dev.SetWriteBudget(10000);
  EXPECT_TRUE(dev.Write(0, data.data(), 4096, false).ok());
  EXPECT_TRUE(dev.Write(4096, data.data(), 4096, false).ok());
  Status st = dev.Write(8192, data.data(), 4096, false);
  EXPECT_EQ(st.code(), Status::Code::kNoSpace);
  EXPECT_EQ(st.err(), ENOSPC);
  EXPECT_EQ(mem.contents()[8192], 0);
  EXPECT_TRUE(dev.Discard(0, 4096).ok()) << "discard frees space, never fails for it";
  EXPECT_TRUE(dev.Write(8192, data.data(), 1000, false).ok()) << "what still fits is written";
  EXPECT_EQ(dev.WriteZeroes(0, 4096, false).code(), Status::Code::kNoSpace);
  dev.Heal();
  EXPECT_TRUE(dev.Write(12288, data.data(), 4096, false).ok());
}

TEST(FaultDevice, TornWriteLandsAProperSubsetOfWholeSectorsThenFails) {
  std::vector<std::vector<bool>> patterns;
  for (uint64_t seed = 1; seed <= 8; ++seed) {
    MemDevice mem(64 * 1024);
    FaultDevice dev(&mem);
    const std::vector<uint8_t> data(16 * 512, 0xaa);
    dev.TearNthWrite(2, seed);
    EXPECT_TRUE(dev.Write(0, data.data(), 512, false).ok());
    EXPECT_EQ(dev.Write(4096, data.data(), data.size(), false).err(), EIO);
    std::vector<bool> landed;
    for (int s = 0; s < 16; ++s) {
      const uint8_t* p = mem.contents().data() + 4096 + s * 512;
      const bool all_new = std::all_of(p, p + 512, [](uint8_t b) { return b == 0xaa; });
      const bool all_old = std::all_of(p, p + 512, [](uint8_t b) { return b == 0; });
      EXPECT_TRUE(all_new || all_old) << "sector " << s << " is itself torn";
      landed.push_back(all_new);
    }
    const auto n = std::count(landed.begin(), landed.end(), true);
    EXPECT_GT(n, 0);
    EXPECT_LT(n, 16);
    patterns.push_back(landed);
    EXPECT_TRUE(dev.Write(4096, data.data(), data.size(), false).ok()) << "only one tear";
  }
  std::sort(patterns.begin(), patterns.end());
  EXPECT_GT(std::unique(patterns.begin(), patterns.end()) - patterns.begin(), 4)
      << "seeds choose different sectors";
}

TEST(FaultDevice, FailAllUntilHealed) {
  MemDevice mem(64 * 1024);
  FaultDevice dev(&mem);
  uint8_t buf[512] = {};
  dev.FailAll(EIO);
  EXPECT_EQ(dev.Read(0, buf, sizeof(buf)).err(), EIO);
  EXPECT_EQ(dev.Write(0, buf, sizeof(buf), true).err(), EIO);
  EXPECT_EQ(dev.Flush().err(), EIO);
  EXPECT_EQ(dev.Discard(0, 512).err(), EIO);
  EXPECT_EQ(dev.WriteZeroes(0, 512, false).err(), EIO);
  dev.FailAll(0);
  EXPECT_TRUE(dev.Read(0, buf, sizeof(buf)).ok());
  EXPECT_TRUE(dev.Write(0, buf, sizeof(buf), false).ok());
  EXPECT_EQ(dev.faults(), 5u);
}

TEST(FaultDevice, AnArmedFaultHitsExactlyOneOfConcurrentCalls) {
  MemDevice mem(1 << 20);
  FaultDevice dev(&mem);
  dev.FailNth(FaultOp::kWrite, 500, EIO);
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const std::vector<uint8_t> data(4096, static_cast<uint8_t>(t));
      for (int i = 0; i < 200; ++i) {
        if (!dev.Write(uint64_t(t * 200 + i) % 256 * 4096, data.data(), 4096, false).ok()) {
          ++failed;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failed.load(), 1);
  EXPECT_EQ(dev.faults(), 1u);
}

// ---- a volume over it --------------------------------------------------------

// A volume on a FaultDevice over a MemDevice, and what it should hold.
class FaultVolume : public ::testing::TestWithParam<format::MetaMode> {
 protected:
  void SetUp() override {
    mem_ = std::make_unique<MemDevice>(8 << 20);
    FormatOptions fopts;
    ASSERT_TRUE(ParseCodecSpec("lz4", &fopts.codec).ok());
    fopts.meta_mode = GetParam();
    fopts.meta_interval_s = 3600;  // no background write-back to race the armed faults
    ASSERT_TRUE(FormatVolume(mem_.get(), fopts).ok());
    fault_ = std::make_unique<FaultDevice>(mem_.get());
    Open(false);
    ASSERT_FALSE(HasFatalFailure());
    reference_.assign(vol_->Size(), 0);
    attempted_ = reference_;
    pending_.assign(vol_->Size() / kBlockSize, false);
  }

  void Open(bool read_only) {
    vol_.reset();
    OpenOptions o;
    o.read_only = read_only;
    o.log = [](const std::string&) {};
    Status st = InsituVolume::Open(std::make_unique<BorrowedDevice>(fault_.get()), o, &vol_);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  // Closes (which may fail while faults are armed) and opens again.
  void Reopen(bool read_only = false) {
    (void)vol_->Close();
    Open(read_only);
  }

  std::vector<uint8_t> Data(DataKind kind, size_t len) {
    std::vector<uint8_t> d(len);
    FillData(rng_, kind, d.data(), len);
    return d;
  }
  // A write that must succeed and counts as stored at once (the caller
  // flushes before anything can go wrong).
  void Put(uint64_t off, const std::vector<uint8_t>& data) {
    Status st = vol_->Write(off, data.data(), data.size(), false);
    ASSERT_TRUE(st.ok()) << st.ToString();
    std::memcpy(reference_.data() + off, data.data(), data.size());
    std::memcpy(attempted_.data() + off, data.data(), data.size());
  }
  // Whole extents of text, a raw extent, and small writes into them.
  void Populate() {
    for (uint64_t slot = 0; slot < 4; ++slot) Put(slot * kSlot, Data(DataKind::kText, kSlot));
    Put(4 * kSlot, Data(DataKind::kRandom, kSlot));
    Put(kSlot + 5000, Data(DataKind::kText, 3000));
    Put(3 * kSlot + 4096, Data(DataKind::kMixed, 20000));
    ASSERT_TRUE(vol_->Flush().ok());
  }
  // A write about to be tried that may fail or not become durable: until
  // Settle(), each of its blocks may hold its old content or the new one.
  // The tests keep pending writes apart from each other.
  void Pending(uint64_t off, const std::vector<uint8_t>& data) {
    std::memcpy(attempted_.data() + off, data.data(), data.size());
    for (uint64_t b = off / kBlockSize; b < (off + data.size() + kBlockSize - 1) / kBlockSize;
         ++b) {
      pending_[b] = true;
    }
  }
  // The pending write at [off, off+len) is known to be stored.
  void Settle(uint64_t off, uint64_t len) {
    std::memcpy(reference_.data() + off, attempted_.data() + off, len);
    for (uint64_t b = off / kBlockSize; b < (off + len + kBlockSize - 1) / kBlockSize; ++b) {
      pending_[b] = false;
    }
  }
  // Pending(), then the write; returns its status.
  Status Try(uint64_t off, const std::vector<uint8_t>& data) {
    Pending(off, data);
    return vol_->Write(off, data.data(), data.size(), false);
  }
  // Every block reads without error and holds what the reference says
  // (or, inside the failed request, the attempted content).
  void ExpectContents(const std::string& when) {
    SCOPED_TRACE(when);
    std::vector<uint8_t> buf(kBlockSize);
    int bad = 0;
    for (uint64_t b = 0; b < reference_.size() / kBlockSize && bad < 5; ++b) {
      Status st = vol_->Read(b * kBlockSize, buf.data(), kBlockSize);
      if (!st.ok()) {
        ADD_FAILURE() << "block " << b << ": " << st.ToString();
        ++bad;
        continue;
      }
      const uint8_t* want = reference_.data() + b * kBlockSize;
      if (std::memcmp(buf.data(), want, kBlockSize) == 0) continue;
      if (pending_[b] &&
          std::memcmp(buf.data(), attempted_.data() + b * kBlockSize, kBlockSize) == 0) {
        continue;
      }
      ADD_FAILURE() << "block " << b << " holds neither its stored content"
                    << (pending_[b] ? " nor the failed write's" : "");
      ++bad;
    }
  }

  // Fails the second backing write of a read-modify-write that splits a
  // shared 32-block extent in two (zeros written over blocks 10-11 leave
  // runs 0-9 and 12-31, each written at its own place).
  void FailInsideSharedExtent(int err) {
    Populate();
    ASSERT_FALSE(HasFatalFailure());
    const uint64_t off = 2 * kSlot + 10 * kBlockSize;
    const std::vector<uint8_t> zeros(2 * kBlockSize, 0);
    fault_->FailNth(FaultOp::kWrite, 2, err);
    Status st = Try(off, zeros);
    // Write-back queues an overwrite behind its undo record (the first
    // backing write) and completes; the failure shows when a flush drains it.
    if (st.ok()) st = vol_->Flush();
    EXPECT_EQ(st.err(), err) << st.ToString();
    EXPECT_EQ(fault_->faults(), 1u);
    ExpectContents("after the failed write");
    Reopen();
    ExpectContents("after reopening");
  }

  std::mt19937_64 rng_{42};
  std::unique_ptr<MemDevice> mem_;
  std::unique_ptr<FaultDevice> fault_;
  std::unique_ptr<InsituVolume> vol_;
  std::vector<uint8_t> reference_;  // what each block must hold
  std::vector<uint8_t> attempted_;  // what a pending block may hold instead
  std::vector<bool> pending_;       // per block
};

TEST_P(FaultVolume, FailedBackingWriteIsReportedAndOtherBlocksSurvive) {
  Populate();
  ASSERT_FALSE(HasFatalFailure());
  fault_->FailNth(FaultOp::kWrite, 1, EIO);
  Status st = Try(6 * kSlot, Data(DataKind::kText, kSlot));
  EXPECT_EQ(st.code(), Status::Code::kIOError) << st.ToString();
  EXPECT_EQ(st.err(), EIO);
  ExpectContents("after the failed write");
  // Later requests either work or fail cleanly; a reopened volume works.
  if (Try(7 * kSlot, Data(DataKind::kMixed, kSlot)).ok() && vol_->Flush().ok()) {
    Settle(7 * kSlot, kSlot);
  }
  Reopen();
  ExpectContents("after reopening");
  Put(8 * kSlot, Data(DataKind::kMixed, kSlot));
  ASSERT_TRUE(vol_->Flush().ok());
}

TEST_P(FaultVolume, EnospcIsReportedAndNothingStoredIsLost) {
  Populate();
  ASSERT_FALSE(HasFatalFailure());
  // Fresh extents, each flushed, until the thin backing file is full.
  fault_->SetWriteBudget(5 * kSlot + 3 * kBlockSize);
  Status st;
  for (uint64_t slot = 6; st.ok(); ++slot) {
    ASSERT_LT(slot, vol_->Size() / kSlot) << "the budget never ran out";
    st = Try(slot * kSlot, Data(DataKind::kRandom, kSlot));
    if (st.ok()) st = vol_->Flush();
    if (st.ok()) Settle(slot * kSlot, kSlot);
  }
  EXPECT_EQ(st.code(), Status::Code::kNoSpace) << st.ToString();
  EXPECT_EQ(st.err(), ENOSPC);
  ExpectContents("with the backing full");
  const Status closed = vol_->Close();
  EXPECT_TRUE(closed.ok() || closed.code() == Status::Code::kNoSpace) << closed.ToString();
  Open(true);  // still full: a read-only open writes nothing
  ExpectContents("reopened read-only while full");
  fault_->Heal();  // the administrator grows the backing file
  Reopen();
  ExpectContents("reopened with space");
  Put(vol_->Size() - kSlot, Data(DataKind::kText, kSlot));
}

TEST_P(FaultVolume, FailedWriteInsideASharedExtentKeepsItsNeighbours) {
  FailInsideSharedExtent(EIO);
}

TEST_P(FaultVolume, EnospcInsideASharedExtentKeepsItsNeighbours) { FailInsideSharedExtent(ENOSPC); }

// A patch (a small write beside a committed payload) whose backing write
// fails reports the error and leaves the extent and its payload as they
// were; the same write then patches the block.
TEST_P(FaultVolume, FailedPatchWriteKeepsTheExtent) {
  Populate();
  ASSERT_FALSE(HasFatalFailure());
  const uint64_t off = 2 * kSlot + 30 * kBlockSize;
  fault_->FailNth(FaultOp::kWrite, 1, EIO);
  const std::vector<uint8_t> patch = Data(DataKind::kText, kBlockSize);
  Status st = Try(off, patch);
  EXPECT_EQ(st.err(), EIO) << st.ToString();
  EXPECT_EQ(fault_->faults(), 1u);
  EXPECT_EQ(vol_->Stats().patch_writes, 0u);
  ExpectContents("after the failed write");
  Reopen();
  ExpectContents("after reopening");
  Put(off, patch);
  EXPECT_EQ(vol_->Stats().patch_writes, 1u);
  Settle(off, kBlockSize);
  ASSERT_TRUE(vol_->Flush().ok());
  Reopen();
  ExpectContents("after the patch");
}

TEST_P(FaultVolume, FailedFlushIsReportedAndNothingFlushedBeforeIsLost) {
  Populate();
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(Try(9 * kSlot + 100, Data(DataKind::kText, 50000)).ok());
  fault_->FailNth(FaultOp::kFlush, 1, EIO);
  Status st = vol_->Flush();
  EXPECT_EQ(st.code(), Status::Code::kIOError) << st.ToString();
  EXPECT_EQ(st.err(), EIO);
  if (vol_->Flush().ok()) Settle(9 * kSlot + 100, 50000);
  Reopen();
  ExpectContents("after reopening");
}

// A drain whose flush fails stops the volume's writes: the write that
// drained gets the error, or, where the drainer thread drained, the next
// write does.  Nothing stored is lost, and the volume recovers at the next
// open.  In write-through mode every write commits, so the first drains;
// in write-back mode overwrites of committed raw data queue up behind
// undo records until the drainer takes them (later ones, made under the
// same epoch, without records of their own).
TEST_P(FaultVolume, FailedDrainFailsTheWriteAndLosesNothingStored) {
  Populate();
  ASSERT_FALSE(HasFatalFailure());
  const uint64_t off = 4 * kSlot + 3 * kBlockSize;  // inside the raw extent
  fault_->FailNth(FaultOp::kFlush, 1, EIO);
  Status st;
  int writes = 0;
  std::vector<uint8_t> last, failed;  // the last write that succeeded, the one that failed
  while (writes < 2000) {
    std::vector<uint8_t> data = Data(DataKind::kRandom, kBlockSize);
    st = vol_->Write(off, data.data(), data.size(), false);
    ++writes;
    if (!st.ok()) {
      failed = std::move(data);
      break;
    }
    last = std::move(data);
  }
  EXPECT_EQ(st.err(), EIO) << st.ToString() << " after " << writes << " writes";
  EXPECT_EQ(fault_->faults(), 1u);
  const std::vector<uint8_t> again = Data(DataKind::kRandom, kBlockSize);
  EXPECT_FALSE(vol_->Write(0, again.data(), again.size(), false).ok());
  // The block holds the last acknowledged overwrite (never flushed) or the
  // failed one while the volume is open, and after a crash that or its
  // stored content.
  std::vector<uint8_t> got(kBlockSize);
  ASSERT_TRUE(vol_->Read(off, got.data(), got.size()).ok());
  if (GetParam() == format::MetaMode::kWriteThrough) {
    EXPECT_EQ(writes, 1);
  } else {
    EXPECT_GT(writes, 1);
  }
  EXPECT_TRUE(got == last || got == failed);
  Pending(off, got);
  ExpectContents("after the failed drain");
  Reopen();
  ExpectContents("after reopening");
}

// Write-back mode writes metadata at FLUSH: a metadata write that fails
// fails the flush.  Whatever a later flush reports durable is, even
// without a clean close.
// A commit that fails (a metadata page write in write-back mode, the flush
// before the page writes in write-through mode, where every write commits)
// is reported to the caller, and the volume recovers at the next open.
TEST_P(FaultVolume, FailedCommitIsReportedAndRecovered) {
  Populate();
  ASSERT_FALSE(HasFatalFailure());
  if (GetParam() == format::MetaMode::kWriteBack) {
    ASSERT_TRUE(Try(10 * kSlot, Data(DataKind::kText, kSlot)).ok());
    fault_->FailNth(FaultOp::kWrite, 1, EIO);  // the first page write of the commit
    EXPECT_EQ(vol_->Flush().err(), EIO);
    if (vol_->Flush().ok()) Settle(10 * kSlot, kSlot);
  } else {
    fault_->FailNth(FaultOp::kFlush, 1, EIO);  // the commit's data flush
    EXPECT_EQ(Try(10 * kSlot, Data(DataKind::kText, kSlot)).err(), EIO);
  }
  // The device as it is while the volume is open: no clean close.
  const std::vector<uint8_t> open_state = mem_->contents();
  vol_.reset();
  mem_->contents() = open_state;
  Open(false);
  ASSERT_TRUE(vol_->was_unclean());
  ExpectContents("after the failed commit");
}

TEST_P(FaultVolume, FailedReadsReturnErrorsNeverGarbage) {
  Populate();
  ASSERT_FALSE(HasFatalFailure());
  std::vector<uint8_t> buf;
  // Ranges over compressed extents, the raw extent and small writes.
  for (int i = 0; i < 40; ++i) {
    const uint64_t len = 1 + rng_() % (2 * kSlot);
    const uint64_t off = rng_() % (5 * kSlot - len);
    buf.assign(len, 0xee);
    fault_->FailNth(FaultOp::kRead, 1 + rng_() % 2, EIO);
    Status st = vol_->Read(off, buf.data(), len);
    if (st.ok()) {
      // The request needed a single backing read, before the armed one.
      EXPECT_EQ(std::memcmp(buf.data(), reference_.data() + off, len), 0) << off << "+" << len;
    } else {
      EXPECT_EQ(st.code(), Status::Code::kIOError) << st.ToString();
      EXPECT_EQ(st.err(), EIO);
    }
    fault_->Heal();
    ASSERT_TRUE(vol_->Read(off, buf.data(), len).ok());
    EXPECT_EQ(std::memcmp(buf.data(), reference_.data() + off, len), 0) << off << "+" << len;
  }
  EXPECT_GT(vol_->Stats().read_errors, 0u);

  fault_->FailAll(EIO);
  buf.resize(kSlot);
  EXPECT_EQ(vol_->Read(0, buf.data(), kSlot).err(), EIO);
  EXPECT_FALSE(vol_->Write(0, buf.data(), 100, false).ok());
  EXPECT_EQ(vol_->Flush().err(), EIO);
  fault_->FailAll(0);
  ExpectContents("after the device recovered");
}

TEST_P(FaultVolume, TornWriteOfNewExtentsThenReopen) {
  Populate();
  ASSERT_FALSE(HasFatalFailure());
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    const uint64_t off = (5 + seed) * kSlot;
    fault_->TearNthWrite(1, seed);
    Status st = Try(off, Data(seed % 2 ? DataKind::kText : DataKind::kRandom, kSlot));
    EXPECT_EQ(st.err(), EIO) << st.ToString();
    ExpectContents("after the torn write, seed " + std::to_string(seed));
    Reopen();
    ExpectContents("after reopening, seed " + std::to_string(seed));
  }
}

TEST_P(FaultVolume, TornWriteInsideASharedExtentKeepsItsNeighbours) {
  Populate();
  ASSERT_FALSE(HasFatalFailure());
  // 100 bytes into block 5 of a 32-block compressed extent: the whole
  // extent is rewritten, and the tear hits that rewrite.
  const uint64_t off = 2 * kSlot + 5 * kBlockSize + 300;
  fault_->TearNthWrite(1, 3);
  Status st = Try(off, Data(DataKind::kRandom, 100));
  EXPECT_EQ(st.err(), EIO) << st.ToString();
  ExpectContents("after the torn write");
  Reopen();
  ExpectContents("after reopening");
}

// A backing discard only returns space: when it fails, nothing is lost.
TEST_P(FaultVolume, FailedBackingDiscardLosesNothing) {
  Populate();
  ASSERT_FALSE(HasFatalFailure());
  fault_->FailNth(FaultOp::kDiscard, 1, EIO);
  Pending(kSlot, std::vector<uint8_t>(2 * kSlot, 0));
  if (vol_->Discard(kSlot, 2 * kSlot).ok()) Settle(kSlot, 2 * kSlot);
  ExpectContents("after the trim");
  // Discard is advisory all the way down: its failure must not fail the
  // flush that follows.
  ASSERT_TRUE(vol_->Flush().ok());
  Reopen();
  ExpectContents("after reopening");
}

TEST_P(FaultVolume, OpenOnAFailingDeviceReportsAnError) {
  Populate();
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(vol_->Close().ok());
  vol_.reset();
  fault_->FailAll(EIO);
  OpenOptions o;
  o.log = [](const std::string&) {};
  Status st = InsituVolume::Open(std::make_unique<BorrowedDevice>(fault_.get()), o, &vol_);
  EXPECT_EQ(st.code(), Status::Code::kIOError) << st.ToString();
  fault_->FailAll(0);
  Open(false);
  ExpectContents("after the device recovered");
}

// Only write-back volumes queue overwrites for the drainer thread: in
// write-through mode every write's own commit drains.
class FaultVolumeWriteBack : public FaultVolume {};

// Past the queue's soft limit the drainer thread drains on its own.  When
// its flush fails, no writer sees the error at once, so the volume must
// stop taking writes (and FLUSH must fail), reads must still return every
// acknowledged overwrite, and the next open recovers: each overwrite then
// reads back old or new, and every other block as stored.
TEST_P(FaultVolumeWriteBack, FailedBackgroundDrainStopsWritesAndLosesNothingStored) {
  Populate();
  ASSERT_FALSE(HasFatalFailure());
  // Incompressible slots stay raw extents, whose overwrites are queued.
  for (uint64_t slot = 5; slot < 10; ++slot) Put(slot * kSlot, Data(DataKind::kRandom, kSlot));
  ASSERT_TRUE(vol_->Flush().ok());
  fault_->FailNth(FaultOp::kFlush, 1, EIO);
  // An 8 MiB device has a 1 MiB journal: the drainer starts at a quarter of
  // its ring (62 blocks) and writers drain themselves only at twice that.
  // The blocks are apart, so no write has to drain first.  Once the
  // drainer has failed, writes fail; until then they are acknowledged.
  std::vector<uint64_t> offsets;
  Status st;
  for (uint64_t i = 0; i < 100 && st.ok(); ++i) {
    const uint64_t off = 5 * kSlot + i * 2 * kBlockSize;
    st = Try(off, Data(DataKind::kRandom, kBlockSize));
    if (st.ok()) offsets.push_back(off);
  }
  ASSERT_GE(offsets.size(), 62u) << "a write failed before the queue reached its soft limit: "
                                 << st.ToString();
  const std::vector<uint8_t> same(reference_.begin(), reference_.begin() + kBlockSize);
  for (int i = 0; i < 500 && st.ok(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    st = vol_->Write(0, same.data(), same.size(), false);  // changes nothing if it lands
  }
  EXPECT_EQ(fault_->faults(), 1u);
  EXPECT_EQ(st.err(), EIO) << "writes still taken after the drainer's flush failed: "
                           << st.ToString();
  EXPECT_FALSE(vol_->Flush().ok());
  std::vector<uint8_t> buf(kBlockSize);
  for (uint64_t off : offsets) {
    ASSERT_TRUE(vol_->Read(off, buf.data(), kBlockSize).ok());
    EXPECT_EQ(std::memcmp(buf.data(), attempted_.data() + off, kBlockSize), 0)
        << "acknowledged overwrite at " << off << " not read back";
  }
  ExpectContents("after the failed background drain");
  Reopen();
  EXPECT_TRUE(vol_->was_unclean());
  ExpectContents("after reopening");
}

INSTANTIATE_TEST_SUITE_P(FaultModes, FaultVolumeWriteBack,
                         ::testing::Values(format::MetaMode::kWriteBack),
                         [](const ::testing::TestParamInfo<format::MetaMode>&) {
                           return std::string("WriteBack");
                         });

INSTANTIATE_TEST_SUITE_P(FaultModes, FaultVolume,
                         ::testing::Values(format::MetaMode::kWriteThrough,
                                           format::MetaMode::kWriteBack),
                         [](const ::testing::TestParamInfo<format::MetaMode>& info) {
                           return std::string(info.param == format::MetaMode::kWriteThrough
                                                  ? "WriteThrough"
                                                  : "WriteBack");
                         });

}  // namespace
}  // namespace insitu
