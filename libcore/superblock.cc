#include "libcore/superblock.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <ctime>

#include "libcore/aligned_buffer.h"
#include "libcore/codec.h"
#include "libcore/crc32c.h"

namespace insitu {

using format::kBlockSize;
using format::Superblock;

static_assert(std::endian::native == std::endian::little,
              "the on-disk format is little-endian and is copied to memory as is");

namespace {

uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

uint32_t SuperCrc(const Superblock& sb) {
  Superblock copy = sb;
  copy.crc = 0;
  return Crc32c(0, &copy, sizeof(copy));
}

}  // namespace

Status ComputeGeometry(uint64_t device_bytes, Superblock* sb) {
  const uint64_t total_blocks = device_bytes / kBlockSize;
  // Superblock and metadata (1 MiB), the journal (at least 1 MiB), at
  // least 1 MiB of data and the backup superblock.
  if (total_blocks < 4 * (format::kDataAlignment / kBlockSize)) {
    return Status::InvalidArgument("device of " + std::to_string(device_bytes) +
                                   " bytes is too small for a volume (minimum 4 MiB)");
  }
  // The journal holds the undo records written between two commits: 1/128
  // of the device, between 1 and 16 MiB.
  const uint64_t journal_bytes =
      std::clamp<uint64_t>(device_bytes / 128 / format::kDataAlignment * format::kDataAlignment,
                           format::kDataAlignment, 16 * format::kDataAlignment);
  const uint64_t backup_offset = (total_blocks - 1) * kBlockSize;
  const uint64_t meta_offset = kBlockSize;
  uint64_t data_blocks = (backup_offset - meta_offset) / kBlockSize;
  uint64_t meta_pages = 0, journal_offset = 0, data_offset = 0;
  for (;;) {
    meta_pages = (data_blocks + format::kBlocksPerMetaPage - 1) / format::kBlocksPerMetaPage;
    journal_offset = RoundUp(meta_offset + meta_pages * 2 * kBlockSize, format::kDataAlignment);
    data_offset = journal_offset + journal_bytes;
    if (data_offset >= backup_offset) {
      return Status::InvalidArgument("device of " + std::to_string(device_bytes) +
                                     " bytes is too small for a volume");
    }
    const uint64_t fit = (backup_offset - data_offset) / kBlockSize;
    if (fit >= data_blocks) break;
    data_blocks = fit;
  }
  sb->journal_offset = journal_offset;
  sb->journal_bytes = journal_bytes;
  sb->device_bytes = device_bytes;
  sb->data_blocks = data_blocks;
  sb->meta_offset = meta_offset;
  sb->meta_pages = meta_pages;
  sb->data_offset = data_offset;
  sb->backup_offset = backup_offset;
  return Status::OK();
}

void EncodeSuperblock(const Superblock& sb, uint8_t* block) {
  Superblock copy = sb;
  copy.crc = SuperCrc(copy);
  std::memset(block, 0, kBlockSize);
  std::memcpy(block, &copy, sizeof(copy));
}

Status DecodeSuperblock(const uint8_t* block, uint64_t device_size, Superblock* out) {
  Superblock sb;
  std::memcpy(&sb, block, sizeof(sb));
  if (sb.magic != format::kSuperMagic)
    return Status::Corruption("no insitu superblock (bad magic)");
  // The CRC is checked before any field is believed: a flipped bit in the
  // version must read as damage, not as a volume from the future.
  const bool crc_ok = sb.header_bytes == sizeof(Superblock) && sb.crc == SuperCrc(sb);
  if (sb.version != format::kSuperVersion) {
    if (!crc_ok) return Status::Corruption("superblock checksum mismatch");
    return Status::NotSupported("superblock version " + std::to_string(sb.version) +
                                " is not supported (this is version " +
                                std::to_string(format::kSuperVersion) + ")");
  }
  if (!crc_ok) return Status::Corruption("superblock checksum mismatch");
  if (sb.incompat & ~format::kIncompatKnown) {
    return Status::NotSupported("volume uses unknown incompatible features 0x" +
                                std::to_string(sb.incompat & ~format::kIncompatKnown));
  }
  if (sb.block_size != kBlockSize) return Status::Corruption("superblock block size is not 4096");
  if (sb.extent_max_blocks == 0 || sb.extent_max_blocks > format::kMaxExtentBlocks ||
      !std::has_single_bit(sb.extent_max_blocks)) {
    return Status::Corruption("superblock extent size " + std::to_string(sb.extent_max_blocks) +
                              " blocks is invalid");
  }
  const bool segmented = (sb.incompat & format::kIncompatSegmentedPayloads) != 0;
  if (segmented != (sb.segment_blocks != 0) ||
      (segmented && (sb.segment_blocks >= sb.extent_max_blocks ||
                     !std::has_single_bit(uint32_t{sb.segment_blocks})))) {
    return Status::Corruption("superblock segment size " + std::to_string(sb.segment_blocks) +
                              " blocks is invalid for extents of " +
                              std::to_string(sb.extent_max_blocks) + " blocks" +
                              (segmented ? "" : " without the segmented-payloads feature"));
  }
  if (sb.codec > static_cast<uint8_t>(CodecId::kLz4)) {
    return Status::NotSupported("unknown codec " + std::to_string(sb.codec));
  }
  if (sb.meta_mode != static_cast<uint8_t>(format::MetaMode::kWriteThrough) &&
      sb.meta_mode != static_cast<uint8_t>(format::MetaMode::kWriteBack)) {
    return Status::Corruption("unknown metadata mode " + std::to_string(sb.meta_mode));
  }
  if (sb.state != static_cast<uint32_t>(format::VolumeState::kClean) &&
      sb.state != static_cast<uint32_t>(format::VolumeState::kDirty)) {
    return Status::Corruption("unknown volume state " + std::to_string(sb.state));
  }
  if (sb.next_write_seq >= format::kMaxSequence) {
    return Status::Corruption("superblock write sequence out of range");
  }
  Superblock geo;
  INSITU_RETURN_IF_ERROR(ComputeGeometry(sb.device_bytes, &geo));
  if (geo.data_blocks != sb.data_blocks || geo.meta_offset != sb.meta_offset ||
      geo.meta_pages != sb.meta_pages || geo.data_offset != sb.data_offset ||
      geo.backup_offset != sb.backup_offset || geo.journal_offset != sb.journal_offset ||
      geo.journal_bytes != sb.journal_bytes) {
    return Status::Corruption("superblock geometry does not match its device size");
  }
  if (device_size < sb.device_bytes) {
    return Status::InvalidArgument("device is " + std::to_string(device_size) +
                                   " bytes but the volume was formatted on " +
                                   std::to_string(sb.device_bytes) + " bytes (truncated?)");
  }
  *out = sb;
  return Status::OK();
}

Status ReadSuperblock(BlockDevice* dev, Superblock* sb, SuperblockSource* source,
                      std::string* primary_error) {
  AlignedBuffer block(kBlockSize);
  const uint64_t size = dev->Size();
  if (size < kBlockSize) return Status::Corruption("device is too small to hold a superblock");
  INSITU_RETURN_IF_ERROR(dev->Read(0, block.data(), kBlockSize).Annotate("reading superblock"));
  Status primary = DecodeSuperblock(block.data(), size, sb);
  if (primary.ok()) {
    *source = SuperblockSource::kPrimary;
    return primary;
  }
  if (primary_error) *primary_error = primary.message();
  // The backup sits at the end of the device as it was formatted; if the
  // device has since grown we cannot know where that was, so try the end.
  const uint64_t backup = (size / kBlockSize - 1) * kBlockSize;
  INSITU_RETURN_IF_ERROR(
      dev->Read(backup, block.data(), kBlockSize).Annotate("reading backup superblock"));
  Status st = DecodeSuperblock(block.data(), size, sb);
  if (!st.ok()) return primary;
  *source = SuperblockSource::kBackup;
  return Status::OK();
}

Status WriteSuperblocks(BlockDevice* dev, Superblock* sb) {
  sb->write_time = static_cast<uint64_t>(std::time(nullptr));
  AlignedBuffer block(kBlockSize);
  EncodeSuperblock(*sb, block.data());
  INSITU_RETURN_IF_ERROR(
      dev->Write(0, block.data(), kBlockSize, false).Annotate("writing primary superblock"));
  INSITU_RETURN_IF_ERROR(dev->Flush().Annotate("flushing primary superblock"));
  INSITU_RETURN_IF_ERROR(dev->Write(sb->backup_offset, block.data(), kBlockSize, false)
                             .Annotate("writing backup superblock"));
  return dev->Flush().Annotate("flushing backup superblock");
}

}  // namespace insitu
