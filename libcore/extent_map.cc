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

uint32_t SlotExtent::payload_units() const {
  const uint32_t start = payload_start() / format::kSectorsPerBlock;
  const uint32_t end =
      (payload_start() + sectors + format::kSectorsPerBlock - 1) / format::kSectorsPerBlock;
  return UnitMask(start, end - start);
}

uint32_t SlotExtent::used_units() const { return (payload_units() | patched) << first; }

uint32_t SlotExtent::patchable() const {
  return compressed() ? UnitMask(1, nblocks - 1) & ~payload_units() : 0;
}

bool CanPlaceBack(uint32_t nblocks, uint32_t sectors) {
  const uint32_t place = nblocks * format::kSectorsPerBlock;
  return sectors >= 1 && sectors < place &&
         sectors <= place - format::kSectorsPerBlock + format::kMaxBackHeadCharge;
}

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
    e.back = entries[i] >= format::kMetaBackHead;
    // charge[k]: the payload sectors entry k carries.
    uint32_t charge[format::kMaxExtentBlocks];
    for (uint32_t k = i; k < j; ++k) {
      if (entries[k] & ~(kMetaLengthMask | kMetaTailBit)) return Bad(k, "stray bits set");
      if (entries[k] == format::kMetaPatched) {
        e.patched |= 1u << (k - i);
        charge[k - i] = 0;
        continue;
      }
      uint32_t len = entries[k] & kMetaLengthMask;
      if (k == i && e.back) len -= format::kMetaBackHead;
      if (len > format::kSectorsPerBlock) return Bad(k, "length " + std::to_string(len) + " > 8");
      charge[k - i] = len;
      e.sectors += len;
    }
    if (e.sectors == 0 && (e.nblocks > 1 || e.back)) {
      return Bad(i, "unwritten block followed by tails");
    }
    if (e.back && !CanPlaceBack(e.nblocks, e.sectors)) {
      return Bad(i, "payload of " + std::to_string(e.sectors) + " sectors cannot sit at the back");
    }
    // The lengths must be exactly the greedy charge of the total, from the
    // head (front payloads) or from the last block (back payloads); a
    // patched block counts as charged 0, so it lies where the payload does
    // not (and is never the head: a patch is a tail entry).
    uint32_t left = e.sectors;
    for (uint32_t step = 0; step < e.nblocks; ++step) {
      const uint32_t k = e.back ? e.nblocks - 1 - step : step;
      const uint32_t expect = std::min(left, format::kSectorsPerBlock);
      if (charge[k] != expect) return Bad(i + k, "payload length not charged in order");
      left -= expect;
    }
    out->push_back(e);
    i = j;
  }
  return Status::OK();
}

void EncodeExtent(uint32_t nblocks, uint32_t sectors, uint8_t* entries, bool back,
                  uint32_t patched) {
  uint32_t left = sectors;
  for (uint32_t step = 0; step < nblocks; ++step) {
    const uint32_t k = back ? nblocks - 1 - step : step;
    const uint32_t len = std::min(left, format::kSectorsPerBlock);
    left -= len;
    entries[k] = static_cast<uint8_t>(len | (k == 0 ? 0 : kMetaTailBit));
  }
  if (back) entries[0] = static_cast<uint8_t>(entries[0] + format::kMetaBackHead);
  for (uint32_t k = 0; k < nblocks; ++k) {
    if (patched >> k & 1) entries[k] = format::kMetaPatched;
  }
}

}  // namespace insitu
