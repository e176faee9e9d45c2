#include "libcore/superblock.h"

#include <gtest/gtest.h>

#include <cstring>

#include "libcore/aligned_buffer.h"
#include "libcore/mem_device.h"
#include "libcore/volume.h"

namespace insitu {
namespace {

using format::kBlockSize;

TEST(Superblock, GeometryFitsTheDevice) {
  for (uint64_t mib : {4, 5, 17, 64, 1000, 1 << 20}) {
    format::Superblock sb{};
    const uint64_t bytes = mib << 20;
    ASSERT_TRUE(ComputeGeometry(bytes, &sb).ok()) << mib;
    EXPECT_EQ(sb.meta_offset, kBlockSize);
    EXPECT_GE(sb.meta_pages * format::kBlocksPerMetaPage, sb.data_blocks);
    EXPECT_GE(sb.journal_offset, sb.meta_offset + sb.meta_pages * 2 * kBlockSize);
    EXPECT_EQ(sb.data_offset, sb.journal_offset + sb.journal_bytes);
    EXPECT_GE(sb.journal_bytes, uint64_t{1} << 20);
    EXPECT_LE(sb.journal_bytes, uint64_t{16} << 20);
    EXPECT_EQ(sb.data_offset % format::kDataAlignment, 0u);
    EXPECT_LE(sb.data_offset + sb.data_blocks * kBlockSize, sb.backup_offset);
    EXPECT_EQ(sb.backup_offset, bytes - kBlockSize);
    // No more than one alignment unit of slack.
    EXPECT_LT(sb.backup_offset - (sb.data_offset + sb.data_blocks * kBlockSize),
              uint64_t{format::kDataAlignment} + kBlockSize);
  }
  format::Superblock sb{};
  EXPECT_FALSE(ComputeGeometry(3 << 20, &sb).ok());
}

class SuperblockOnDevice : public ::testing::Test {
 protected:
  void SetUp() override {
    FormatOptions opts;
    opts.codec = {CodecId::kZstd, 3};
    ASSERT_TRUE(FormatVolume(&dev_, opts).ok());
  }
  MemDevice dev_{16 << 20};
};

TEST_F(SuperblockOnDevice, FormatWritesBothCopies) {
  format::Superblock sb;
  SuperblockSource source;
  ASSERT_TRUE(ReadSuperblock(&dev_, &sb, &source, nullptr).ok());
  EXPECT_EQ(source, SuperblockSource::kPrimary);
  EXPECT_EQ(sb.codec, static_cast<uint8_t>(CodecId::kZstd));
  EXPECT_EQ(sb.codec_level, 3);
  EXPECT_EQ(sb.state, static_cast<uint32_t>(format::VolumeState::kClean));
  EXPECT_EQ(0, std::memcmp(dev_.contents().data(), dev_.contents().data() + sb.backup_offset,
                           kBlockSize));
}

TEST_F(SuperblockOnDevice, EveryCorruptedByteIsDetectedAndBackupUsed) {
  const std::vector<uint8_t> pristine = dev_.contents();
  for (size_t byte = 0; byte < sizeof(format::Superblock); byte += 7) {
    dev_.contents() = pristine;
    dev_.contents()[byte] ^= 0x40;
    format::Superblock sb;
    ASSERT_FALSE(DecodeSuperblock(dev_.contents().data(), dev_.Size(), &sb).ok()) << byte;
    SuperblockSource source;
    std::string why;
    ASSERT_TRUE(ReadSuperblock(&dev_, &sb, &source, &why).ok()) << byte;
    EXPECT_EQ(source, SuperblockSource::kBackup);
    EXPECT_FALSE(why.empty());
  }
}

TEST_F(SuperblockOnDevice, BothCopiesBadIsAnError) {
  format::Superblock sb;
  ASSERT_TRUE(DecodeSuperblock(dev_.contents().data(), dev_.Size(), &sb).ok());
  dev_.contents()[8] ^= 1;
  dev_.contents()[sb.backup_offset + 8] ^= 1;
  SuperblockSource source;
  EXPECT_EQ(ReadSuperblock(&dev_, &sb, &source, nullptr).code(), Status::Code::kCorruption);
}

TEST_F(SuperblockOnDevice, RejectsUnknownIncompatFeatureAndTruncatedDevice) {
  format::Superblock sb;
  ASSERT_TRUE(DecodeSuperblock(dev_.contents().data(), dev_.Size(), &sb).ok());
  AlignedBuffer block(kBlockSize);
  sb.incompat = 0x80;
  EncodeSuperblock(sb, block.data());
  format::Superblock out;
  EXPECT_EQ(DecodeSuperblock(block.data(), dev_.Size(), &out).code(), Status::Code::kNotSupported);
  sb.incompat = 0;
  EncodeSuperblock(sb, block.data());
  EXPECT_TRUE(DecodeSuperblock(block.data(), dev_.Size(), &out).ok());
  EXPECT_FALSE(DecodeSuperblock(block.data(), dev_.Size() - kBlockSize, &out).ok());
}

// The segment size and the incompat bit that announces it go together,
// and segments are shorter than extents.
TEST_F(SuperblockOnDevice, SegmentSizeMustMatchItsFeatureBitAndTheExtentSize) {
  format::Superblock sb;
  ASSERT_TRUE(DecodeSuperblock(dev_.contents().data(), dev_.Size(), &sb).ok());
  EXPECT_EQ(sb.segment_blocks, 0u);
  EXPECT_EQ(sb.incompat & format::kIncompatSegmentedPayloads, 0u);
  AlignedBuffer block(kBlockSize);
  format::Superblock out;
  const auto decode = [&](uint8_t segment_blocks, bool flag, uint32_t extent_max) {
    format::Superblock s = sb;
    s.segment_blocks = segment_blocks;
    s.extent_max_blocks = extent_max;
    if (flag) s.incompat |= format::kIncompatSegmentedPayloads;
    EncodeSuperblock(s, block.data());
    return DecodeSuperblock(block.data(), dev_.Size(), &out);
  };
  EXPECT_TRUE(decode(4, true, 32).ok());
  EXPECT_EQ(out.segment_blocks, 4u);
  EXPECT_TRUE(decode(1, true, 2).ok());
  EXPECT_EQ(decode(4, false, 32).code(), Status::Code::kCorruption);
  EXPECT_EQ(decode(0, true, 32).code(), Status::Code::kCorruption);
  EXPECT_EQ(decode(32, true, 32).code(), Status::Code::kCorruption);
  EXPECT_EQ(decode(8, true, 4).code(), Status::Code::kCorruption);
  EXPECT_EQ(decode(3, true, 32).code(), Status::Code::kCorruption);
}

TEST(FormatVolume, SetsTheSegmentSizeOrRefusesOne) {
  MemDevice dev(16 << 20);
  FormatOptions opts;
  opts.segment_blocks = 4;
  ASSERT_TRUE(FormatVolume(&dev, opts).ok());
  format::Superblock sb;
  ASSERT_TRUE(DecodeSuperblock(dev.contents().data(), dev.Size(), &sb).ok());
  EXPECT_EQ(sb.segment_blocks, 4u);
  EXPECT_NE(sb.incompat & format::kIncompatSegmentedPayloads, 0u);
  for (const auto& [segment, extent] : {std::pair{32u, 32u}, {6u, 32u}, {8u, 8u}, {64u, 32u}}) {
    opts.segment_blocks = segment;
    opts.extent_max_blocks = extent;
    EXPECT_EQ(FormatVolume(&dev, opts).code(), Status::Code::kInvalidArgument)
        << segment << " of " << extent;
  }
}

TEST(ProbeExisting, RecognizesVolumesAndFileSystems) {
  MemDevice dev(8 << 20);
  EXPECT_EQ(ProbeExisting(&dev), "");
  dev.contents()[1080] = 0x53;
  dev.contents()[1081] = 0xef;
  EXPECT_NE(ProbeExisting(&dev).find("ext"), std::string::npos);
  ASSERT_TRUE(FormatVolume(&dev, FormatOptions{}).ok());
  EXPECT_EQ(ProbeExisting(&dev), "an insitu volume");
  std::fill(dev.contents().begin(), dev.contents().begin() + 4096, 0);
  EXPECT_NE(ProbeExisting(&dev).find("primary superblock damaged"), std::string::npos);
}

}  // namespace
}  // namespace insitu
