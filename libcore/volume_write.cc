// The insitu write path.  Writes, write-zeroes and discards all come here.
//
// For each slot (extent_max_blocks aligned blocks) the request touches:
//  1. decode the slot's extents from the metadata bitmap;
//  2. widen the range to whole extents: every extent the request touches is
//     rewritten as a whole (its untouched blocks are read back first — the
//     read-modify-write of a partly covered extent);
//  3. overlay the new bytes (or zeros);
//  4. split the merged range into maximal runs of non-zero blocks; each run
//     becomes one extent, compressed if that saves at least one sector, and
//     its payload is written at the run's own place; all-zero blocks become
//     unwritten (no payload at all);
//  5. update the bitmap entries of the merged range;
//  6. collect the 4 KiB units the old extents' payloads used and the new
//     ones do not, and discard them after the metadata is written.
// The ExtentLock is held exclusively over the request's lock units for the
// whole sequence, so readers never see a half-rewritten slot.
#include <algorithm>
#include <cstring>
#include <set>

#include "libcore/aligned_buffer.h"
#include "libcore/payload.h"
#include "libcore/volume_impl.h"

namespace insitu {

using format::kBlockSize;
using format::kMaxExtentBlocks;

namespace {

struct WriteScratch {
  AlignedBuffer merged{kMaxExtentBlocks * kBlockSize};
  AlignedBuffer payload{kMaxExtentBlocks * kBlockSize};
};
WriteScratch& GetWriteScratch() {
  thread_local WriteScratch scratch;
  return scratch;
}

bool IsZeroBlock(const uint8_t* p) {
  // The caller's buffer may be unaligned; memcpy keeps the loads defined
  // and still compiles to plain 8-byte loads.
  uint64_t acc = 0;
  for (size_t i = 0; i < kBlockSize; i += sizeof(uint64_t)) {
    uint64_t w;
    std::memcpy(&w, p + i, sizeof(w));
    acc |= w;
  }
  return acc == 0;
}

struct PendingDiscard {
  uint64_t offset;
  uint64_t len;
};

}  // namespace

// One slot's share of a Modify(); see the file comment for the steps.
class SlotRewrite {
 public:
  SlotRewrite(InsituVolume::Impl& v, uint64_t slot_first, std::vector<PendingDiscard>* discards)
      : v_(v), slot_first_(slot_first), discards_(discards) {}

  // Replaces slot-relative bytes [lo, hi) with src (or zeros when null).
  Status Run(uint64_t lo, uint64_t hi, const uint8_t* src, bool fua);

 private:
  Status LoadOldContents(const std::vector<SlotExtent>& old, uint32_t m0, uint32_t b_lo,
                         uint32_t b_hi, uint64_t lo, uint64_t hi, uint8_t* merged);
  Status WriteRun(const uint8_t* data, uint32_t r0, uint32_t n, bool fua, uint32_t* sectors);

  InsituVolume::Impl& v_;
  const uint64_t slot_first_;
  std::vector<PendingDiscard>* discards_;
};

Status SlotRewrite::LoadOldContents(const std::vector<SlotExtent>& old, uint32_t m0, uint32_t b_lo,
                                    uint32_t b_hi, uint64_t lo, uint64_t hi, uint8_t* merged) {
  // Blocks whose old bytes survive: outside [b_lo, b_hi), or the partly
  // covered first and last blocks of the request.
  auto needs_old = [&](uint32_t b) {
    return b < b_lo || b >= b_hi || (b == b_lo && lo % kBlockSize != 0) ||
           (b == b_hi - 1 && hi % kBlockSize != 0);
  };
  for (const SlotExtent& e : old) {
    uint32_t first = UINT32_MAX, last = 0;
    for (uint32_t b = e.first; b < e.first + e.nblocks; ++b) {
      if (b >= m0 && needs_old(b)) {
        first = std::min(first, b);
        last = b;
      }
    }
    if (first == UINT32_MAX) continue;
    INSITU_RETURN_IF_ERROR(v_.ReadExtentBlocks(slot_first_, e, slot_first_ + first,
                                               slot_first_ + last + 1,
                                               merged + size_t{first - m0} * kBlockSize));
  }
  return Status::OK();
}

Status SlotRewrite::WriteRun(const uint8_t* data, uint32_t r0, uint32_t n, bool fua,
                             uint32_t* sectors) {
  const uint64_t head = slot_first_ + r0;
  const size_t bytes = size_t{n} * kBlockSize;
  // A compressed payload must save at least one sector, trailer included.
  const size_t cap = bytes - format::kSectorSize - sizeof(format::PayloadTrailer);
  uint8_t* payload = GetWriteScratch().payload.data();
  const size_t clen = v_.codec->Compress(data, bytes, payload, cap);
  Status st;
  if (clen == 0) {
    *sectors = n * format::kSectorsPerBlock;
    st = v_.dev->Write(v_.BlockOffset(head), data, bytes, fua);
  } else {
    *sectors = format::PayloadSectors(static_cast<uint32_t>(clen));
    uint64_t seq;
    INSITU_RETURN_IF_ERROR(v_.NextWriteSeq(&seq));
    SealPayload(payload, static_cast<uint32_t>(clen), *sectors,
                {head, static_cast<uint16_t>(n), v_.codec->id()}, seq);
    st = v_.dev->Write(v_.BlockOffset(head), payload, size_t{*sectors} * format::kSectorSize, fua);
  }
  if (!st.ok()) return st.Annotate("writing extent at block " + std::to_string(head));
  v_.payload_written.fetch_add(uint64_t{*sectors} * format::kSectorSize);
  return Status::OK();
}

Status SlotRewrite::Run(uint64_t lo, uint64_t hi, const uint8_t* src, bool fua) {
  std::vector<SlotExtent> old;
  INSITU_RETURN_IF_ERROR(v_.ReadSlot(slot_first_, &old));
  const auto b_lo = static_cast<uint32_t>(lo / kBlockSize);
  const auto b_hi = static_cast<uint32_t>((hi + kBlockSize - 1) / kBlockSize);

  // The merged range: the request widened to the extents it touches.
  uint32_t m0 = b_lo, m1 = b_hi;
  std::vector<SlotExtent> touched;
  for (const SlotExtent& e : old) {
    if (e.first < b_hi && e.first + e.nblocks > b_lo) {
      m0 = std::min(m0, e.first);
      m1 = std::max(m1, e.first + e.nblocks);
      touched.push_back(e);
    }
  }

  // The new contents of [m0, m1).  A block-aligned write covering whole
  // extents is compressed straight from the caller's buffer.
  const bool direct = src != nullptr && lo % kBlockSize == 0 && hi % kBlockSize == 0 &&
                      m0 == b_lo && m1 == b_hi;
  const uint8_t* data;
  if (direct) {
    data = src;
  } else {
    uint8_t* merged = GetWriteScratch().merged.data();
    INSITU_RETURN_IF_ERROR(LoadOldContents(touched, m0, b_lo, b_hi, lo, hi, merged));
    uint8_t* at = merged + (lo - uint64_t{m0} * kBlockSize);
    if (src != nullptr) {
      std::memcpy(at, src, hi - lo);
    } else {
      std::memset(at, 0, hi - lo);
    }
    data = merged;
  }

  // Emit extents for the runs of non-zero blocks.
  uint8_t entries[kMaxExtentBlocks] = {};
  uint32_t new_used = 0;  // bitmask of 4 KiB units the new payloads occupy
  int64_t d_compressed = 0, d_raw = 0, d_sectors = 0;
  auto is_zero = [&](uint32_t b) {
    const bool fully_zeroed = src == nullptr && uint64_t{b} * kBlockSize >= lo &&
                              uint64_t{b + 1} * kBlockSize <= hi;
    return fully_zeroed || IsZeroBlock(data + size_t{b - m0} * kBlockSize);
  };
  for (uint32_t b = m0; b < m1;) {
    if (is_zero(b)) {
      ++b;
      continue;
    }
    uint32_t e = b + 1;
    while (e < m1 && !is_zero(e)) ++e;
    const uint32_t n = e - b;
    uint32_t sectors;
    INSITU_RETURN_IF_ERROR(WriteRun(data + size_t{b - m0} * kBlockSize, b, n, fua, &sectors));
    EncodeExtent(n, sectors, entries + (b - m0));
    const uint32_t used = (sectors + 7) / 8;
    new_used |= ((used == 32 ? 0u : (1u << used)) - 1u) << b;
    if (sectors == n * format::kSectorsPerBlock) {
      d_raw += n;
    } else {
      d_compressed += n;
      d_sectors += sectors;
    }
    b = e;
  }

  uint32_t old_used = 0;
  for (const SlotExtent& e : touched) {
    const uint32_t used = e.used_blocks();
    old_used |= ((used == 32 ? 0u : (1u << used)) - 1u) << e.first;
    if (e.raw()) d_raw -= e.nblocks;
    if (e.compressed()) {
      d_compressed -= e.nblocks;
      d_sectors -= e.sectors;
    }
  }
  v_.meta.SetRange(slot_first_ + m0, m1 - m0, entries);
  v_.blocks_compressed += d_compressed;
  v_.blocks_raw += d_raw;
  v_.payload_sectors += d_sectors;

  const uint32_t freed = old_used & ~new_used;
  for (uint32_t b = 0; b < kMaxExtentBlocks;) {
    if (!(freed & (1u << b))) {
      ++b;
      continue;
    }
    uint32_t e = b;
    while (e < kMaxExtentBlocks && (freed & (1u << e))) ++e;
    discards_->push_back({v_.BlockOffset(slot_first_ + b), uint64_t{e - b} * kBlockSize});
    b = e;
  }
  return Status::OK();
}

Status InsituVolume::Impl::Modify(uint64_t offset, uint64_t len, const uint8_t* src, bool fua) {
  if (closed) return Status::InvalidArgument("volume is closed");
  if (len == 0) return Status::OK();
  const uint64_t end = offset + len;
  const uint64_t slot_bytes = uint64_t{slot_blocks()} * kBlockSize;
  std::vector<PendingDiscard> discards;
  std::set<uint64_t> pages;
  {
    auto guard = LockBlocks(offset / kBlockSize, (end + kBlockSize - 1) / kBlockSize, true);
    for (uint64_t slot_start = offset / slot_bytes * slot_bytes; slot_start < end;
         slot_start += slot_bytes) {
      const uint64_t lo = std::max(offset, slot_start), hi = std::min(end, slot_start + slot_bytes);
      const uint64_t slot_first = slot_start / kBlockSize;
      SlotRewrite rewrite(*this, slot_first, &discards);
      INSITU_RETURN_IF_ERROR(rewrite.Run(lo - slot_start, hi - slot_start,
                                         src ? src + (lo - offset) : nullptr, fua));
      pages.insert(meta.PageOf(slot_first));
    }
    // Write-through, and FUA in write-back mode: the metadata describing
    // this write goes out before the request completes.
    if (fua || sb.meta_mode == static_cast<uint8_t>(format::MetaMode::kWriteThrough)) {
      for (uint64_t page : pages) INSITU_RETURN_IF_ERROR(meta.WritePage(page, fua));
    }
  }
  // Space no payload uses any more goes back to the device.  A discard is
  // advisory: failing to return space loses nothing.
  for (const PendingDiscard& d : discards) (void)dev->Discard(d.offset, d.len);
  return Status::OK();
}

}  // namespace insitu
