// Fuzzes the metadata area: DecodeMetaPage() on both slots of a page, the
// choice between them in MetaBitmap::Load(), and DecodeSlot() over every
// slot of what was loaded.
//
// Input: [control][data blocks, u16 LE][slot 0, 4 KiB][slot 1, 4 KiB]
//   control bits 0, 1: recompute the CRC of slot 0, slot 1 (so that most
//                      runs reach the checks behind the checksum)
//   control bits 2-4:  extent size, 1 << (n % 6) blocks
//   control bit 5:     load the page with MetaBitmap::Load() as open does;
//                      otherwise decode each slot with DecodeMetaPage()
//                      (Load() reads in 1 MiB chunks, which under ASan is
//                      a hundred times slower)
// Short slots are zero padded; a zero slot is a never-written page.
//
// The volume has one metadata page.  A slot that decodes re-encodes to one
// that decodes the same; every extent slot of a decoded or loaded page
// either decodes into extents that tile it, or is reported corrupt; a page
// loads only if one of its slots decodes; and a page written back by a
// commit loads again with the same entries.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "libcore/crc32c.h"
#include "libcore/extent_map.h"
#include "libcore/format.h"
#include "libcore/mem_device.h"
#include "libcore/meta_bitmap.h"

namespace {

using insitu::format::kBlockSize;
using insitu::format::kBlocksPerMetaPage;

void Require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "meta_page_fuzz: %s\n", what);
  std::abort();
}

// The CRC as format.h defines it: the whole slot with the crc field zero.
void FixCrc(uint8_t* slot) {
  constexpr size_t kCrcAt = offsetof(insitu::format::MetaPageHeader, crc);
  std::memset(slot + kCrcAt, 0, sizeof(uint32_t));
  const uint32_t crc = insitu::Crc32c(0, slot, kBlockSize);
  std::memcpy(slot + kCrcAt, &crc, sizeof(crc));
}

std::vector<uint8_t> Entries(const insitu::MetaBitmap& meta, uint64_t blocks) {
  std::vector<uint8_t> entries(blocks);
  meta.GetRange(0, static_cast<uint32_t>(blocks), entries.data());
  return entries;
}

// Decodes one slot; when it is valid, its extents must tile it and encode
// back to exactly the entries they came from.
void CheckSlot(const uint8_t* entries, uint32_t n) {
  std::vector<insitu::SlotExtent> extents;
  if (!insitu::DecodeSlot(entries, n, &extents).ok()) return;
  uint32_t next = 0;
  for (const insitu::SlotExtent& e : extents) {
    Require(e.first == next && e.nblocks > 0, "extents do not tile the slot");
    next += e.nblocks;
    if (e.bad) {
      Require(e.nblocks == 1 && entries[e.first] == insitu::format::kMetaBadBlock,
              "a bad block decoded from other entries");
      continue;
    }
    Require(e.sectors <= e.nblocks * insitu::format::kSectorsPerBlock, "payload exceeds extent");
    uint8_t encoded[insitu::format::kMaxExtentBlocks];
    insitu::EncodeExtent(e.nblocks, e.sectors, encoded, e.back, e.patched);
    Require(std::memcmp(encoded, entries + e.first, e.nblocks) == 0,
            "decoded extent encodes to other entries");
  }
  Require(next == n, "extents do not cover the slot");
}

// The entries of a page's bitmap as format.h defines them (5 bits each,
// little-endian bit order), unpacked here independently of MetaBitmap.
std::vector<uint8_t> Unpack(const uint8_t* bits, uint64_t blocks) {
  std::vector<uint8_t> entries(blocks);
  for (uint64_t i = 0; i < blocks; ++i) {
    const uint64_t bit = i * insitu::format::kMetaBitsPerBlock;
    uint32_t v = bits[bit / 8];
    if (bit / 8 + 1 < insitu::format::kMetaBitmapBytes) v |= uint32_t{bits[bit / 8 + 1]} << 8;
    entries[i] = static_cast<uint8_t>((v >> (bit % 8)) & 0x1f);
  }
  return entries;
}

void CheckSlots(const std::vector<uint8_t>& entries, uint32_t extent_blocks) {
  for (uint64_t first = 0; first < entries.size(); first += extent_blocks) {
    const uint64_t n = std::min<uint64_t>(entries.size() - first, extent_blocks);
    CheckSlot(entries.data() + first, static_cast<uint32_t>(n));
  }
}

// One slot through DecodeMetaPage(): a written slot that decodes must
// encode back to one that decodes the same, and its extent slots must
// decode into extents or be refused.
void CheckDecode(const uint8_t* slot, uint64_t data_blocks, uint32_t extent_blocks) {
  uint64_t sequence;
  uint8_t bits[insitu::format::kMetaBitmapBytes];
  if (!insitu::DecodeMetaPage(slot, 0, &sequence, bits).ok()) return;
  // A never-written (all-zero) slot has no encoding of its own.
  if (sequence == 0) return;
  uint8_t again[kBlockSize];
  insitu::EncodeMetaPage(0, sequence, bits, again);
  uint64_t sequence2;
  uint8_t bits2[insitu::format::kMetaBitmapBytes];
  Require(insitu::DecodeMetaPage(again, 0, &sequence2, bits2).ok(), "re-encoded page is refused");
  Require(sequence2 == sequence && std::memcmp(bits, bits2, sizeof(bits)) == 0,
          "re-encoded page decodes differently");
  CheckSlots(Unpack(bits, data_blocks), extent_blocks);
}

// The page through MetaBitmap::Load(), as open reads it, then written back
// by a commit (pin and unpin as a write does, snapshot, write, finish) and
// loaded again.
void CheckLoad(insitu::MemDevice* dev, const insitu::format::Superblock& sb,
               uint32_t extent_blocks) {
  const uint8_t* slots = dev->contents().data() + sb.meta_offset;
  uint64_t sequence;
  uint8_t bits[insitu::format::kMetaBitmapBytes];
  const bool slot0_ok = insitu::DecodeMetaPage(slots, 0, &sequence, bits).ok();
  const bool slot1_ok = insitu::DecodeMetaPage(slots + kBlockSize, 0, &sequence, bits).ok();

  insitu::MetaBitmap meta(dev, sb);
  const auto quiet = [](const std::string&) {};
  if (!meta.Load(quiet).ok()) return;
  Require(slot0_ok || slot1_ok, "a page loaded although neither slot decodes");
  const std::vector<uint8_t> entries = Entries(meta, sb.data_blocks);
  CheckSlots(entries, extent_blocks);

  insitu::SlotViews views;
  const auto nothing = [](const insitu::SlotViews&) { return insitu::Status::OK(); };
  Require(meta.Pin(0, 1, &views, nothing).ok(), "pinning the page fails");
  meta.Unpin(0, 1, entries.data());
  Require(meta.SnapshotPage(0), "a written page is not dirty");
  Require(meta.WriteSnapshot(0).ok(), "writing the page back fails");
  meta.FinishSnapshot(0, true);
  insitu::MetaBitmap reloaded(dev, sb);
  Require(reloaded.Load(quiet).ok(), "a page written back does not load");
  Require(Entries(reloaded, sb.data_blocks) == entries, "a page written back loads other entries");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const uint8_t control = data[0];
  const uint64_t data_blocks = (data[1] | (data[2] << 8)) % kBlocksPerMetaPage + 1;
  const uint32_t extent_blocks = 1u << ((control >> 2) % 6);
  data += 3;
  size -= 3;

  insitu::format::Superblock sb{};
  sb.meta_offset = kBlockSize;
  sb.meta_pages = 1;
  sb.data_blocks = data_blocks;
  insitu::MemDevice dev(3 * kBlockSize);
  uint8_t* slots = dev.contents().data() + sb.meta_offset;
  std::memcpy(slots, data, size < 2 * kBlockSize ? size : 2 * kBlockSize);
  if (control & 1) FixCrc(slots);
  if (control & 2) FixCrc(slots + kBlockSize);

  if (!(control & 0x20)) {
    for (int s = 0; s < 2; ++s) CheckDecode(slots + s * kBlockSize, data_blocks, extent_blocks);
    return 0;
  }
  CheckLoad(&dev, sb, extent_blocks);
  return 0;
}
