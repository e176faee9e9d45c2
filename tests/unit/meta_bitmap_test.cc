#include "libcore/meta_bitmap.h"

#include <gtest/gtest.h>

#include <random>

#include "libcore/aligned_buffer.h"
#include "libcore/mem_device.h"
#include "libcore/superblock.h"

namespace insitu {
namespace {

using format::kBlockSize;
using format::kBlocksPerMetaPage;

// Stores entries the way the write path does: pin, then unpin with them.
void Set(MetaBitmap& m, uint64_t first, uint32_t n, const uint8_t* entries) {
  SlotViews views;
  ASSERT_TRUE(m.Pin(first, n, &views, [](const SlotViews&) { return Status::OK(); }).ok());
  m.Unpin(first, n, entries);
}

// Writes every dirty page the way a commit does.
Status CommitAll(MetaBitmap& m, BlockDevice& dev) {
  std::vector<uint64_t> pages;
  for (uint64_t p : m.DirtyPages()) {
    if (m.SnapshotPage(p)) pages.push_back(p);
  }
  Status st;
  for (uint64_t p : pages) {
    if (st.ok()) st = m.WriteSnapshot(p);
  }
  if (st.ok()) st = dev.Flush();
  for (uint64_t p : pages) m.FinishSnapshot(p, st.ok());
  return st;
}

class MetaBitmapTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(ComputeGeometry(dev_.Size(), &sb_).ok()); }
  MemDevice dev_{64 << 20};  // ~16000 blocks: three pages
  format::Superblock sb_{};
};

TEST_F(MetaBitmapTest, EntriesAreIndependentAcrossByteBoundaries) {
  MetaBitmap m(&dev_, sb_);
  std::mt19937 rng(7);
  std::vector<uint8_t> ref(sb_.data_blocks);
  for (uint64_t b = 0; b < sb_.data_blocks; ++b) {
    ref[b] = static_cast<uint8_t>(rng() & 0x1f);
    Set(m, b, 1, &ref[b]);
  }
  for (uint64_t b = 0; b < sb_.data_blocks; ++b) ASSERT_EQ(m.Get(b), ref[b]) << b;
}

TEST_F(MetaBitmapTest, PagesPersistAndAlternateSlots) {
  ASSERT_GE(sb_.meta_pages, 2u);
  {
    MetaBitmap m(&dev_, sb_);
    const uint8_t v[3] = {5, 0x10 | 8, 0x10 | 2};
    Set(m, kBlocksPerMetaPage + 10, 3, v);
    EXPECT_TRUE(m.HasDirtyPages());
    ASSERT_TRUE(CommitAll(m, dev_).ok());
    EXPECT_FALSE(m.HasDirtyPages());
    EXPECT_EQ(m.bytes_written(), kBlockSize);
    EXPECT_EQ(m.DiskSequence(1), 1u);
    const uint8_t w = 7;
    Set(m, kBlocksPerMetaPage + 10, 1, &w);
    ASSERT_TRUE(CommitAll(m, dev_).ok());
  }
  MetaBitmap loaded(&dev_, sb_);
  ASSERT_TRUE(loaded.Load([](const std::string&) {}).ok());
  EXPECT_EQ(loaded.Get(kBlocksPerMetaPage + 10), 7);
  EXPECT_EQ(loaded.Get(kBlocksPerMetaPage + 11), 0x18);
  // Sequence 1 went to slot 1, sequence 2 to slot 0.
  const uint64_t slot0 = sb_.meta_offset + 2 * kBlockSize, slot1 = slot0 + kBlockSize;
  uint64_t seq;
  uint8_t bits[format::kMetaBitmapBytes];
  ASSERT_TRUE(DecodeMetaPage(dev_.contents().data() + slot0, 1, &seq, bits).ok());
  EXPECT_EQ(seq, 2u);
  ASSERT_TRUE(DecodeMetaPage(dev_.contents().data() + slot1, 1, &seq, bits).ok());
  EXPECT_EQ(seq, 1u);
}

TEST_F(MetaBitmapTest, TornNewerSlotFallsBackToOlderCopy) {
  {
    MetaBitmap m(&dev_, sb_);
    const uint8_t a = 3;
    Set(m, 0, 1, &a);
    ASSERT_TRUE(CommitAll(m, dev_).ok());  // seq 1, slot 1
    const uint8_t b = 4;
    Set(m, 0, 1, &b);
    ASSERT_TRUE(CommitAll(m, dev_).ok());  // seq 2, slot 0
  }
  // Tear the newest copy (slot 0): its second sector still holds bytes
  // from whatever was there before.
  std::fill_n(dev_.contents().begin() + sb_.meta_offset + 512, 512, 0x5a);
  MetaBitmap loaded(&dev_, sb_);
  std::vector<std::string> notes;
  ASSERT_TRUE(loaded.Load([&](const std::string& n) { notes.push_back(n); }).ok());
  EXPECT_EQ(loaded.Get(0), 3);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("checksum"), std::string::npos);
}

TEST_F(MetaBitmapTest, ViewsShowTheOnDiskCopiesWhileMemoryMovesOn) {
  MetaBitmap m(&dev_, sb_);
  const uint8_t a = 3, b = 5;
  Set(m, 0, 1, &a);
  ASSERT_TRUE(CommitAll(m, dev_).ok());
  Set(m, 0, 1, &b);  // in memory only
  SlotViews views;
  m.ReadViews(0, 1, &views);
  EXPECT_EQ(m.Get(0), 5);
  EXPECT_EQ(views.durable[0], 3);  // what a crash now would leave
  EXPECT_EQ(views.durable_seq, 1u);
  EXPECT_FALSE(views.has_committing);
  // While a snapshot is being written both copies are possible.
  ASSERT_TRUE(m.SnapshotPage(0));
  m.ReadViews(0, 1, &views);
  ASSERT_TRUE(views.has_committing);
  EXPECT_EQ(views.committing[0], 5);
  EXPECT_EQ(views.committing_seq, 2u);
  ASSERT_TRUE(m.WriteSnapshot(0).ok());
  m.FinishSnapshot(0, true);
  m.ReadViews(0, 1, &views);
  EXPECT_EQ(views.durable[0], 5);
  EXPECT_FALSE(views.has_committing);
  EXPECT_FALSE(m.HasDirtyPages());
}

TEST_F(MetaBitmapTest, FailedSnapshotWriteKeepsPageDirty) {
  MetaBitmap m(&dev_, sb_);
  const uint8_t a = 3;
  Set(m, 0, 1, &a);
  ASSERT_TRUE(m.SnapshotPage(0));
  m.FinishSnapshot(0, false);
  EXPECT_TRUE(m.HasDirtyPages());
  EXPECT_EQ(m.DiskSequence(0), 0u);
  SlotViews views;
  m.ReadViews(0, 1, &views);
  EXPECT_EQ(views.durable[0], 0);
}

TEST_F(MetaBitmapTest, BothSlotsDamagedIsCorruption) {
  AlignedBuffer garbage(kBlockSize);
  std::fill_n(garbage.data(), kBlockSize, 0xab);
  ASSERT_TRUE(dev_.Write(sb_.meta_offset, garbage.data(), kBlockSize, false).ok());
  ASSERT_TRUE(dev_.Write(sb_.meta_offset + kBlockSize, garbage.data(), kBlockSize, false).ok());
  MetaBitmap loaded(&dev_, sb_);
  EXPECT_EQ(loaded.Load([](const std::string&) {}).code(), Status::Code::kCorruption);
}

TEST_F(MetaBitmapTest, SlotHoldingAnotherPageIsRejected) {
  AlignedBuffer block(kBlockSize);
  uint8_t bits[format::kMetaBitmapBytes] = {1};
  EncodeMetaPage(2, 1, bits, block.data());
  uint64_t seq;
  EXPECT_EQ(DecodeMetaPage(block.data(), 1, &seq, bits).code(), Status::Code::kCorruption);
  EXPECT_TRUE(DecodeMetaPage(block.data(), 2, &seq, bits).ok());
}

}  // namespace
}  // namespace insitu
