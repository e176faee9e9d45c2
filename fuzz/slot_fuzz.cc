// Fuzzes DecodeSlot(), which turns a slot's 5-bit metadata entries into
// extents for the read and write paths, dump and fsck.
//
// Input: one byte per block entry, at most kMaxExtentBlocks of them, cut to
// 5 bits as MetaBitmap hands them out (DecodeSlot() checks stray high bits
// only on extent heads, so unmasked tails would be false alarms).
//
// Entries that decode must give extents that tile the slot, each a single
// bad block or one with a payload its blocks can hold that encodes back to
// exactly the same entries:
// the format allows one encoding per extent, so a second accepted spelling
// would let two readers disagree about where payloads end.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "libcore/extent_map.h"
#include "libcore/format.h"

namespace {

using insitu::format::kSectorsPerBlock;

void Require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "slot_fuzz: accepted slot breaks: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > insitu::format::kMaxExtentBlocks) return 0;
  const uint32_t n = static_cast<uint32_t>(size);
  uint8_t entries[insitu::format::kMaxExtentBlocks];
  for (uint32_t i = 0; i < n; ++i) entries[i] = data[i] & 0x1f;
  std::vector<insitu::SlotExtent> extents;
  if (!insitu::DecodeSlot(entries, n, &extents).ok()) return 0;

  uint32_t next = 0;
  for (const insitu::SlotExtent& e : extents) {
    Require(e.first == next, "extents leave a gap or overlap");
    Require(e.nblocks > 0, "empty extent");
    next += e.nblocks;
    if (e.bad) {
      Require(e.nblocks == 1 && entries[e.first] == insitu::format::kMetaBadBlock,
              "a bad block decoded from other entries");
      continue;
    }
    Require(e.sectors <= e.nblocks * kSectorsPerBlock, "payload larger than its blocks");
    Require(!e.unwritten() || e.nblocks == 1, "unwritten run of several blocks");
    uint8_t encoded[insitu::format::kMaxExtentBlocks];
    Require((e.patched & ~e.patchable()) == 0, "a patched block where the payload lies");
    insitu::EncodeExtent(e.nblocks, e.sectors, encoded, e.back, e.patched);
    Require(std::memcmp(encoded, entries + e.first, e.nblocks) == 0,
            "extent encodes to other entries");
  }
  Require(next == n, "extents do not cover the slot");
  return 0;
}
