// Creating a volume, and recognizing what a device already holds.
#include <algorithm>
#include <cstring>
#include <ctime>
#include <random>

#include "libcore/aligned_buffer.h"
#include "libcore/superblock.h"
#include "libcore/volume.h"

namespace insitu {

using format::kBlockSize;

uint32_t DefaultSegmentBlocks(CodecId codec, uint32_t extent_max_blocks) {
  constexpr uint32_t kBlocks = 4;
  const bool fast = codec == CodecId::kLz4 || codec == CodecId::kLzo;
  return fast && extent_max_blocks > kBlocks ? kBlocks : 0;
}

Status FormatVolume(BlockDevice* dev, const FormatOptions& opts) {
  const uint32_t extent_max = opts.extent_max_blocks;
  if (extent_max == 0 || extent_max > format::kMaxExtentBlocks ||
      (extent_max & (extent_max - 1)) != 0) {
    return Status::InvalidArgument("extent size must be a power of two from 4 KiB to 128 KiB");
  }
  const uint32_t segment = opts.segment_blocks;
  if (segment != 0 && (segment >= extent_max || (segment & (segment - 1)) != 0)) {
    return Status::InvalidArgument(
        "segment size must be a power of two from 4 KiB and smaller than the extent size");
  }
  std::unique_ptr<Codec> codec;
  INSITU_RETURN_IF_ERROR(Codec::Create(opts.codec, &codec));
  if (opts.codec.level < INT8_MIN || opts.codec.level > INT8_MAX) {
    return Status::InvalidArgument("compression level out of range");
  }

  format::Superblock sb{};
  INSITU_RETURN_IF_ERROR(ComputeGeometry(dev->Size(), &sb));
  sb.magic = format::kSuperMagic;
  sb.version = format::kSuperVersion;
  sb.incompat = format::kIncompatBackPayloads | format::kIncompatPatchedBlocks;
  sb.header_bytes = sizeof(format::Superblock);
  sb.block_size = kBlockSize;
  std::random_device rd;
  for (auto& b : sb.uuid) b = static_cast<uint8_t>(rd());
  sb.uuid[6] = static_cast<uint8_t>((sb.uuid[6] & 0x0f) | 0x40);  // RFC 4122 version 4
  sb.uuid[8] = static_cast<uint8_t>((sb.uuid[8] & 0x3f) | 0x80);
  sb.codec = static_cast<uint8_t>(opts.codec.id);
  sb.codec_level = static_cast<int8_t>(opts.codec.level);
  sb.meta_mode = static_cast<uint8_t>(opts.meta_mode);
  sb.meta_interval_s = opts.meta_interval_s;
  sb.extent_max_blocks = extent_max;
  sb.segment_blocks = static_cast<uint8_t>(segment);
  if (segment != 0) sb.incompat |= format::kIncompatSegmentedPayloads;
  sb.state = static_cast<uint32_t>(format::VolumeState::kClean);
  sb.next_write_seq = 1;
  sb.format_time = static_cast<uint64_t>(std::time(nullptr));

  // Old signatures die first: the primary superblock block is zeroed before
  // anything else, so an interrupted format never looks like a valid volume
  // or like the file system it replaced.
  AlignedBuffer zero(kBlockSize);
  INSITU_RETURN_IF_ERROR(dev->Write(0, zero.data(), kBlockSize, false).Annotate("formatting"));
  // Every metadata slot must read as zero (a never-written page) and the
  // journal must hold no record (a previous volume's records would look
  // valid); both regions are contiguous.
  INSITU_RETURN_IF_ERROR(dev->WriteZeroes(sb.meta_offset, sb.data_offset - sb.meta_offset, false)
                             .Annotate("clearing the metadata area and journal"));
  // The data area content is irrelevant, so it is only discarded.
  (void)dev->Discard(sb.data_offset, sb.backup_offset - sb.data_offset);
  INSITU_RETURN_IF_ERROR(dev->Flush().Annotate("formatting"));
  sb.meta_bytes_written = 2 * kBlockSize;
  return WriteSuperblocks(dev, &sb);
}

std::string ProbeExisting(BlockDevice* dev) {
  const uint64_t size = dev->Size();
  constexpr size_t kProbe = 128 * 1024;
  if (size < 4096) return "";
  AlignedBuffer buf(kProbe);
  const size_t n = static_cast<size_t>(std::min<uint64_t>(kProbe, size));
  if (!dev->Read(0, buf.data(), n).ok()) return "";
  const uint8_t* p = buf.data();
  auto at = [&](size_t off, const void* magic, size_t len) {
    return off + len <= n && std::memcmp(p + off, magic, len) == 0;
  };
  uint64_t magic;
  std::memcpy(&magic, p, sizeof(magic));
  if (magic == format::kSuperMagic) return "an insitu volume";
  const uint8_t ext_magic[] = {0x53, 0xef};
  if (at(1080, ext_magic, 2)) return "an ext2/ext3/ext4 file system";
  if (at(0, "XFSB", 4)) return "an XFS file system";
  if (at(65536 + 64, "_BHRfS_M", 8)) return "a btrfs file system";
  if (at(0, "LUKS\xba\xbe", 6)) return "a LUKS encrypted volume";
  if (at(4086, "SWAPSPACE2", 10)) return "a swap area";
  if (at(512, "EFI PART", 8)) return "a GPT partition table";
  if (at(3, "NTFS    ", 8)) return "an NTFS file system";
  if (at(54, "FAT", 3) || at(82, "FAT32", 5)) return "a FAT file system";
  const uint8_t mbr[] = {0x55, 0xaa};
  if (at(510, mbr, 2)) return "a partition table or boot sector";
  // A volume whose primary superblock is gone still has its backup.
  AlignedBuffer last(kBlockSize);
  if (dev->Read((size / kBlockSize - 1) * kBlockSize, last.data(), kBlockSize).ok()) {
    std::memcpy(&magic, last.data(), sizeof(magic));
    if (magic == format::kSuperMagic) return "an insitu volume (primary superblock damaged)";
  }
  return "";
}

}  // namespace insitu
