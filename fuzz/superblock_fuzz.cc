// Fuzzes DecodeSuperblock(), the first thing open and fsck believe.
//
// Input: [control][4 KiB block, zero padded][optional device size, u64 LE]
//   control bit 0: recompute the block's CRC first, so that most runs get
//                  past the checksum to the field and geometry checks.
// Without the size suffix the device is as large as the block says.
//
// A block that decodes must describe a layout open can use without reading
// outside the device or its own regions, and must survive an encode/decode
// round trip unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "libcore/crc32c.h"
#include "libcore/format.h"
#include "libcore/superblock.h"

namespace {

using insitu::format::kBlockSize;
using insitu::format::Superblock;

void Require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "superblock_fuzz: accepted superblock breaks: %s\n", what);
  std::abort();
}

// The CRC as format.h defines it: over the header with the crc field zero.
void FixCrc(uint8_t* block) {
  Superblock sb;
  std::memcpy(&sb, block, sizeof(sb));
  sb.crc = 0;
  sb.crc = insitu::Crc32c(0, &sb, sizeof(sb));
  std::memcpy(block, &sb, sizeof(sb));
}

void CheckLayout(const Superblock& sb, uint64_t device_size) {
  const uint64_t meta_end = sb.meta_offset + sb.meta_pages * 2 * kBlockSize;
  Require(sb.meta_offset >= kBlockSize, "metadata overlaps the primary superblock");
  Require(sb.meta_offset % kBlockSize == 0 && sb.data_offset % kBlockSize == 0 &&
              sb.backup_offset % kBlockSize == 0,
          "a region is not 4 KiB aligned");
  Require(meta_end <= sb.data_offset, "metadata overlaps the data area");
  Require(sb.data_blocks > 0, "no data blocks");
  Require(sb.meta_pages * insitu::format::kBlocksPerMetaPage >= sb.data_blocks,
          "too few metadata pages for the data blocks");
  Require(sb.data_offset + sb.data_blocks * kBlockSize <= sb.backup_offset,
          "data area overlaps the backup superblock");
  Require(sb.backup_offset + kBlockSize <= sb.device_bytes, "backup lies past the volume");
  Require(sb.device_bytes <= device_size, "volume larger than the device");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t control = data[0];
  data++;
  size--;
  uint8_t block[kBlockSize] = {};
  std::memcpy(block, data, size < kBlockSize ? size : kBlockSize);
  if (control & 1) FixCrc(block);
  uint64_t device_size;
  if (size >= kBlockSize + sizeof(device_size)) {
    std::memcpy(&device_size, data + kBlockSize, sizeof(device_size));
  } else {
    std::memcpy(&device_size, block + offsetof(Superblock, device_bytes), sizeof(device_size));
  }

  Superblock sb;
  if (!insitu::DecodeSuperblock(block, device_size, &sb).ok()) return 0;
  CheckLayout(sb, device_size);

  uint8_t again[kBlockSize];
  insitu::EncodeSuperblock(sb, again);
  Superblock round;
  Require(insitu::DecodeSuperblock(again, device_size, &round).ok(), "re-encoding is rejected");
  Require(std::memcmp(&round, &sb, sizeof(sb)) == 0, "re-encoding changes fields");
  return 0;
}
