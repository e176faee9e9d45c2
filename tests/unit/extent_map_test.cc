#include "libcore/extent_map.h"

#include <gtest/gtest.h>

#include "libcore/format.h"

namespace insitu {
namespace {

TEST(ExtentMap, EncodeDecodeRoundTripsEveryLength) {
  for (uint32_t n = 1; n <= format::kMaxExtentBlocks; ++n) {
    for (uint32_t sectors = 1; sectors <= 8 * n; ++sectors) {
      for (const bool back : {false, true}) {
        if (back && !CanPlaceBack(n, sectors)) continue;
        uint8_t entries[format::kMaxExtentBlocks] = {};
        EncodeExtent(n, sectors, entries, back);
        std::vector<SlotExtent> out;
        ASSERT_TRUE(DecodeSlot(entries, n, &out).ok()) << n << " " << sectors << " " << back;
        ASSERT_EQ(out.size(), 1u);
        EXPECT_EQ(out[0].first, 0u);
        EXPECT_EQ(out[0].nblocks, n);
        EXPECT_EQ(out[0].sectors, sectors);
        EXPECT_EQ(out[0].back, back);
        EXPECT_EQ(out[0].raw(), sectors == 8 * n);
        const uint32_t start = back ? 8 * n - sectors : 0;
        EXPECT_EQ(out[0].payload_start(), start);
        EXPECT_EQ(out[0].used_units(), UnitMask(start / 8, (start + sectors + 7) / 8 - start / 8));
      }
    }
  }
}

// Every block the payload leaves room for may be patched, at the front and
// at the back; the patches decode as written and count as used units.
TEST(ExtentMap, PatchedBlocksRoundTripWhereThePayloadLeavesRoom) {
  for (uint32_t n = 2; n <= format::kMaxExtentBlocks; ++n) {
    for (uint32_t sectors = 1; sectors < 8 * n; ++sectors) {
      for (const bool back : {false, true}) {
        if (back && !CanPlaceBack(n, sectors)) continue;
        SlotExtent plain{0, n, sectors, false, back};
        const uint32_t start = plain.payload_start() / 8,
                       end = (plain.payload_start() + sectors + 7) / 8;
        ASSERT_EQ(plain.patchable(), UnitMask(1, n - 1) & ~UnitMask(start, end - start));
        for (const uint32_t patched :
             {plain.patchable(), plain.patchable() & (0u - plain.patchable())}) {
          uint8_t entries[format::kMaxExtentBlocks] = {};
          EncodeExtent(n, sectors, entries, back, patched);
          std::vector<SlotExtent> out;
          ASSERT_TRUE(DecodeSlot(entries, n, &out).ok()) << n << " " << sectors << " " << back;
          ASSERT_EQ(out.size(), 1u);
          EXPECT_EQ(out[0].sectors, sectors);
          EXPECT_EQ(out[0].back, back);
          EXPECT_EQ(out[0].patched, patched);
          EXPECT_EQ(out[0].used_units(), plain.used_units() | patched);
        }
      }
    }
  }
}

TEST(ExtentMap, RejectsPatchesWhereThePayloadLies) {
  std::vector<SlotExtent> out;
  // P = 11 from the front: blocks 0 and 1 hold the payload, block 2 is free.
  uint8_t ok[3] = {8, format::kMetaTailBit | 3, format::kMetaPatched};
  ASSERT_TRUE(DecodeSlot(ok, 3, &out).ok());
  EXPECT_EQ(out[0].patched, 0b100u);
  EXPECT_TRUE(out[0].is_patched(2));
  uint8_t in_payload[3] = {8, format::kMetaPatched, format::kMetaTailBit | 3};
  EXPECT_EQ(DecodeSlot(in_payload, 3, &out).code(), Status::Code::kCorruption);
  // A back payload of 8 sectors in block 2: block 1 is free, block 2 not.
  uint8_t back_ok[3] = {format::kMetaBackHead, format::kMetaPatched, format::kMetaTailBit | 8};
  ASSERT_TRUE(DecodeSlot(back_ok, 3, &out).ok());
  EXPECT_EQ(out[0].patched, 0b10u);
  uint8_t back_bad[3] = {format::kMetaBackHead, format::kMetaTailBit | 8, format::kMetaPatched};
  EXPECT_EQ(DecodeSlot(back_bad, 3, &out).code(), Status::Code::kCorruption);
  // No payload at all: an unwritten block has no tails, patched or not.
  uint8_t unwritten[2] = {0, format::kMetaPatched};
  EXPECT_EQ(DecodeSlot(unwritten, 2, &out).code(), Status::Code::kCorruption);
  // A patch is a tail: it cannot start an extent.
  uint8_t orphan[1] = {format::kMetaPatched};
  EXPECT_EQ(DecodeSlot(orphan, 1, &out).code(), Status::Code::kCorruption);
}

TEST(ExtentMap, BackPayloadsAreCompressedAndLeaveTheFrontFree) {
  // A single block: payloads of 1..5 sectors fit at the back.
  EXPECT_TRUE(CanPlaceBack(1, 5));
  EXPECT_FALSE(CanPlaceBack(1, 6));
  EXPECT_FALSE(CanPlaceBack(1, 8));   // raw is always in place
  EXPECT_FALSE(CanPlaceBack(4, 32));  // raw
  EXPECT_TRUE(CanPlaceBack(4, 29));   // head carries 5
  EXPECT_FALSE(CanPlaceBack(4, 30));
  uint8_t entries[4] = {};
  EncodeExtent(4, 11, entries, true);  // charged 0, 0, 3, 8 from the head
  EXPECT_EQ(entries[0], format::kMetaBackHead);
  EXPECT_EQ(entries[1], format::kMetaTailBit);
  EXPECT_EQ(entries[2], format::kMetaTailBit | 3);
  EXPECT_EQ(entries[3], format::kMetaTailBit | 8);
  std::vector<SlotExtent> out;
  ASSERT_TRUE(DecodeSlot(entries, 4, &out).ok());
  EXPECT_TRUE(out[0].compressed());
  EXPECT_EQ(out[0].payload_start(), 21u);
  EXPECT_EQ(out[0].used_units(), 0b1100u);
}

TEST(ExtentMap, DecodesMixedSlot) {
  uint8_t entries[8] = {};
  EncodeExtent(3, 10, entries);      // compressed, blocks 0-2
  entries[3] = 0;                    // unwritten
  EncodeExtent(2, 16, entries + 4);  // raw, blocks 4-5
  EncodeExtent(1, 3, entries + 6);   // compressed single block
  entries[7] = 0;
  std::vector<SlotExtent> out;
  ASSERT_TRUE(DecodeSlot(entries, 8, &out).ok());
  ASSERT_EQ(out.size(), 5u);
  EXPECT_TRUE(out[0].compressed());
  EXPECT_TRUE(out[1].unwritten());
  EXPECT_TRUE(out[2].raw());
  EXPECT_EQ(out[3].sectors, 3u);
  EXPECT_TRUE(out[4].unwritten());
}

TEST(ExtentMap, BadBlockMarkerIsItsOwnExtent) {
  uint8_t entries[3] = {format::kMetaBadBlock, 0, format::kMetaBadBlock};
  std::vector<SlotExtent> out;
  ASSERT_TRUE(DecodeSlot(entries, 3, &out).ok());
  ASSERT_EQ(out.size(), 3u);
  EXPECT_TRUE(out[0].bad);
  EXPECT_FALSE(out[0].unwritten() || out[0].raw() || out[0].compressed());
  EXPECT_EQ(out[0].used_units(), 0u);
  EXPECT_TRUE(out[1].unwritten());
  EXPECT_TRUE(out[2].bad);
  uint8_t bad_with_tail[2] = {format::kMetaBadBlock, format::kMetaTailBit};
  EXPECT_EQ(DecodeSlot(bad_with_tail, 2, &out).code(), Status::Code::kCorruption);
}

TEST(ExtentMap, RejectsEveryBrokenRule) {
  std::vector<SlotExtent> out;
  uint8_t orphan_tail[2] = {format::kMetaTailBit | 3, 0};
  EXPECT_EQ(DecodeSlot(orphan_tail, 2, &out).code(), Status::Code::kCorruption);
  uint8_t too_long[2] = {8, format::kMetaTailBit | 10};
  EXPECT_EQ(DecodeSlot(too_long, 2, &out).code(), Status::Code::kCorruption);
  uint8_t empty_back[1] = {format::kMetaBackHead};
  EXPECT_EQ(DecodeSlot(empty_back, 1, &out).code(), Status::Code::kCorruption);
  uint8_t back_not_greedy[2] = {format::kMetaBackHead + 2, format::kMetaTailBit | 3};
  EXPECT_EQ(DecodeSlot(back_not_greedy, 2, &out).code(), Status::Code::kCorruption);
  // Head carries 5 but the block after it is not full.
  uint8_t back_head_early[2] = {format::kMetaBackHead + 5, format::kMetaTailBit | 7};
  EXPECT_EQ(DecodeSlot(back_head_early, 2, &out).code(), Status::Code::kCorruption);
  uint8_t unwritten_with_tail[2] = {0, format::kMetaTailBit};
  EXPECT_EQ(DecodeSlot(unwritten_with_tail, 2, &out).code(), Status::Code::kCorruption);
  uint8_t not_greedy[2] = {3, format::kMetaTailBit | 5};  // head should be 8
  EXPECT_EQ(DecodeSlot(not_greedy, 2, &out).code(), Status::Code::kCorruption);
  uint8_t stray[1] = {0x20};
  EXPECT_EQ(DecodeSlot(stray, 1, &out).code(), Status::Code::kCorruption);
}

}  // namespace
}  // namespace insitu
