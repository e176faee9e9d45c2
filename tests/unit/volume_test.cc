// Targeted behaviour of the insitu volume: extent read/write/RMW, zero
// detection, discards passed down, payload verification, reopen.
#include "libcore/volume.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "libcore/file_device.h"
#include "libcore/mem_device.h"
#include "libcore/meta_bitmap.h"
#include "libcore/superblock.h"
#include "libcore/undo_journal.h"
#include "tests/unit/test_util.h"

namespace insitu {
namespace {

using format::kBlockSize;
using testing::BorrowedDevice;
using testing::DataKind;
using testing::FillData;

// Counts discards, flushes and bytes written that reach the backing device,
// and can hold a discard on cue (on_discard).
class CountingDevice : public BorrowedDevice {
 public:
  using BorrowedDevice::BorrowedDevice;
  Status Discard(uint64_t offset, uint64_t len) override {
    if (on_discard) on_discard(offset);
    discarded += len;
    return BorrowedDevice::Discard(offset, len);
  }
  Status Flush() override {
    ++flushes;
    return BorrowedDevice::Flush();
  }
  Status FlushRange(uint64_t offset, uint64_t len) override {
    ++flushes;
    return BorrowedDevice::FlushRange(offset, len);
  }
  Status Write(uint64_t offset, const void* buf, size_t len, bool fua) override {
    if (offset >= data_offset) {
      data_written += len;
      ++data_writes;
    }
    if (offset < meta_end) meta_written += len;
    if (fua) ++flushes;
    return BorrowedDevice::Write(offset, buf, len, fua);
  }
  std::atomic<uint64_t> discarded{0};
  std::atomic<uint64_t> flushes{0};
  std::atomic<uint64_t> data_written{0};  // bytes written at or after data_offset
  std::atomic<uint64_t> data_writes{0};   // and the writes that wrote them
  std::atomic<uint64_t> meta_written{0};  // bytes written before meta_end
  uint64_t data_offset = UINT64_MAX;
  uint64_t meta_end = 0;
  // Runs before each discard, with its offset, on its thread.
  std::function<void(uint64_t offset)> on_discard;
};

class VolumeTest : public ::testing::Test {
 protected:
  void Format(CodecSpec codec = {CodecId::kLz4, 0},
              format::MetaMode mode = format::MetaMode::kWriteThrough,
              uint32_t meta_interval_s = FormatOptions{}.meta_interval_s) {
    FormatOptions opts;
    opts.codec = codec;
    opts.meta_mode = mode;
    opts.meta_interval_s = meta_interval_s;
    ASSERT_TRUE(FormatVolume(&mem_, opts).ok());
  }
  void Open(bool read_only = false) {
    auto dev = std::make_unique<CountingDevice>(&mem_);
    counting_ = dev.get();
    OpenOptions opts;
    opts.read_only = read_only;
    opts.log = [this](const std::string& line) { log_.push_back(line); };
    Status st = InsituVolume::Open(std::move(dev), opts, &vol_);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  std::vector<uint8_t> ReadAll(uint64_t off, size_t len) {
    std::vector<uint8_t> out(len);
    Status st = vol_->Read(off, out.data(), len);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return out;
  }
  // The volume reads want from offset 0, and still does after a clean
  // close and a reopen.
  void ExpectReadsBackAcrossReopen(const std::vector<uint8_t>& want) {
    EXPECT_EQ(ReadAll(0, want.size()), want);
    ASSERT_TRUE(vol_->Close().ok());
    vol_.reset();
    Open();
    EXPECT_EQ(ReadAll(0, want.size()), want);
  }
  std::vector<uint8_t> Data(DataKind kind, size_t len, uint64_t seed = 1) {
    std::mt19937_64 rng(seed);
    std::vector<uint8_t> v(len);
    FillData(rng, kind, v.data(), len);
    return v;
  }
  void SetUp() override { Format(); }
  // A write-back lz4 volume (no timed commits) whose slot 0 holds one
  // committed 128 KiB extent of text; returns its contents.
  std::vector<uint8_t> CommittedTextSlot() {
    Format({CodecId::kLz4, 0}, format::MetaMode::kWriteBack, 3600);
    Open();
    std::vector<uint8_t> want = Data(DataKind::kText, 128 * 1024, 1);
    EXPECT_TRUE(vol_->Write(0, want.data(), want.size(), false).ok());
    EXPECT_TRUE(vol_->Flush().ok());
    return want;
  }

  MemDevice mem_{32 << 20};
  CountingDevice* counting_ = nullptr;
  std::unique_ptr<InsituVolume> vol_;
  std::vector<std::string> log_;
};

TEST_F(VolumeTest, FreshVolumeReadsZerosAndIsAllHoles) {
  Open();
  format::Superblock sb = vol_->superblock();
  EXPECT_EQ(vol_->Size(), sb.data_blocks * kBlockSize);
  auto data = ReadAll(12345, 100000);
  EXPECT_TRUE(std::all_of(data.begin(), data.end(), [](uint8_t b) { return b == 0; }));
  std::vector<AllocationRun> runs;
  ASSERT_TRUE(vol_->GetAllocation(0, vol_->Size(), &runs).ok());
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_TRUE(runs[0].hole && runs[0].zero);
  EXPECT_EQ(vol_->Stats().blocks_unwritten, sb.data_blocks);
}

TEST_F(VolumeTest, CompressibleExtentIsStoredCompressedAndReadsBack) {
  Open();
  auto text = Data(DataKind::kText, 128 * 1024);
  ASSERT_TRUE(vol_->Write(1 << 20, text.data(), text.size(), false).ok());
  EXPECT_EQ(ReadAll(1 << 20, text.size()), text);
  VolumeStats s = vol_->Stats();
  EXPECT_EQ(s.blocks_compressed, 32u);
  EXPECT_GT(s.compression_ratio(), 2.0);
  EXPECT_EQ(s.logical_bytes_written, text.size());
  EXPECT_LT(s.payload_bytes_written, text.size() / 2);
  std::vector<AllocationRun> runs;
  ASSERT_TRUE(vol_->GetAllocation(1 << 20, 128 * 1024, &runs).ok());
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_FALSE(runs[0].hole);
}

TEST_F(VolumeTest, IncompressibleDataIsStoredRaw) {
  Open();
  auto rnd = Data(DataKind::kRandom, 64 * 1024);
  ASSERT_TRUE(vol_->Write(0, rnd.data(), rnd.size(), false).ok());
  EXPECT_EQ(vol_->Stats().blocks_raw, 16u);
  EXPECT_EQ(ReadAll(0, rnd.size()), rnd);
}

TEST_F(VolumeTest, PartialOverwriteOfExtentKeepsNeighbours) {
  Open();
  auto base = Data(DataKind::kText, 128 * 1024, 1);
  ASSERT_TRUE(vol_->Write(0, base.data(), base.size(), false).ok());
  // Overwrite 3 bytes in the middle of block 5 and a run of blocks 10-11.
  auto patch = Data(DataKind::kRandom, 3, 2);
  ASSERT_TRUE(vol_->Write(5 * kBlockSize + 1000, patch.data(), 3, false).ok());
  std::copy(patch.begin(), patch.end(), base.begin() + 5 * kBlockSize + 1000);
  auto run = Data(DataKind::kMixed, 2 * kBlockSize, 3);
  ASSERT_TRUE(vol_->Write(10 * kBlockSize, run.data(), run.size(), false).ok());
  std::copy(run.begin(), run.end(), base.begin() + 10 * kBlockSize);
  EXPECT_EQ(ReadAll(0, base.size()), base);
  // Unaligned reads across extent boundaries.
  auto all = ReadAll(0, base.size());
  for (size_t off : {1, 4095, 4097, 40000, 130000}) {
    auto part = ReadAll(off, 77);
    EXPECT_EQ(0, std::memcmp(part.data(), base.data() + off, 77)) << off;
  }
}

TEST_F(VolumeTest, WritesSpanningSlotsAndUnalignedEdges) {
  Open();
  std::vector<uint8_t> ref(4 << 20);
  std::mt19937_64 rng(11);
  for (int i = 0; i < 50; ++i) {
    const uint64_t off = rng() % (ref.size() - 1);
    const size_t len = 1 + rng() % std::min<uint64_t>(600000, ref.size() - off - 1);
    std::vector<uint8_t> buf(len);
    FillData(rng, DataKind::kMixed, buf.data(), len);
    ASSERT_TRUE(vol_->Write(off, buf.data(), len, false).ok());
    std::copy(buf.begin(), buf.end(), ref.begin() + off);
  }
  EXPECT_EQ(ReadAll(0, ref.size()), ref);
}

TEST_F(VolumeTest, ZeroBlocksAreUnwrittenAndReportedAsHoles) {
  Open();
  std::vector<uint8_t> buf(64 * 1024, 0);
  std::fill(buf.begin(), buf.begin() + 4096, 'x');
  ASSERT_TRUE(vol_->Write(0, buf.data(), buf.size(), false).ok());
  EXPECT_EQ(vol_->Stats().blocks_compressed, 1u);
  std::vector<AllocationRun> runs;
  ASSERT_TRUE(vol_->GetAllocation(0, 64 * 1024, &runs).ok());
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_FALSE(runs[0].hole);
  EXPECT_EQ(runs[0].length, 4096u);
  EXPECT_TRUE(runs[1].hole);
  EXPECT_EQ(ReadAll(0, buf.size()), buf);
}

// Zero-block detection stops at the first non-zero bytes: a block whose
// only non-zero byte sits anywhere (chunk edges, the very last byte) must
// still be stored, never turned into a hole.
TEST_F(VolumeTest, ABlockWithOneNonZeroByteAnywhereIsStored) {
  Open();
  const size_t positions[] = {0, 7, 63, 64, 100, 2047, 4032, 4095};
  std::vector<uint8_t> buf(16 * kBlockSize, 0);
  for (size_t i = 0; i < std::size(positions); ++i) buf[2 * i * kBlockSize + positions[i]] = 1;
  ASSERT_TRUE(vol_->Write(0, buf.data(), buf.size(), false).ok());
  const VolumeStats s = vol_->Stats();
  EXPECT_EQ(s.blocks_compressed + s.blocks_raw, std::size(positions));
  EXPECT_EQ(s.blocks_unwritten, vol_->superblock().data_blocks - std::size(positions));
  EXPECT_EQ(ReadAll(0, buf.size()), buf);
  std::vector<AllocationRun> runs;
  ASSERT_TRUE(vol_->GetAllocation(0, buf.size(), &runs).ok());
  ASSERT_EQ(runs.size(), 16u);
  for (size_t i = 0; i < runs.size(); ++i) EXPECT_EQ(runs[i].hole, i % 2 == 1) << "block " << i;
}

TEST_F(VolumeTest, TrimAndWriteZeroesFreeSpaceAndReadZeros) {
  Open();
  auto rnd = Data(DataKind::kRandom, 128 * 1024);
  ASSERT_TRUE(vol_->Write(0, rnd.data(), rnd.size(), false).ok());
  const uint64_t before = counting_->discarded;
  // Trim the middle of the raw extent: its other blocks survive.  The
  // space goes back to the device once the metadata on disk stops
  // referring to it: after the next commit.
  ASSERT_TRUE(vol_->Discard(8 * kBlockSize, 8 * kBlockSize).ok());
  EXPECT_EQ(counting_->discarded - before, 0u);
  ASSERT_TRUE(vol_->Flush().ok());
  EXPECT_EQ(counting_->discarded - before, 8 * kBlockSize);
  std::fill(rnd.begin() + 8 * kBlockSize, rnd.begin() + 16 * kBlockSize, 0);
  EXPECT_EQ(ReadAll(0, rnd.size()), rnd);
  // Unaligned write-zeroes zero exactly the range.
  ASSERT_TRUE(vol_->WriteZeroes(100, 5000, false).ok());
  std::fill(rnd.begin() + 100, rnd.begin() + 5100, 0);
  EXPECT_EQ(ReadAll(0, rnd.size()), rnd);
  const VolumeStats s = vol_->Stats();
  EXPECT_EQ(s.blocks_raw + s.blocks_compressed, 24u);
}

// A discard can wait long on the device (a file system mounted with -o
// discard trims synchronously).  Reads of the slot being discarded must not
// wait for it: the units it frees are ones no extent uses.
TEST_F(VolumeTest, ReadsOfASlotDoNotWaitForItsDiscard) {
  Open();
  auto rnd = Data(DataKind::kRandom, 128 * 1024);
  ASSERT_TRUE(vol_->Write(0, rnd.data(), rnd.size(), false).ok());
  ASSERT_TRUE(vol_->Discard(8 * kBlockSize, 8 * kBlockSize).ok());
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false, released = false;
  counting_->on_discard = [&](uint64_t) {
    std::unique_lock<std::mutex> lock(mu);
    entered = true;
    cv.notify_all();
    cv.wait(lock, [&] { return released; });
  };
  auto release = [&] {
    std::lock_guard<std::mutex> lock(mu);
    released = true;
    cv.notify_all();
  };
  std::thread flusher([&] { EXPECT_TRUE(vol_->Flush().ok()); });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return entered; });
  }
  std::atomic<bool> read_done{false};
  std::vector<uint8_t> got(8 * kBlockSize);
  std::thread reader([&] {
    EXPECT_TRUE(vol_->Read(0, got.data(), got.size()).ok());
    read_done = true;
  });
  // Not a timing assertion: the read either finishes while the discard is
  // held or never does; 20 s only bounds how long a broken build hangs.
  for (int i = 0; i < 2000 && !read_done; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(read_done) << "a read of the slot waited for its discard";
  release();
  reader.join();
  flusher.join();
  EXPECT_TRUE(std::equal(got.begin(), got.end(), rnd.begin()));
  EXPECT_EQ(counting_->discarded, 8 * kBlockSize);
}

// Without any FLUSH, the flusher gives freed space back to the device, in
// write-through mode too, one walk after the walk that first saw it (space
// freed by an overwrite is often taken again by the next one).
TEST_F(VolumeTest, FlusherReturnsFreedSpaceWithoutAFlush) {
  for (auto mode : {format::MetaMode::kWriteThrough, format::MetaMode::kWriteBack}) {
    SCOPED_TRACE(mode == format::MetaMode::kWriteBack ? "write-back" : "write-through");
    Format({CodecId::kLz4, 0}, mode, 1);
    Open();
    auto rnd = Data(DataKind::kRandom, 128 * 1024);
    ASSERT_TRUE(vol_->Write(0, rnd.data(), rnd.size(), false).ok());
    ASSERT_TRUE(vol_->Discard(8 * kBlockSize, 8 * kBlockSize).ok());
    // Two walks at least: 2 s.  20 s only bounds a broken build's wait.
    for (int i = 0; i < 200 && counting_->discarded < 8 * kBlockSize; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_EQ(counting_->discarded, 8 * kBlockSize);
    std::fill(rnd.begin() + 8 * kBlockSize, rnd.begin() + 16 * kBlockSize, 0);
    EXPECT_EQ(ReadAll(0, rnd.size()), rnd);
    ASSERT_TRUE(vol_->Close().ok());
  }
}

// A slot that keeps being overwritten keeps the units its overwrites free
// until it cools: the next overwrite takes them back anyway, and a punch
// costs the backing file a discard and then a fresh allocation.  Once the
// writes stop, a walk returns them.
TEST_F(VolumeTest, HotSlotsAreDiscardedOnlyOnceTheyCool) {
  Format({CodecId::kLz4, 0}, format::MetaMode::kWriteBack, 1);
  Open();
  const size_t len = 128 * 1024;
  // A commit (every second) protects the payload on disk, so the next
  // overwrite moves to the other end of the extent's place and frees the
  // old units.  One overwrite every 1.5 s frees units in some periods and
  // not in others, but in every two in a row: still hot.
  std::vector<uint8_t> last;
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    if (seed > 1) std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    last = Data(DataKind::kText, len, seed);
    ASSERT_TRUE(vol_->Write(0, last.data(), len, false).ok());
  }
  EXPECT_EQ(counting_->discarded, 0u) << "a slot was discarded while it was being overwritten";
  // Three walks: 3 s.  10 s only bounds a broken build's wait.
  for (int i = 0; i < 100 && counting_->discarded == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_GT(counting_->discarded, 0u);
  EXPECT_EQ(ReadAll(0, len), last);
}

TEST_F(VolumeTest, RecompressingShrinksPayloadAndPunchesTail) {
  Open();
  auto rnd = Data(DataKind::kRandom, 128 * 1024);
  ASSERT_TRUE(vol_->Write(0, rnd.data(), rnd.size(), false).ok());
  const uint64_t before = counting_->discarded;
  auto text = Data(DataKind::kText, 128 * 1024);
  ASSERT_TRUE(vol_->Write(0, text.data(), text.size(), false).ok());
  ASSERT_TRUE(vol_->Flush().ok());
  const VolumeStats s = vol_->Stats();
  const uint64_t used = (s.payload_sectors + 7) / 8;
  EXPECT_EQ(counting_->discarded - before, (32 - used) * kBlockSize);
}

// An overwrite of a committed compressed extent goes to the free back (or
// front) of its place, beside the payload the on-disk metadata describes,
// so it needs no undo record; a raw overwrite still does.
TEST_F(VolumeTest, CommittedExtentIsOverwrittenBesideItselfWithoutUndo) {
  Format({CodecId::kLz4, 0}, format::MetaMode::kWriteBack);
  Open();
  const size_t len = 128 * 1024;
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    auto text = Data(DataKind::kText, len, seed);
    ASSERT_TRUE(vol_->Write(0, text.data(), len, false).ok());
    ASSERT_TRUE(vol_->Flush().ok());
    EXPECT_EQ(ReadAll(0, len), text);
    std::vector<ExtentInfo> map;
    vol_->ForEachExtent([&](const ExtentInfo& e) {
      if (e.head_block == 0) map.push_back(e);
    });
    ASSERT_EQ(map.size(), 1u);
    EXPECT_EQ(map[0].kind, ExtentInfo::Kind::kCompressed);
    // Fresh space first, then alternately the back and the front.
    EXPECT_EQ(map[0].payload_start, seed % 2 == 1 ? 0 : 256 - map[0].payload_sectors) << seed;
  }
  EXPECT_EQ(vol_->Stats().undo_records, 0u);
  // The old payloads' units were discarded after the commits that freed them.
  EXPECT_GT(counting_->discarded, 0u);
  auto rnd = Data(DataKind::kRandom, len, 9);
  ASSERT_TRUE(vol_->Write(0, rnd.data(), len, false).ok());
  EXPECT_EQ(vol_->Stats().undo_records, 1u);
  ExpectReadsBackAcrossReopen(rnd);
}

// The extents of slot 0 (blocks 0-31) as (head block, blocks) pairs.
std::vector<std::pair<uint64_t, uint32_t>> SlotLayout(InsituVolume& vol) {
  std::vector<std::pair<uint64_t, uint32_t>> out;
  vol.ForEachExtent([&](const ExtentInfo& e) {
    if (e.head_block < 32) out.emplace_back(e.head_block, e.nblocks);
  });
  return out;
}

// The extent of slot 0 holding block b.
ExtentInfo ExtentAt(InsituVolume& vol, uint64_t b) {
  ExtentInfo out;
  vol.ForEachExtent([&](const ExtentInfo& e) {
    if (e.head_block <= b && b < e.head_block + e.nblocks) out = e;
  });
  return out;
}

// Slot 0 as n-block pieces, except `merged` (head, blocks), which is one.
std::vector<std::pair<uint64_t, uint32_t>> Pieces(uint32_t n,
                                                  std::pair<uint64_t, uint32_t> merged) {
  std::vector<std::pair<uint64_t, uint32_t>> out;
  for (uint32_t b = 0; b < 32;) {
    const uint32_t len = b == merged.first ? merged.second : n;
    out.emplace_back(b, len);
    b += len;
  }
  return out;
}

// A small write into a large compressed extent cuts it into the slot's
// aligned smallest pieces, so that the next small write there rewrites
// only its piece (not the whole 128 KiB extent), beside the piece's
// payload and with no undo record, and a write covering pieces merges
// them again.
TEST_F(VolumeTest, SmallWriteIntoLargeCompressedExtentCutsItIntoSmallestPieces) {
  Format({CodecId::kLz4, 0}, format::MetaMode::kWriteBack);
  Open();
  const size_t len = 128 * 1024;
  std::vector<uint8_t> want = Data(DataKind::kText, len, 1);
  ASSERT_TRUE(vol_->Write(0, want.data(), len, false).ok());
  ASSERT_TRUE(vol_->Flush().ok());
  using Layout = std::vector<std::pair<uint64_t, uint32_t>>;
  EXPECT_EQ(SlotLayout(*vol_), (Layout{{0, 32}}));

  // Block 5, where the payload lies (a write beside it would patch the
  // block instead): text compresses far better than 2:1, so the smallest
  // piece is 2 blocks; block 5 and block 4 stay together.
  auto a = Data(DataKind::kText, kBlockSize, 2);
  ASSERT_TRUE(vol_->Write(5 * kBlockSize, a.data(), a.size(), false).ok());
  std::memcpy(want.data() + 5 * kBlockSize, a.data(), a.size());
  EXPECT_EQ(SlotLayout(*vol_), Pieces(2, {4, 2}));
  EXPECT_EQ(ReadAll(0, len), want);
  ASSERT_TRUE(vol_->Flush().ok());

  // The next small writes in a piece, into its payload's block (4) and
  // beside it (7, which is not patched: that would take the room the
  // next rewrite of the piece needs), rewrite only the piece, beside its
  // committed payload.
  counting_->data_offset = vol_->superblock().data_offset;
  counting_->data_written = 0;
  const uint64_t undo_before = vol_->Stats().undo_records;
  auto b = Data(DataKind::kText, 100, 3);
  ASSERT_TRUE(vol_->Write(4 * kBlockSize + 50, b.data(), b.size(), false).ok());
  std::memcpy(want.data() + 4 * kBlockSize + 50, b.data(), b.size());
  ASSERT_TRUE(vol_->Write(7 * kBlockSize + 50, b.data(), b.size(), false).ok());
  std::memcpy(want.data() + 7 * kBlockSize + 50, b.data(), b.size());
  EXPECT_EQ(SlotLayout(*vol_), Pieces(2, {4, 2}));
  EXPECT_LE(counting_->data_written, 2 * 2 * kBlockSize);
  EXPECT_EQ(vol_->Stats().undo_records, undo_before);
  EXPECT_EQ(vol_->Stats().patch_writes, 0u);
  EXPECT_EQ(ExtentAt(*vol_, 7).patched, 0u);
  EXPECT_EQ(ReadAll(0, len), want);

  // A write of a whole 64 KiB half merges its pieces.
  std::vector<uint8_t> half = Data(DataKind::kText, len / 2, 4);
  ASSERT_TRUE(vol_->Write(0, half.data(), half.size(), false).ok());
  std::memcpy(want.data(), half.data(), half.size());
  EXPECT_EQ(SlotLayout(*vol_), Pieces(2, {0, 16}));
  ExpectReadsBackAcrossReopen(want);
}

// The pieces of a cut pair up where either end of their places would do
// as well: the first's payload at the back, the next one's at the front,
// so that the two reach the device in one write (and, where they land on
// the old payload, in one undo record).
TEST_F(VolumeTest, ACutWritesItsPiecesInPairs) {
  std::vector<uint8_t> want = CommittedTextSlot();
  counting_->data_offset = vol_->superblock().data_offset;
  counting_->data_writes = 0;
  auto a = Data(DataKind::kText, kBlockSize, 2);
  ASSERT_TRUE(vol_->Write(5 * kBlockSize, a.data(), a.size(), false).ok());
  std::memcpy(want.data() + 5 * kBlockSize, a.data(), a.size());
  ASSERT_EQ(SlotLayout(*vol_), Pieces(2, {4, 2}));
  for (uint64_t b = 0; b < 32; b += 2) {
    EXPECT_EQ(ExtentAt(*vol_, b).payload_start != 0, b % 4 == 0) << "piece at block " << b;
  }
  ASSERT_TRUE(vol_->Flush().ok());  // writes the overwrites queued behind undo records
  EXPECT_EQ(counting_->data_writes, 8u);
  ExpectReadsBackAcrossReopen(want);
}

// Rewrites of a piece before the overwrites of its cut are drained land on
// sectors the cut's undo record already saved, under the same protection:
// they save nothing again and do not drain first (no flush).
TEST_F(VolumeTest, RewritesOfAFreshPieceReuseTheCutsUndoRecord) {
  std::vector<uint8_t> want = CommittedTextSlot();
  auto a = Data(DataKind::kText, kBlockSize, 2);
  ASSERT_TRUE(vol_->Write(5 * kBlockSize, a.data(), a.size(), false).ok());
  std::memcpy(want.data() + 5 * kBlockSize, a.data(), a.size());
  ASSERT_EQ(SlotLayout(*vol_), Pieces(2, {4, 2}));
  const uint64_t flushes = counting_->flushes;
  const uint64_t undo = vol_->Stats().undo_records;
  ASSERT_GT(undo, 0u);
  // The piece's payload goes back and forth between its two blocks, both
  // over the old payload: the first rewrite saves the block the cut did
  // not write, the later ones nothing.
  for (uint64_t i = 0; i < 6; ++i) {
    auto b = Data(DataKind::kText, kBlockSize, 10 + i);
    ASSERT_TRUE(vol_->Write(5 * kBlockSize, b.data(), b.size(), false).ok());
    std::memcpy(want.data() + 5 * kBlockSize, b.data(), b.size());
    EXPECT_EQ(ReadAll(0, want.size()), want) << "rewrite " << i;
  }
  EXPECT_EQ(SlotLayout(*vol_), Pieces(2, {4, 2}));
  EXPECT_EQ(counting_->flushes, flushes) << "no drain";
  EXPECT_LE(vol_->Stats().undo_records, undo + 1);
  ExpectReadsBackAcrossReopen(want);
}

// A small write beside a compressed extent's payload patches its blocks:
// it writes only them, raw at their places, saves nothing in the undo
// journal, and leaves the extent and its payload as they are.  A write
// into a patched block the metadata on disk describes, or into the
// payload, rewrites the extent (patches included) in pieces as usual.
TEST_F(VolumeTest, SmallWriteBesideThePayloadPatchesOnlyItsBlocks) {
  std::vector<uint8_t> want = CommittedTextSlot();
  const size_t len = want.size();
  const ExtentInfo whole = ExtentAt(*vol_, 0);
  ASSERT_EQ(whole.nblocks, 32u);
  ASSERT_LT(whole.payload_sectors, 20 * format::kSectorsPerBlock)
      << "text compresses 1.6:1 or better";

  counting_->data_offset = vol_->superblock().data_offset;
  counting_->data_written = 0;
  auto a = Data(DataKind::kText, kBlockSize, 2);
  ASSERT_TRUE(vol_->Write(20 * kBlockSize, a.data(), a.size(), false).ok());
  std::memcpy(want.data() + 20 * kBlockSize, a.data(), a.size());
  // Unaligned, across blocks 21 and 22: their old bytes around it are kept.
  auto b = Data(DataKind::kText, kBlockSize, 3);
  ASSERT_TRUE(vol_->Write(21 * kBlockSize + 100, b.data(), b.size(), false).ok());
  std::memcpy(want.data() + 21 * kBlockSize + 100, b.data(), b.size());
  ExtentInfo e = ExtentAt(*vol_, 0);
  EXPECT_EQ(e.nblocks, 32u);
  EXPECT_EQ(e.payload_sectors, whole.payload_sectors);
  EXPECT_EQ(e.patched, 0b111u << 20);
  EXPECT_EQ(counting_->data_written, 3 * kBlockSize);
  EXPECT_EQ(vol_->Stats().patch_writes, 2u);
  EXPECT_EQ(vol_->Stats().blocks_patched, 3u);
  EXPECT_EQ(vol_->Stats().undo_records, 0u);
  EXPECT_EQ(ReadAll(0, len), want);
  // Reads of the patched blocks alone, and across patched and unpatched.
  EXPECT_EQ(ReadAll(21 * kBlockSize, 2 * kBlockSize),
            std::vector<uint8_t>(want.begin() + 21 * kBlockSize, want.begin() + 23 * kBlockSize));
  EXPECT_EQ(
      ReadAll(19 * kBlockSize + 7, 3 * kBlockSize),
      std::vector<uint8_t>(want.begin() + 19 * kBlockSize + 7, want.begin() + 22 * kBlockSize + 7));

  // Not committed yet: block 20 is patched again in place.
  ASSERT_TRUE(vol_->Write(20 * kBlockSize, b.data(), b.size(), false).ok());
  std::memcpy(want.data() + 20 * kBlockSize, b.data(), b.size());
  EXPECT_EQ(vol_->Stats().patch_writes, 3u);
  EXPECT_EQ(vol_->Stats().blocks_patched, 3u);
  // The patches are in the metadata on disk, and counted again on open.
  ExpectReadsBackAcrossReopen(want);
  EXPECT_EQ(vol_->Stats().blocks_patched, 3u);
  EXPECT_EQ(ExtentAt(*vol_, 0).patched, 0b111u << 20);

  // Committed: the metadata on disk describes the patch, so a write there
  // cuts the extent instead, and the patches go into the pieces.
  ASSERT_TRUE(vol_->Write(22 * kBlockSize, a.data(), a.size(), false).ok());
  std::memcpy(want.data() + 22 * kBlockSize, a.data(), a.size());
  EXPECT_EQ(vol_->Stats().patch_writes, 0u);
  EXPECT_EQ(vol_->Stats().blocks_patched, 0u);
  EXPECT_LT(ExtentAt(*vol_, 22).nblocks, 32u);
  EXPECT_EQ(ExtentAt(*vol_, 22).patched, 0u);
  EXPECT_EQ(ReadAll(0, len), want);

  // A block that the write turns to zeros is unmapped, not patched.
  const std::vector<uint8_t> zeros(kBlockSize, 0);
  ASSERT_TRUE(vol_->Write(30 * kBlockSize, zeros.data(), zeros.size(), false).ok());
  std::memcpy(want.data() + 30 * kBlockSize, zeros.data(), zeros.size());
  EXPECT_EQ(vol_->Stats().patch_writes, 0u);
  EXPECT_EQ(ExtentAt(*vol_, 30).kind, ExtentInfo::Kind::kUnwritten);
  ExpectReadsBackAcrossReopen(want);
}

// A volume formatted before patched blocks (incompat bit 1 clear) is
// rewritten in pieces, never patched: older readers could not read it.
TEST_F(VolumeTest, NoPatchesOnAVolumeWithoutTheFeature) {
  Format({CodecId::kLz4, 0}, format::MetaMode::kWriteBack);
  format::Superblock sb;
  SuperblockSource source;
  std::string primary_error;
  ASSERT_TRUE(ReadSuperblock(&mem_, &sb, &source, &primary_error).ok());
  sb.incompat &= ~format::kIncompatPatchedBlocks;
  ASSERT_TRUE(WriteSuperblocks(&mem_, &sb).ok());
  Open();
  const size_t len = 128 * 1024;
  std::vector<uint8_t> want = Data(DataKind::kText, len, 1);
  ASSERT_TRUE(vol_->Write(0, want.data(), len, false).ok());
  auto a = Data(DataKind::kText, kBlockSize, 2);
  ASSERT_TRUE(vol_->Write(20 * kBlockSize, a.data(), a.size(), false).ok());
  std::memcpy(want.data() + 20 * kBlockSize, a.data(), a.size());
  EXPECT_EQ(vol_->Stats().patch_writes, 0u);
  EXPECT_LT(ExtentAt(*vol_, 20).nblocks, 32u);
  ExpectReadsBackAcrossReopen(want);
}

// The first cut of a committed extent overwrites the old payload where
// the pieces' payloads land, not in the gaps between them: the undo
// records save those sectors only, one record per run of them.
TEST_F(VolumeTest, ACutSavesOnlyTheSectorsItsPiecesOverwrite) {
  std::vector<uint8_t> want = CommittedTextSlot();
  uint32_t old_sectors = 0;
  vol_->ForEachExtent([&](const ExtentInfo& e) {
    if (e.head_block == 0) old_sectors = e.payload_start == 0 ? e.payload_sectors : 0;
  });
  ASSERT_GT(old_sectors, 0u) << "the first payload is at the front of its place";

  // Nothing but undo records is written before the data area until the
  // next commit (an hour away).
  counting_->meta_end = vol_->superblock().data_offset;
  counting_->meta_written = 0;
  auto a = Data(DataKind::kText, kBlockSize, 2);
  ASSERT_TRUE(vol_->Write(5 * kBlockSize, a.data(), a.size(), false).ok());
  std::memcpy(want.data() + 5 * kBlockSize, a.data(), a.size());

  // The old payload's sectors that the pieces' payloads overwrite.
  std::vector<bool> hit(old_sectors, false);
  vol_->ForEachExtent([&](const ExtentInfo& e) {
    if (e.head_block >= 32 || e.kind == ExtentInfo::Kind::kUnwritten) return;
    const uint64_t start = e.head_block * format::kSectorsPerBlock + e.payload_start;
    for (uint64_t s = start; s < start + e.payload_sectors && s < old_sectors; ++s) hit[s] = true;
  });
  const auto hits = static_cast<uint64_t>(std::count(hit.begin(), hit.end(), true));
  const auto first = static_cast<uint64_t>(std::find(hit.begin(), hit.end(), true) - hit.begin());
  const auto last = old_sectors - 1 -
                    static_cast<uint64_t>(std::find(hit.rbegin(), hit.rend(), true) - hit.rbegin());
  ASSERT_GT(hits, 0u);
  ASSERT_LT(hits, last + 1 - first) << "the pieces' payloads leave gaps in the old one";

  // Each record is a header sector and its saved sectors; runs one sector
  // apart may share a record, which then saves that sector too.
  const uint64_t records = vol_->Stats().undo_records;
  EXPECT_GE(records, 2u);
  EXPECT_GE(counting_->meta_written, (hits + records) * format::kSectorSize);
  EXPECT_LE(counting_->meta_written, (hits + 2 * records - 1) * format::kSectorSize);
  EXPECT_LT(counting_->meta_written, (last + 1 - first + 1) * format::kSectorSize)
      << "less than one record of the whole span";
  ExpectReadsBackAcrossReopen(want);
}

// 128 KiB whose zstd:1 payload spills a few bytes into its last 4 KiB unit
// and whose zstd:3 payload fits in one unit fewer: a random prefix (which
// no level compresses) of a length that puts the spill there, then text.
// *units: the units zstd:1 takes.
std::vector<uint8_t> SpillingExtent(size_t* units) {
  std::unique_ptr<Codec> fast, tight;
  EXPECT_TRUE(Codec::Create({CodecId::kZstd, 1}, &fast).ok());
  EXPECT_TRUE(Codec::Create({CodecId::kZstd, 3}, &tight).ok());
  const size_t n = 128 * 1024, trailer = sizeof(format::PayloadTrailer);
  std::mt19937_64 rng(11);
  std::vector<uint8_t> data(n);
  FillData(rng, DataKind::kText, data.data(), n);
  std::vector<uint8_t> random(n), out(2 * n);
  FillData(rng, DataKind::kRandom, random.data(), n);
  for (size_t prefix = 8192; prefix < 32768; prefix += 8) {
    std::memcpy(data.data(), random.data(), prefix);
    const size_t clen = fast->Compress(data.data(), n, out.data(), out.size());
    const size_t u = (clen + trailer + kBlockSize - 1) / kBlockSize;
    const size_t spill = clen + trailer - (u - 1) * kBlockSize;
    if (spill > 256) continue;
    const size_t tlen = tight->Compress(data.data(), n, out.data(), out.size());
    if (tlen + trailer <= (u - 1) * kBlockSize) {
      *units = u;
      return data;
    }
  }
  ADD_FAILURE() << "no spilling extent found";
  return data;
}

// A payload that spills a little into its last unit is compressed again at
// the codec's tighter level and stored in a unit fewer; it reads back as
// written, also after a reopen.  OpenOptions::fit_units turns it off.
TEST_F(VolumeTest, PayloadsSpillingIntoALastUnitAreRefitted) {
  size_t units = 0;
  const std::vector<uint8_t> want = SpillingExtent(&units);
  ASSERT_GE(units, 2u);
  for (bool fit : {true, false}) {
    SCOPED_TRACE(fit ? "fit_units" : "no fit_units");
    vol_.reset();
    Format({CodecId::kZstd, 1}, format::MetaMode::kWriteBack);
    OpenOptions opts;
    opts.fit_units = fit;
    ASSERT_TRUE(InsituVolume::Open(std::make_unique<BorrowedDevice>(&mem_), opts, &vol_).ok());
    ASSERT_TRUE(vol_->Write(0, want.data(), want.size(), false).ok());
    const VolumeStats stats = vol_->Stats();
    EXPECT_EQ(stats.refits, fit ? 1u : 0u);
    EXPECT_EQ(stats.refit_units_saved, fit ? 1u : 0u);
    const uint64_t stored_units =
        (stats.payload_sectors + format::kSectorsPerBlock - 1) / format::kSectorsPerBlock;
    EXPECT_EQ(stored_units, fit ? units - 1 : units);
    ExpectReadsBackAcrossReopen(want);
  }
}

// With OpenOptions::split_extents off, a small write rewrites the extent
// whole.
TEST_F(VolumeTest, SplittingCanBeTurnedOff) {
  Format({CodecId::kLz4, 0}, format::MetaMode::kWriteBack);
  auto dev = std::make_unique<CountingDevice>(&mem_);
  OpenOptions opts;
  opts.split_extents = false;
  ASSERT_TRUE(InsituVolume::Open(std::move(dev), opts, &vol_).ok());
  const size_t len = 128 * 1024;
  std::vector<uint8_t> want = Data(DataKind::kText, len, 1);
  ASSERT_TRUE(vol_->Write(0, want.data(), len, false).ok());
  auto a = Data(DataKind::kText, kBlockSize, 2);
  ASSERT_TRUE(vol_->Write(13 * kBlockSize, a.data(), a.size(), false).ok());
  std::memcpy(want.data() + 13 * kBlockSize, a.data(), a.size());
  using Layout = std::vector<std::pair<uint64_t, uint32_t>>;
  EXPECT_EQ(SlotLayout(*vol_), (Layout{{0, 32}}));
  EXPECT_EQ(ReadAll(0, len), want);
}

// Pieces of data that compresses poorly would not free a 4 KiB unit each,
// so such an extent is rewritten whole, as are raw extents.
TEST_F(VolumeTest, PoorlyCompressingAndRawExtentsAreNotSplit) {
  Format({CodecId::kLz4, 0}, format::MetaMode::kWriteBack);
  Open();
  const size_t len = 128 * 1024;
  // Each block: 7/8 random bytes, then zeros (about 0.88 of its size).
  std::vector<uint8_t> poor = Data(DataKind::kRandom, len, 1);
  for (size_t off = 0; off < len; off += kBlockSize) {
    std::memset(poor.data() + off + kBlockSize * 7 / 8, 0, kBlockSize / 8);
  }
  std::vector<uint8_t> raw = Data(DataKind::kRandom, len, 2);
  ASSERT_TRUE(vol_->Write(0, poor.data(), len, false).ok());
  ASSERT_TRUE(vol_->Write(len, raw.data(), len, false).ok());
  ASSERT_TRUE(vol_->Flush().ok());
  std::vector<ExtentInfo> map;
  vol_->ForEachExtent([&](const ExtentInfo& e) { map.push_back(e); });
  ASSERT_GE(map.size(), 2u);
  ASSERT_EQ(map[0].kind, ExtentInfo::Kind::kCompressed);
  ASSERT_EQ(map[1].kind, ExtentInfo::Kind::kRaw);

  auto a = Data(DataKind::kText, kBlockSize, 3);
  ASSERT_TRUE(vol_->Write(13 * kBlockSize, a.data(), a.size(), false).ok());
  ASSERT_TRUE(vol_->Write(len + 13 * kBlockSize, a.data(), a.size(), false).ok());
  std::memcpy(poor.data() + 13 * kBlockSize, a.data(), a.size());
  std::memcpy(raw.data() + 13 * kBlockSize, a.data(), a.size());
  map.clear();
  vol_->ForEachExtent([&](const ExtentInfo& e) { map.push_back(e); });
  ASSERT_GE(map.size(), 2u);
  EXPECT_EQ(map[0].head_block, 0u);
  EXPECT_EQ(map[0].nblocks, 32u);
  EXPECT_EQ(map[1].head_block, 32u);
  EXPECT_EQ(map[1].nblocks, 32u);
  EXPECT_EQ(ReadAll(0, len), poor);
  EXPECT_EQ(ReadAll(len, len), raw);
}

// A volume formatted without the back-payload feature is never given one.
TEST_F(VolumeTest, VolumeWithoutBackPayloadFeatureUndoLogsOverwrites) {
  Format({CodecId::kLz4, 0}, format::MetaMode::kWriteBack);
  format::Superblock sb;
  SuperblockSource source;
  ASSERT_TRUE(ReadSuperblock(&mem_, &sb, &source, nullptr).ok());
  sb.incompat = 0;
  ASSERT_TRUE(WriteSuperblocks(&mem_, &sb).ok());
  Open();
  auto a = Data(DataKind::kText, 4096, 1), b = Data(DataKind::kText, 4096, 2);
  ASSERT_TRUE(vol_->Write(0, a.data(), a.size(), false).ok());
  ASSERT_TRUE(vol_->Flush().ok());
  ASSERT_TRUE(vol_->Write(0, b.data(), b.size(), false).ok());
  EXPECT_EQ(vol_->Stats().undo_records, 1u);
  EXPECT_EQ(ReadAll(0, b.size()), b);
}

// Write-back overwrites of committed raw data (codec none) need undo
// records, but no flush each: the overwrites wait in memory, read back at
// once, and a flush writes the records, flushes, then writes only the
// blocks that changed.
TEST_F(VolumeTest, RawOverwritesWaitForOneFlushAndWriteOnlyTheirBlocks) {
  Format({CodecId::kNone, 0}, format::MetaMode::kWriteBack);
  Open();
  const size_t len = 128 * 1024;
  std::vector<uint8_t> want = Data(DataKind::kRandom, 2 * len, 1);
  ASSERT_TRUE(vol_->Write(0, want.data(), want.size(), false).ok());
  ASSERT_TRUE(vol_->Flush().ok());
  counting_->data_offset = vol_->superblock().data_offset;
  counting_->flushes = 0;
  counting_->data_written = 0;

  // Distinct blocks: a second overwrite of queued bytes drains first.
  uint64_t changed_blocks = 0;
  for (uint64_t i = 0; i < 20; ++i) {
    const uint64_t off = i == 19 ? len - 100 : i * 7 % (2 * len / kBlockSize) * kBlockSize;
    const size_t n = i == 19 ? 200 : kBlockSize;  // the last one straddles two extents
    auto bytes = Data(DataKind::kRandom, n, 100 + i);
    ASSERT_TRUE(vol_->Write(off, bytes.data(), n, false).ok());
    std::memcpy(want.data() + off, bytes.data(), n);
    changed_blocks += (off + n - 1) / kBlockSize - off / kBlockSize + 1;
    ASSERT_EQ(ReadAll(0, want.size()), want) << "after write " << i;
  }
  EXPECT_EQ(counting_->flushes, 0u);
  EXPECT_EQ(counting_->data_written, 0u);  // only undo records so far
  EXPECT_GE(vol_->Stats().undo_records, 20u);

  ASSERT_TRUE(vol_->Flush().ok());
  EXPECT_GE(counting_->flushes, 2u);
  EXPECT_LE(counting_->data_written, changed_blocks * kBlockSize);
  EXPECT_GT(counting_->data_written, 0u);
  ExpectReadsBackAcrossReopen(want);
}

// Past the queue's soft limit the drainer thread writes the deferred
// overwrites out, without a FLUSH and without the writers waiting for it.
TEST_F(VolumeTest, DrainerWritesDeferredOverwritesPastTheSoftLimit) {
  Format({CodecId::kNone, 0}, format::MetaMode::kWriteBack);
  Open();
  const size_t len = 1 << 20;
  std::vector<uint8_t> want = Data(DataKind::kRandom, len, 1);
  ASSERT_TRUE(vol_->Write(0, want.data(), want.size(), false).ok());
  ASSERT_TRUE(vol_->Flush().ok());
  counting_->data_offset = vol_->superblock().data_offset;
  counting_->data_written = 0;
  // This device's 1 MiB journal drains at a quarter of its ring: 100
  // overwritten blocks are over that and under twice it.
  for (uint64_t i = 0; i < 100; ++i) {
    const uint64_t off = i * 2 * kBlockSize;
    auto bytes = Data(DataKind::kRandom, kBlockSize, 100 + i);
    ASSERT_TRUE(vol_->Write(off, bytes.data(), kBlockSize, false).ok());
    std::memcpy(want.data() + off, bytes.data(), kBlockSize);
  }
  for (int i = 0; i < 200 && counting_->data_written == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GT(counting_->data_written, 0u);
  ExpectReadsBackAcrossReopen(want);
}

// Once the undo records since the last commit fill half the journal, the
// flusher commits at once (freeing that half) instead of at its next tick,
// so writers do not stop to commit when the ring is full.
TEST_F(VolumeTest, HalfFullJournalStartsACommit) {
  Format({CodecId::kNone, 0}, format::MetaMode::kWriteBack, 3600);  // no tick in the test
  Open();
  const size_t len = 2 << 20;
  std::vector<uint8_t> want = Data(DataKind::kRandom, len, 1);
  ASSERT_TRUE(vol_->Write(0, want.data(), want.size(), false).ok());
  ASSERT_TRUE(vol_->Flush().ok());
  const format::Superblock& sb = vol_->superblock();
  counting_->meta_end = sb.journal_offset;
  const uint64_t ring = sb.journal_bytes - format::kJournalHeaderSlots * kBlockSize;
  // Overwrites of committed raw blocks take a record each: enough records
  // for more than half the ring, and too few to fill it.
  const uint64_t blocks = ring / 2 / UndoJournal::RecordBytes(format::kSectorsPerBlock) + 8;
  ASSERT_LT(blocks * UndoJournal::RecordBytes(format::kSectorsPerBlock), ring);
  for (uint64_t i = 0; i < blocks; ++i) {
    const uint64_t off = i * kBlockSize;
    auto bytes = Data(DataKind::kRandom, kBlockSize, 100 + i);
    ASSERT_TRUE(vol_->Write(off, bytes.data(), kBlockSize, false).ok());
    std::memcpy(want.data() + off, bytes.data(), kBlockSize);
  }
  EXPECT_GE(vol_->Stats().undo_records, blocks);
  for (int i = 0; i < 1000 && counting_->meta_written == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GT(counting_->meta_written, 0u) << "no commit before the ring was full";
  ExpectReadsBackAcrossReopen(want);
}

// A discard walk can take seconds (each punch may wait for the device); a
// commit wanted meanwhile (a half-full journal) does not wait for the rest
// of the walk, which resumes at the next one.
TEST_F(VolumeTest, DiscardWalkStopsForAWantedCommit) {
  Format({CodecId::kNone, 0}, format::MetaMode::kWriteBack, 1);
  Open();
  const size_t len = 2 << 20;  // 16 slots of raw data
  std::vector<uint8_t> want = Data(DataKind::kRandom, len, 1);
  ASSERT_TRUE(vol_->Write(0, want.data(), want.size(), false).ok());
  ASSERT_TRUE(vol_->Flush().ok());
  const format::Superblock& sb = vol_->superblock();
  counting_->meta_end = sb.journal_offset;
  std::mutex mu;
  std::condition_variable cv;
  int calls = 0;
  bool released = false;
  uint64_t meta_at_second = 0;
  counting_->on_discard = [&](uint64_t) {
    std::unique_lock<std::mutex> lock(mu);
    if (++calls == 2) meta_at_second = counting_->meta_written;
    cv.notify_all();
    cv.wait(lock, [&] { return released; });
  };
  // The trim frees the back half's 8 slots: one punch each, in one walk.
  ASSERT_TRUE(vol_->Discard(len / 2, len / 2).ok());
  std::fill(want.begin() + len / 2, want.end(), 0);
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(20), [&] { return calls == 1; }));
  }
  // With the walk held in its first punch, overwrites take undo records
  // for more than half the ring (but do not fill it): a commit is wanted.
  const uint64_t ring = sb.journal_bytes - format::kJournalHeaderSlots * kBlockSize;
  const uint64_t blocks = ring / 2 / UndoJournal::RecordBytes(format::kSectorsPerBlock) + 8;
  for (uint64_t i = 0; i < blocks; ++i) {
    auto bytes = Data(DataKind::kRandom, kBlockSize, 100 + i);
    ASSERT_TRUE(vol_->Write(i * kBlockSize, bytes.data(), kBlockSize, false).ok());
    std::memcpy(want.data() + i * kBlockSize, bytes.data(), kBlockSize);
  }
  const uint64_t meta_before = counting_->meta_written;
  {
    std::lock_guard<std::mutex> lock(mu);
    released = true;
    cv.notify_all();
  }
  // 20 s only bounds a broken build's wait.
  for (int i = 0; i < 2000 && counting_->discarded < len / 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(counting_->discarded, len / 2);
  EXPECT_GT(meta_at_second, meta_before) << "the walk went on before the wanted commit";
  ExpectReadsBackAcrossReopen(want);
}

// A backlog of cooled slots comes due at once (a trim, or the slots of a
// random-write phase): the walk rests three times as long as each slot's
// punches took, so writes waiting on the backing file's inode lock and its
// journal get most of the time.  Without the rest the punches run back to
// back and fill the walk's whole span.
TEST_F(VolumeTest, DiscardWalkRestsBetweenSlots) {
  Format({CodecId::kNone, 0}, format::MetaMode::kWriteBack, 1);
  Open();
  const size_t len = 1 << 20;  // 8 slots of raw data, one punch each
  std::vector<uint8_t> want = Data(DataKind::kRandom, len, 1);
  ASSERT_TRUE(vol_->Write(0, want.data(), want.size(), false).ok());
  ASSERT_TRUE(vol_->Flush().ok());
  using Clock = std::chrono::steady_clock;
  std::mutex mu;
  Clock::time_point first{}, last{};
  Clock::duration busy{0};
  counting_->on_discard = [&](uint64_t) {
    const Clock::time_point start = Clock::now();
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    std::lock_guard<std::mutex> lock(mu);
    if (first == Clock::time_point{}) first = start;
    last = Clock::now();
    busy += last - start;
  };
  ASSERT_TRUE(vol_->Discard(0, len).ok());
  // 20 s only bounds a broken build's wait.
  for (int i = 0; i < 2000 && counting_->discarded < len; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(counting_->discarded, len);
  std::lock_guard<std::mutex> lock(mu);
  const auto span = last - first;
  EXPECT_LT(busy * 2, span) << "punching for " << (busy / std::chrono::milliseconds(1)) << " ms of "
                            << (span / std::chrono::milliseconds(1)) << " ms";
}

// A walk cut short (here by a punch that outlasts the period) resumes at
// the next walk where it stopped, not at the lowest queued slot: otherwise
// slots freed since at lower offsets would go first every time, and under
// steady writes those past the stop would wait for a FLUSH.  The trims are
// timed from a probe punch, which starts a walk: slots 3, 10 and 11 are
// trimmed in one period and slot 0 in the next, so the walk that punches
// slot 3 finds slot 0 still hot and stops before 10, and the next walk
// finds all three cold.
TEST_F(VolumeTest, DiscardWalkResumesWhereItStopped) {
  Format({CodecId::kNone, 0}, format::MetaMode::kWriteBack, 1);
  Open();
  const uint64_t slot_bytes = uint64_t{vol_->superblock().extent_max_blocks} * kBlockSize;
  std::vector<uint8_t> want = Data(DataKind::kRandom, 32 * slot_bytes, 1);
  ASSERT_TRUE(vol_->Write(0, want.data(), want.size(), false).ok());
  ASSERT_TRUE(vol_->Flush().ok());
  const uint64_t data_offset = vol_->superblock().data_offset;
  using Clock = std::chrono::steady_clock;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<uint64_t> punched;  // slots, in punch order
  Clock::time_point probe_at{};
  counting_->on_discard = [&](uint64_t offset) {
    const uint64_t slot = (offset - data_offset) / slot_bytes;
    if (slot == 3) std::this_thread::sleep_for(std::chrono::milliseconds(1300));
    std::lock_guard<std::mutex> lock(mu);
    if (slot == 31) probe_at = Clock::now();
    punched.push_back(slot);
    cv.notify_all();
  };
  const auto trim = [&](uint64_t slot) {
    ASSERT_TRUE(vol_->Discard(slot * slot_bytes, slot_bytes).ok());
    std::fill_n(want.begin() + static_cast<ptrdiff_t>(slot * slot_bytes), slot_bytes, 0);
  };
  trim(31);
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(20), [&] { return !punched.empty(); }));
  }
  std::this_thread::sleep_until(probe_at + std::chrono::milliseconds(500));
  for (uint64_t slot : {3, 10, 11}) trim(slot);
  std::this_thread::sleep_until(probe_at + std::chrono::milliseconds(1500));
  trim(0);
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(20), [&] { return punched.size() == 5; }));
    const auto at3 = std::find(punched.begin(), punched.end(), 3);
    ASSERT_NE(at3, punched.end());
    ASSERT_NE(at3 + 1, punched.end());
    std::string order;
    for (uint64_t slot : punched) order += " " + std::to_string(slot);
    EXPECT_EQ(at3[1], 10u) << "punch order:" << order;
  }
  ExpectReadsBackAcrossReopen(want);
}

TEST_F(VolumeTest, CorruptPayloadIsAnErrorNeverGarbage) {
  Open();
  auto text = Data(DataKind::kText, 32 * 1024);
  ASSERT_TRUE(vol_->Write(0, text.data(), text.size(), false).ok());
  const uint64_t data_offset = vol_->superblock().data_offset;
  mem_.contents()[data_offset + 10] ^= 0xff;
  std::vector<uint8_t> out(text.size());
  Status st = vol_->Read(0, out.data(), out.size());
  EXPECT_EQ(st.code(), Status::Code::kCorruption) << st.ToString();
  EXPECT_EQ(vol_->Stats().read_errors, 1u);
}

TEST_F(VolumeTest, PayloadFromAnotherPlaceIsRejected) {
  Open();
  auto text = Data(DataKind::kText, 4096);
  ASSERT_TRUE(vol_->Write(0, text.data(), 4096, false).ok());
  ASSERT_TRUE(vol_->Write(4096, text.data(), 4096, false).ok());
  // Copy block 0's payload over block 1's: same bytes, wrong identity.
  const uint64_t d = vol_->superblock().data_offset;
  std::memcpy(mem_.contents().data() + d + 4096, mem_.contents().data() + d, 4096);
  std::vector<uint8_t> out(4096);
  Status st = vol_->Read(4096, out.data(), 4096);
  EXPECT_EQ(st.code(), Status::Code::kCorruption);
  EXPECT_NE(st.message().find("stale"), std::string::npos) << st.message();
}

TEST_F(VolumeTest, ReopenKeepsDataCountersAndCleanFlag) {
  Open();
  auto text = Data(DataKind::kMixed, 300 * 1024);
  ASSERT_TRUE(vol_->Write(7777, text.data(), text.size(), false).ok());
  const VolumeStats before = vol_->Stats();
  ASSERT_TRUE(vol_->Close().ok());
  vol_.reset();
  Open();
  EXPECT_FALSE(vol_->was_unclean());
  EXPECT_EQ(ReadAll(7777, text.size()), text);
  const VolumeStats after = vol_->Stats();
  EXPECT_EQ(after.blocks_compressed, before.blocks_compressed);
  EXPECT_EQ(after.blocks_raw, before.blocks_raw);
  EXPECT_EQ(after.payload_sectors, before.payload_sectors);
  EXPECT_EQ(after.logical_bytes_written, before.logical_bytes_written);
}

TEST_F(VolumeTest, CrashedVolumeIsReportedUnclean) {
  Open();
  auto text = Data(DataKind::kText, 64 * 1024);
  ASSERT_TRUE(vol_->Write(0, text.data(), text.size(), false).ok());
  ASSERT_TRUE(vol_->Flush().ok());
  MemDevice crashed(mem_.Size());
  crashed.contents() = mem_.contents();  // the disk as it is while open
  vol_.reset();
  auto dev = std::make_unique<BorrowedDevice>(&crashed);
  std::vector<std::string> log;
  OpenOptions opts;
  opts.log = [&](const std::string& l) { log.push_back(l); };
  std::unique_ptr<InsituVolume> v;
  ASSERT_TRUE(InsituVolume::Open(std::move(dev), opts, &v).ok());
  EXPECT_TRUE(v->was_unclean());
  ASSERT_FALSE(log.empty());
  EXPECT_NE(log[0].find("not closed cleanly"), std::string::npos);
  std::vector<uint8_t> out(text.size());
  ASSERT_TRUE(v->Read(0, out.data(), out.size()).ok());
  EXPECT_EQ(out, text);
  EXPECT_EQ(v->superblock().unclean_count, 1u);
}

TEST_F(VolumeTest, BadBlockFailsReadsUntilRewritten) {
  Open();
  auto text = Data(DataKind::kText, 8 * kBlockSize);
  ASSERT_TRUE(vol_->Write(0, text.data(), text.size(), false).ok());
  ASSERT_TRUE(vol_->Write(8 * kBlockSize, text.data(), kBlockSize, false).ok());
  const format::Superblock sb = vol_->superblock();
  ASSERT_TRUE(vol_->Close().ok());
  vol_.reset();
  // Mark block 8 bad in the current copy of metadata page 0, as fsck does.
  uint8_t* slot = nullptr;
  uint64_t best = 0;
  uint8_t bits[format::kMetaBitmapBytes];
  for (int s = 0; s < 2; ++s) {
    uint8_t* at = mem_.contents().data() + sb.meta_offset + s * kBlockSize;
    uint64_t seq;
    if (DecodeMetaPage(at, 0, &seq, bits).ok() && seq >= best) {
      best = seq;
      slot = at;
    }
  }
  ASSERT_NE(slot, nullptr);
  ASSERT_TRUE(DecodeMetaPage(slot, 0, &best, bits).ok());
  bits[5] = format::kMetaBadBlock;  // block 8: bits 40..44, exactly byte 5
  EncodeMetaPage(0, best, bits, slot);
  Open();
  EXPECT_EQ(vol_->Stats().blocks_bad, 1u);
  std::vector<uint8_t> out(kBlockSize);
  EXPECT_EQ(vol_->Read(8 * kBlockSize, out.data(), kBlockSize).code(), Status::Code::kCorruption);
  EXPECT_EQ(ReadAll(0, text.size()), text);  // its neighbours are fine
  // A partial write needs the lost bytes and fails; a whole one replaces it.
  EXPECT_FALSE(vol_->Write(8 * kBlockSize + 10, text.data(), 10, false).ok());
  ASSERT_TRUE(vol_->Write(8 * kBlockSize, text.data(), kBlockSize, false).ok());
  EXPECT_EQ(ReadAll(8 * kBlockSize, kBlockSize),
            std::vector<uint8_t>(text.begin(), text.begin() + kBlockSize));
  EXPECT_EQ(vol_->Stats().blocks_bad, 0u);
}

TEST_F(VolumeTest, ReadOnlyRejectsWritesAndOutOfRangeIsRejected) {
  Open(true);
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ(vol_->Write(0, buf.data(), 4096, false).code(), Status::Code::kNotSupported);
  EXPECT_EQ(vol_->Read(vol_->Size() - 10, buf.data(), 20).code(), Status::Code::kOutOfRange);
  EXPECT_EQ(vol_->Read(UINT64_MAX - 5, buf.data(), 20).code(), Status::Code::kOutOfRange);
}

TEST_F(VolumeTest, LastBlockOfTheVolumeIsUsable) {
  Open();
  auto text = Data(DataKind::kText, 10000);
  const uint64_t off = vol_->Size() - text.size();
  ASSERT_TRUE(vol_->Write(off, text.data(), text.size(), true).ok());
  EXPECT_EQ(ReadAll(off, text.size()), text);
}

TEST_F(VolumeTest, ConcurrentWritersOnOverlappingRangesStayConsistent) {
  Open();
  // Each thread repeatedly writes whole 16 KiB records filled with one
  // byte value at overlapping offsets; every record read afterwards must
  // be uniform within each 16 KiB record written last (no torn mixes
  // inside one request).
  constexpr size_t kRec = 16 * 1024;
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  std::atomic<bool> failed{false};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::vector<uint8_t> buf(kRec);
      for (int i = 0; i < 300; ++i) {
        const uint64_t rec = rng() % 64;
        std::fill(buf.begin(), buf.end(), static_cast<uint8_t>(1 + t));
        buf[0] = static_cast<uint8_t>(rec);  // make records differ in content
        if (!vol_->Write(rec * kRec, buf.data(), kRec, false).ok()) failed = true;
        std::vector<uint8_t> back(kRec);
        const uint64_t other = rng() % 64;
        if (!vol_->Read(other * kRec, back.data(), kRec).ok()) failed = true;
        for (size_t k = 1; k < kRec; ++k) {
          if (back[k] != back[1]) failed = true;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_FALSE(failed);
}

// Payloads and raw blocks are read through the backing file's mapping.  A
// page of it that faults (the file truncated behind the volume; on a disk,
// an I/O error) fails that read with an error, counted like any read
// error, and the process lives on; the blocks still in the file read back.
// (A read through io_uring would fail as well, but not with SIGBUS: the
// message shows the mapping was used for raw blocks too.)
TEST(VolumeOnFileTest, APageThatFaultsIsAReadError) {
  for (const CodecId codec : {CodecId::kLz4, CodecId::kNone}) {
    SCOPED_TRACE(codec == CodecId::kNone ? "raw blocks (codec none)" : "payloads (lz4)");
    testing::TempFile temp(testing::TempDir());
    const std::string& path = temp.path();
    ASSERT_FALSE(path.empty());
    FileDeviceOptions fopts;
    fopts.allow_direct = false;
    fopts.size = 64 << 20;
    std::unique_ptr<FileDevice> file;
    ASSERT_TRUE(FileDevice::Open(path, fopts, &file).ok());
    ASSERT_NE(file->View(0, 4096), nullptr);
    FormatOptions opts;
    opts.codec = {codec, 0};
    ASSERT_TRUE(FormatVolume(file.get(), opts).ok());
    std::unique_ptr<InsituVolume> vol;
    ASSERT_TRUE(InsituVolume::Open(std::move(file), OpenOptions{}, &vol).ok());
    const size_t len = 1 << 20;
    std::vector<uint8_t> want(len);
    std::mt19937_64 rng(3);
    FillData(rng, DataKind::kText, want.data(), len);
    ASSERT_TRUE(vol->Write(0, want.data(), len, false).ok());
    ASSERT_TRUE(vol->Flush().ok());
    const uint64_t slot_bytes = uint64_t{vol->superblock().extent_max_blocks} * kBlockSize;
    // Keep the first slot's data, cut the file inside the second's.
    ASSERT_EQ(truncate(path.c_str(), vol->superblock().data_offset + slot_bytes + 4096), 0);
    std::vector<uint8_t> got(slot_bytes);
    const Status st = vol->Read(4 * slot_bytes, got.data(), 4096);
    EXPECT_EQ(st.code(), Status::Code::kIOError) << st.ToString();
    EXPECT_NE(st.message().find("SIGBUS"), std::string::npos) << st.message();
    EXPECT_EQ(vol->Stats().read_errors, 1u);
    ASSERT_TRUE(vol->Read(0, got.data(), slot_bytes).ok());
    EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin()));
  }
}

}  // namespace
}  // namespace insitu
