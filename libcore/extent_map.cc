#include "libcore/extent_map.h"

#include <algorithm>

#include "libcore/format.h"

namespace insitu {

using format::kMetaLengthMask;
using format::kMetaTailBit;

namespace {

Status Bad(uint32_t block, const std::string& what) {
  return Status::Corruption("metadata of block " + std::to_string(block) + " in its slot: " + what);
}

}  // namespace

Status DecodeSlot(const uint8_t* entries, uint32_t n, std::vector<SlotExtent>* out) {
  out->clear();
  uint32_t i = 0;
  while (i < n) {
    if (entries[i] & ~(kMetaLengthMask | kMetaTailBit)) return Bad(i, "stray bits set");
    if (entries[i] & kMetaTailBit) return Bad(i, "extent tail without a head");
    uint32_t j = i + 1;
    if (entries[i] == format::kMetaBadBlock) {
      if (j < n && (entries[j] & kMetaTailBit)) return Bad(i, "bad block followed by tails");
      out->push_back(SlotExtent{i, 1, 0, true});
      i = j;
      continue;
    }
    while (j < n && (entries[j] & kMetaTailBit)) ++j;
    SlotExtent e;
    e.first = i;
    e.nblocks = j - i;
    for (uint32_t k = i; k < j; ++k) {
      if (entries[k] & ~(kMetaLengthMask | kMetaTailBit)) return Bad(k, "stray bits set");
      const uint32_t len = entries[k] & kMetaLengthMask;
      if (len > format::kSectorsPerBlock) return Bad(k, "length " + std::to_string(len) + " > 8");
      e.sectors += len;
    }
    if (e.sectors == 0 && e.nblocks > 1) return Bad(i, "unwritten block followed by tails");
    // The lengths must be exactly the greedy charge of the total.
    uint32_t left = e.sectors;
    for (uint32_t k = i; k < j; ++k) {
      const uint32_t expect = std::min(left, format::kSectorsPerBlock);
      if ((entries[k] & kMetaLengthMask) != expect)
        return Bad(k, "payload length not charged in order");
      left -= expect;
    }
    out->push_back(e);
    i = j;
  }
  return Status::OK();
}

void EncodeExtent(uint32_t nblocks, uint32_t sectors, uint8_t* entries) {
  uint32_t left = sectors;
  for (uint32_t k = 0; k < nblocks; ++k) {
    const uint32_t len = std::min(left, format::kSectorsPerBlock);
    left -= len;
    entries[k] = static_cast<uint8_t>(len | (k == 0 ? 0 : kMetaTailBit));
  }
}

}  // namespace insitu
