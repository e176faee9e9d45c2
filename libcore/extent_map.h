// ExtentMap: decoding and encoding the per-block metadata entries of one
// slot (extent_max_blocks consecutive, aligned blocks) into extents.
//
// Pure functions over arrays of 5-bit entries (format.h explains the bits);
// the volume, dump and fsck all use them, so the rules live only here:
//  - a slot starts with a head (tail bit clear);
//  - a head with length 0 is a single unwritten block, a head with length
//    15 a single bad block (no tail follows either);
//  - a front payload's lengths are the greedy charge of its payload length
//    P from the head (head min(P,8), then min(P-8,8), ...),
//    1 <= P <= 8*nblocks; P == 8*nblocks means raw storage, anything less a
//    compressed payload;
//  - a back payload (head entry kMetaBackHead + h) is compressed, charged
//    greedily from the last block backwards, the head carrying h <= 5;
//  - a tail of a compressed extent that the greedy charge gives no sectors
//    may be patched (kMetaPatched): its data is raw at its own place.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "libcore/status.h"

namespace insitu {

struct SlotExtent {
  uint32_t first = 0;  // block index within the slot
  uint32_t nblocks = 0;
  uint32_t sectors = 0;  // payload sectors; 0 for an unwritten or bad block
  bool bad = false;      // data lost; reads fail until the block is rewritten
  bool back = false;     // compressed payload at the back of the extent's place
  // Bit k: the extent's block k (never its head) is patched, its data raw
  // at its own place instead of in the payload.  Only compressed extents.
  uint32_t patched = 0;
  bool unwritten() const { return sectors == 0 && !bad; }
  bool raw() const { return !bad && sectors == nblocks * 8; }
  bool compressed() const { return sectors != 0 && !raw(); }
  // First payload sector, counted from the start of the extent's place.
  uint32_t payload_start() const { return back ? nblocks * 8 - sectors : 0; }
  bool is_patched(uint32_t slot_block) const { return (patched >> (slot_block - first) & 1) != 0; }
  // The extent's blocks whose places hold payload sectors (bit k: block k).
  uint32_t payload_units() const;
  // The 4 KiB units of the slot that the payload and the patched blocks
  // occupy (a bitmask).
  uint32_t used_units() const;
  // The blocks of the extent the payload leaves room for (bit k: block k,
  // a tail whose place holds none of the payload's sectors): where a patch
  // may go.  0 unless compressed.
  uint32_t patchable() const;
};

// Bitmask of the `count` 4 KiB units of a slot starting at unit `first`
// (first + count <= 32).
constexpr uint32_t UnitMask(uint32_t first, uint32_t count) {
  return ((count == 32 ? 0u : (1u << count)) - 1u) << first;
}

// Decodes entries[0, n) of one slot.  Returns kCorruption (naming the bad
// block by its index in the slot) when the entries break a rule above.
Status DecodeSlot(const uint8_t* entries, uint32_t n, std::vector<SlotExtent>* out);

// Writes the entries of one extent of nblocks blocks with a payload of
// `sectors` sectors (0 only when nblocks == 1: an unwritten block), at the
// front of its place or, when `back` (CanPlaceBack() must hold), at the back,
// with the blocks in `patched` (a subset of SlotExtent::patchable()) patched.
void EncodeExtent(uint32_t nblocks, uint32_t sectors, uint8_t* entries, bool back = false,
                  uint32_t patched = 0);

// Whether a compressed payload of `sectors` sectors can be encoded at the
// back of an extent of nblocks blocks (its head may carry at most 5).
bool CanPlaceBack(uint32_t nblocks, uint32_t sectors);

}  // namespace insitu
