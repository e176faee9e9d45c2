// The insitu write path.  Writes, write-zeroes and discards all come here.
//
// For each slot (extent_max_blocks aligned blocks) the request touches:
//  1. decode the slot's extents from the metadata bitmap; a write whose
//     blocks all lie beside one compressed extent's payload, in places no
//     copy of the metadata on disk describes, patches them (PatchBlocks)
//     and is done;
//  2. widen the range to whole extents: every extent the request touches is
//     rewritten as a whole (its untouched blocks are read back first — the
//     read-modify-write of a partly covered extent), except that a raw
//     extent rewritten raw with the same bounds keeps its untouched blocks
//     where they are (with codec none they are not even read);
//  3. overlay the new bytes (or zeros);
//  4. split the merged range into maximal runs of non-zero blocks, also cut
//     where SplitCuts says (an old compressed extent the request covers
//     only in part becomes pieces); each run becomes one extent, compressed
//     if that saves at least one sector, its payload placed at the run's
//     own place; all-zero blocks become unwritten (no payload at all);
//  5. pin the metadata page and find the data sectors that a copy of the
//     metadata on disk still refers to ("protected"); if the new payloads
//     overlap them, save those sectors' current bytes in undo records (one
//     per run of them), durable before the overwrite reaches the disk — so a
//     crash at any point can put back exactly what the metadata on disk
//     describes;
//  6. write the payloads in place — or, when they overwrite protected
//     sectors (or sectors with overwrites still queued), queue them in
//     DeferredWrites, whose next drain flushes the undo records first and
//     then writes them — store the new entries, unpin;
//  7. queue the 4 KiB units the old extents used and the new ones do not
//     for discard after the next commit.
// The ExtentLock is held exclusively over the request's lock units for the
// whole sequence, so readers never see a half-rewritten slot.  Write-through
// volumes and FUA requests then commit (volume_commit.cc).
#include <algorithm>
#include <bit>
#include <bitset>
#include <cstring>

#include "libcore/aligned_buffer.h"
#include "libcore/payload.h"
#include "libcore/volume_impl.h"

namespace insitu {

using format::kBlockSize;
using format::kMaxExtentBlocks;
using format::kSectorSize;
using format::kSectorsPerBlock;

namespace {

constexpr uint32_t kSlotSectors = kMaxExtentBlocks * kSectorsPerBlock;
using SectorSet = std::bitset<kSlotSectors>;

bool IsZeroBlock(const uint8_t* p) {
  // Every block of a written extent is tested, and nearly all of them have
  // a non-zero byte near their start: stop at the first non-zero 64 bytes
  // (a whole-block scan was 5 % of 4 KiB writes into 128 KiB extents).
  // The caller's buffer may be unaligned; memcpy keeps the loads defined
  // and still compiles to plain 8-byte loads.
  constexpr size_t kChunk = 64;
  for (size_t i = 0; i < kBlockSize; i += kChunk) {
    uint64_t acc = 0;
    for (size_t j = i; j < i + kChunk; j += sizeof(uint64_t)) {
      uint64_t w;
      std::memcpy(&w, p + j, sizeof(w));
      acc |= w;
    }
    if (acc != 0) return false;
  }
  return true;
}

// The epoch a rewrite of the slot is made under: which copies of its page
// may be on disk (see SlotRewrite::SavedByQueuedWrites).
WriteEpoch EpochOf(const SlotViews& vw) {
  return WriteEpoch{vw.durable_seq, vw.has_committing ? vw.committing_seq : 0};
}

// Sectors of the slot that the extents in `entries` occupy (every sector if
// the entries are damaged: then nothing may be overwritten unprotected).
SectorSet UsedSectors(const uint8_t* entries, uint32_t n) {
  SectorSet used;
  thread_local std::vector<SlotExtent> extents;
  if (!DecodeSlot(entries, n, &extents).ok()) return used.set();
  for (const SlotExtent& e : extents) {
    const uint32_t start = e.first * kSectorsPerBlock + e.payload_start();
    for (uint32_t s = start; s < start + e.sectors; ++s) used.set(s);
    for (uint32_t k = 0; k < e.nblocks; ++k) {
      if ((e.patched >> k & 1) == 0) continue;
      for (uint32_t s = 0; s < kSectorsPerBlock; ++s)
        used.set((e.first + k) * kSectorsPerBlock + s);
    }
  }
  return used;
}

// The smallest piece (a power of two of at least 2 blocks: a compressed
// 1-block extent still fills its 4 KiB unit) into which SplitCuts may cut
// the compressed extent `e` and still expect each piece to free a 4 KiB
// unit, assuming a piece compresses 10 % worse than the whole extent did.
// 0 when no piece smaller than e would.
uint32_t MinPieceBlocks(const SlotExtent& e) {
  for (uint32_t m = 2; m < e.nblocks; m *= 2) {
    // 1.1 * sectors * m / nblocks <= 8 * (m - 1)
    if (uint64_t{11} * e.sectors * m <= uint64_t{10} * kSectorsPerBlock * (m - 1) * e.nblocks) {
      return m;
    }
  }
  return 0;
}

// Where the new extents of a rewrite must start (bit c: at slot block c)
// so that an old compressed extent the request covers only in part is not
// rewritten whole by every later small write into it (each 4 KiB write
// into a 128 KiB extent would decompress and recompress 128 KiB, and write
// its whole payload again).  The extent's blocks outside the request are
// cut into the slot's aligned pieces of MinPieceBlocks; the request's
// blocks, widened to that alignment, stay one extent.  A write covering
// whole pieces merges them again, so extents follow the size of the writes
// that made them.  Raw extents are never cut: their untouched blocks keep
// their place.
//
// Why the smallest pieces at once: a piece's payload fills the front (or
// back) of its place, and cutting a piece again where its payload lies
// lands the new pieces' payloads on it, which needs undo records once the
// piece is committed.  A buddy split (pieces of 64, 32, 16 and 8 KiB
// around the first write) paid that at every level as later writes landed
// in the larger pieces; the smallest pieces are never cut again, and a
// write into one is rewritten beside its payload (PlacePayloads) with no
// undo record.
uint32_t SplitCuts(const std::vector<SlotExtent>& touched, uint32_t slot_n, uint32_t b_lo,
                   uint32_t b_hi) {
  uint32_t cuts = 0;
  for (const SlotExtent& e : touched) {
    if (!e.compressed() || (b_lo <= e.first && e.first + e.nblocks <= b_hi)) continue;
    const uint32_t m = MinPieceBlocks(e);
    if (m == 0) continue;
    // The request widened to whole pieces stays one extent.
    const uint32_t lo = b_lo / m * m, hi = std::min(slot_n, (b_hi + m - 1) / m * m);
    uint32_t piece_starts = 0;
    for (uint32_t a = m; a < slot_n; a += m) piece_starts |= 1u << a;
    // Cuts strictly inside e, but not inside the widened request (e has
    // more than m >= 2 blocks and hi - lo >= m, so both masks are valid).
    cuts |= piece_starts & UnitMask(e.first + 1, e.nblocks - 1) & ~UnitMask(lo + 1, hi - lo - 1);
  }
  return cuts;
}

// True when a write into the compressed extent `e` rewrites it whole
// beside its payload without an undo record: SplitCuts never cuts it (a
// smallest piece), and its place has room for a second payload of the
// same size.  A patch would take that room: the next write into the
// payload's blocks would then overwrite sectors the disk's metadata
// describes, and need an undo record.
bool RewritesBeside(const SlotExtent& e, bool split_extents) {
  return split_extents && MinPieceBlocks(e) == 0 && 2 * e.sectors <= e.nblocks * kSectorsPerBlock;
}

// One new extent of the merged range.
struct NewExtent {
  uint32_t first;  // slot-relative block
  uint32_t nblocks;
  uint32_t sectors;  // payload sectors (8 * nblocks when raw)
  const uint8_t* bytes;
  bool back = false;  // compressed payload placed at the back of its place
  // A raw extent that replaces an identical raw extent keeps the blocks
  // the request left unchanged where they are: only blocks
  // [first + keep_front, first + nblocks - keep_back) are written.
  uint32_t keep_front = 0, keep_back = 0;

  uint32_t place_sectors() const { return nblocks * kSectorsPerBlock; }
  bool compressed() const { return sectors < place_sectors(); }
  // Slot-relative sector where the bytes to write start, and how many.
  uint32_t start() const {
    if (back) return first * kSectorsPerBlock + place_sectors() - sectors;
    return (first + keep_front) * kSectorsPerBlock;
  }
  uint32_t write_sectors() const { return sectors - (keep_front + keep_back) * kSectorsPerBlock; }
  // Keeps the blocks outside the request's [b_lo, b_hi) in place.
  void KeepOutside(uint32_t b_lo, uint32_t b_hi) {
    keep_front = std::max(b_lo, first) - first;
    keep_back = first + nblocks - std::min(b_hi, first + nblocks);
  }
  const uint8_t* write_bytes() const { return bytes + size_t{keep_front} * kBlockSize; }
  SectorSet Sectors() const {
    SectorSet set;
    for (uint32_t s = start(); s < start() + write_sectors(); ++s) set.set(s);
    return set;
  }
};

// One undo record of a rewrite: slot-relative sectors [first, first +
// spec.data_sectors), and its place in the journal ring.
struct UndoRun {
  uint32_t first = 0;
  UndoSpec spec;
  uint64_t ticket = 0;
};

// The records that save the sectors in `hit`: one per run of them, except
// that runs one sector apart share a record (a record's header takes a
// sector, so saving the gap costs no more) unless the gap is in `keep_out`.
void SavedRuns(const SectorSet& hit, const SectorSet& keep_out, std::vector<UndoRun>* runs) {
  runs->clear();
  for (uint32_t s = 0; s < kSlotSectors;) {
    if (!hit.test(s)) {
      ++s;
      continue;
    }
    // The run goes on over hit sectors and over one-sector gaps.
    uint32_t end = s + 1;
    while (end < kSlotSectors && (hit.test(end) || (end + 1 < kSlotSectors && hit.test(end + 1) &&
                                                    !keep_out.test(end)))) {
      ++end;
    }
    UndoRun r;
    r.first = s;
    r.spec.data_sectors = end - s;
    runs->push_back(r);
    s = end;
  }
}

// Per-thread buffers and extent lists of the write path, so that a write
// allocates nothing.  A rewrite never starts another on the same thread
// (commits and drains write no slot), so one set per thread suffices.
struct WriteScratch {
  AlignedBuffer merged{kMaxExtentBlocks * kBlockSize};
  AlignedBuffer payloads{kMaxExtentBlocks * kBlockSize};
  AlignedBuffer undo{kMaxExtentBlocks * kBlockSize + kSectorSize};
  std::vector<SlotExtent> old, touched;
  std::vector<NewExtent> extents;
  std::vector<UndoRun> undo_runs;
};
WriteScratch& GetWriteScratch() {
  thread_local WriteScratch scratch;
  return scratch;
}

// Places each compressed payload at the front of its extent's place, or at
// the back where the front would overwrite `protect`ed sectors and the back
// would not, so that the overwrite needs no undo record.  Where either end
// would do as well, a payload goes to the back when the next extent's place
// follows (and its payload goes to the front): two pieces of a cut then
// make one write, and one undo record where they overwrite protected
// sectors.  Returns the sectors the payloads will be written to.
SectorSet PlacePayloads(std::vector<NewExtent>* extents, const SectorSet& protect,
                        bool back_allowed) {
  SectorSet writes;
  bool joins_previous = false;  // the previous payload ends where this place starts
  for (size_t i = 0; i < extents->size(); ++i) {
    NewExtent& e = (*extents)[i];
    const bool next_follows = i + 1 < extents->size() &&
                              (*extents)[i + 1].first == e.first + e.nblocks &&
                              (*extents)[i + 1].compressed();
    e.back = false;
    if (back_allowed && e.compressed() && CanPlaceBack(e.nblocks, e.sectors)) {
      const bool front_hit = (e.Sectors() & protect).any();
      e.back = true;
      const bool back_hit = (e.Sectors() & protect).any();
      e.back = front_hit == back_hit ? !joins_previous && next_follows : front_hit;
    }
    joins_previous = e.back && next_follows;
    writes |= e.Sectors();
  }
  return writes;
}

}  // namespace

// One slot's share of a Modify(); see the file comment for the steps.
class SlotRewrite {
 public:
  SlotRewrite(InsituVolume::Impl& v, uint64_t slot_first) : v_(v), slot_first_(slot_first) {}

  // Replaces slot-relative bytes [lo, hi) with src (or zeros when null).
  Status Run(uint64_t lo, uint64_t hi, const uint8_t* src);

 private:
  Status LoadOldContents(const std::vector<SlotExtent>& old, uint32_t m0, uint32_t b_lo,
                         uint32_t b_hi, uint64_t lo, uint64_t hi, bool edges_only, uint8_t* merged);
  // The new extents of [m0, m1): the request's bytes over the old contents,
  // cut at zero blocks and compressed.
  Status NewExtents(const std::vector<SlotExtent>& touched, uint32_t m0, uint32_t m1, uint32_t b_lo,
                    uint32_t b_hi, uint64_t lo, uint64_t hi, const uint8_t* src,
                    std::vector<NewExtent>* out);
  // With codec none, a write inside one raw extent that turns no block to
  // zeros leaves the extent as it is: only the request's blocks are read
  // (its partial edges), merged and written.  False when that does not
  // apply (or a read failed: the general path then reports it).
  bool RewriteRawInPlace(const std::vector<SlotExtent>& touched, uint32_t m0, uint32_t b_lo,
                         uint32_t b_hi, uint64_t lo, uint64_t hi, const uint8_t* src,
                         std::vector<NewExtent>* out);
  // A write of blocks [b_lo, b_hi) that all lie in the room a compressed
  // extent's payload leaves (SlotExtent::patchable) is stored raw at their
  // places, the blocks patched: the payload, and the rest of the extent,
  // stay as they are.  *done is false when that does not apply: the request
  // spans other extents, or turns a block to zeros (which the general path
  // unmaps), or would overwrite sectors a copy of the metadata on disk
  // refers to (the general path saves them first), or lands in a piece
  // that is cheaper rewritten beside its payload (RewritesBeside).
  Status PatchBlocks(const std::vector<SlotExtent>& touched, uint32_t b_lo, uint32_t b_hi,
                     uint64_t lo, uint64_t hi, const uint8_t* src, bool* done);
  Status Compress(const uint8_t* data, uint32_t first, uint32_t n, uint8_t** payload_cursor,
                  NewExtent* out);
  // Writes the payloads, or queues them in DeferredWrites under `epoch`
  // when `defer` is set.
  Status WritePayloads(const std::vector<NewExtent>& extents, bool defer, const WriteEpoch& epoch);
  // The sectors of the slot that writes queued under `epoch` overwrite, or
  // none when a write queued under another epoch overlaps the slot.
  // *queued: whether any queued write overlaps the slot.
  SectorSet SavedByQueuedWrites(const WriteEpoch& epoch, bool* queued) const;

  InsituVolume::Impl& v_;
  const uint64_t slot_first_;
};

Status SlotRewrite::LoadOldContents(const std::vector<SlotExtent>& old, uint32_t m0, uint32_t b_lo,
                                    uint32_t b_hi, uint64_t lo, uint64_t hi, bool edges_only,
                                    uint8_t* merged) {
  // Blocks whose old bytes survive: outside [b_lo, b_hi) (unless only the
  // edges are wanted), or the partly covered first and last blocks of the
  // request.
  auto needs_old = [&](uint32_t b) {
    return (!edges_only && (b < b_lo || b >= b_hi)) || (b == b_lo && lo % kBlockSize != 0) ||
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

bool SlotRewrite::RewriteRawInPlace(const std::vector<SlotExtent>& touched, uint32_t m0,
                                    uint32_t b_lo, uint32_t b_hi, uint64_t lo, uint64_t hi,
                                    const uint8_t* src, std::vector<NewExtent>* out) {
  if (src == nullptr || v_.codec->id() != CodecId::kNone || touched.size() != 1 ||
      !touched[0].raw()) {
    return false;
  }
  const SlotExtent& o = touched[0];
  uint8_t* merged = GetWriteScratch().merged.data();
  if (!LoadOldContents(touched, m0, b_lo, b_hi, lo, hi, true, merged).ok()) return false;
  std::memcpy(merged + (lo - uint64_t{m0} * kBlockSize), src, hi - lo);
  for (uint32_t b = b_lo; b < b_hi; ++b) {
    if (IsZeroBlock(merged + size_t{b - m0} * kBlockSize)) return false;  // the extent splits
  }
  NewExtent ne{o.first, o.nblocks, o.nblocks * kSectorsPerBlock,
               merged + size_t{o.first - m0} * kBlockSize};
  ne.KeepOutside(b_lo, b_hi);
  out->assign(1, ne);
  return true;
}

Status SlotRewrite::PatchBlocks(const std::vector<SlotExtent>& touched, uint32_t b_lo,
                                uint32_t b_hi, uint64_t lo, uint64_t hi, const uint8_t* src,
                                bool* done) {
  *done = false;
  if (!v_.patched_blocks || src == nullptr || touched.size() != 1) return Status::OK();
  const SlotExtent& e = touched[0];
  if (RewritesBeside(e, v_.split_extents)) return Status::OK();
  const uint32_t blocks = UnitMask(b_lo - e.first, b_hi - b_lo);  // extent-relative
  if ((blocks & ~e.patchable()) != 0) return Status::OK();
  // The new blocks: the request's bytes over the old ones at partial edges.
  const uint8_t* data = src;
  if (lo % kBlockSize != 0 || hi % kBlockSize != 0) {
    uint8_t* merged = GetWriteScratch().merged.data();
    INSITU_RETURN_IF_ERROR(LoadOldContents(touched, b_lo, b_lo, b_hi, lo, hi, true, merged));
    std::memcpy(merged + (lo - uint64_t{b_lo} * kBlockSize), src, hi - lo);
    data = merged;
  }
  for (uint32_t b = b_lo; b < b_hi; ++b) {
    if (IsZeroBlock(data + size_t{b - b_lo} * kBlockSize)) return Status::OK();
  }

  const uint32_t slot_n = v_.slot_blocks();
  SectorSet writes;
  for (uint32_t s = b_lo * kSectorsPerBlock; s < b_hi * kSectorsPerBlock; ++s) writes.set(s);
  bool protected_hit = false;
  SlotViews views;
  INSITU_RETURN_IF_ERROR(v_.meta.Pin(slot_first_, slot_n, &views, [&](const SlotViews& vw) {
    SectorSet protect = UsedSectors(vw.durable, slot_n);
    if (vw.has_committing) protect |= UsedSectors(vw.committing, slot_n);
    protected_hit = (writes & protect).any();
    return Status::OK();
  }));
  if (protected_hit) {
    v_.meta.Unpin(slot_first_, slot_n, nullptr);
    return Status::OK();
  }
  const uint64_t offset = v_.BlockOffset(slot_first_ + b_lo);
  const size_t len = size_t{b_hi - b_lo} * kBlockSize;
  const bool defer =
      v_.deferred.Overlaps(v_.BlockOffset(slot_first_), uint64_t{slot_n} * kBlockSize);
  if (defer) {
    v_.deferred.Add(offset, data, len, EpochOf(views));
  } else if (Status st = v_.dev->Write(offset, data, len, false); !st.ok()) {
    v_.meta.Unpin(slot_first_, slot_n, nullptr);
    return st.Annotate("writing patched blocks at block " + std::to_string(slot_first_ + b_lo));
  }
  v_.payload_written.fetch_add(len);
  uint8_t entries[kMaxExtentBlocks];
  v_.meta.GetRange(slot_first_, slot_n, entries);
  EncodeExtent(e.nblocks, e.sectors, entries + e.first, e.back, e.patched | blocks);
  v_.blocks_patched += std::popcount(blocks & ~e.patched);
  v_.meta.Unpin(slot_first_, slot_n, entries);
  v_.patch_writes.fetch_add(1);
  *done = true;
  return defer ? v_.AfterDeferredWrite() : Status::OK();
}

Status SlotRewrite::NewExtents(const std::vector<SlotExtent>& touched, uint32_t m0, uint32_t m1,
                               uint32_t b_lo, uint32_t b_hi, uint64_t lo, uint64_t hi,
                               const uint8_t* src, std::vector<NewExtent>* out) {
  // The new contents of [m0, m1).  A block-aligned write covering whole
  // extents is compressed straight from the caller's buffer.
  WriteScratch& scratch = GetWriteScratch();
  const bool direct =
      src != nullptr && lo % kBlockSize == 0 && hi % kBlockSize == 0 && m0 == b_lo && m1 == b_hi;
  const uint8_t* data;
  if (direct) {
    data = src;
  } else {
    uint8_t* merged = scratch.merged.data();
    INSITU_RETURN_IF_ERROR(LoadOldContents(touched, m0, b_lo, b_hi, lo, hi, false, merged));
    uint8_t* at = merged + (lo - uint64_t{m0} * kBlockSize);
    if (src != nullptr) {
      std::memcpy(at, src, hi - lo);
    } else {
      std::memset(at, 0, hi - lo);
    }
    data = merged;
  }

  // New extents: maximal runs of non-zero blocks, compressed, also cut
  // where SplitCuts says.
  const uint32_t cuts = v_.split_extents ? SplitCuts(touched, v_.slot_blocks(), b_lo, b_hi) : 0;
  auto is_zero = [&](uint32_t b) {
    const bool fully_zeroed =
        src == nullptr && uint64_t{b} * kBlockSize >= lo && uint64_t{b + 1} * kBlockSize <= hi;
    return fully_zeroed || IsZeroBlock(data + size_t{b - m0} * kBlockSize);
  };
  out->clear();
  uint8_t* cursor = scratch.payloads.data();
  for (uint32_t b = m0; b < m1;) {
    if (is_zero(b)) {
      ++b;
      continue;
    }
    uint32_t e = b + 1;
    while (e < m1 && !is_zero(e) && (cuts >> e & 1) == 0) ++e;
    NewExtent ne;
    INSITU_RETURN_IF_ERROR(Compress(data + size_t{b - m0} * kBlockSize, b, e - b, &cursor, &ne));
    if (!ne.compressed()) {
      for (const SlotExtent& o : touched) {
        if (o.raw() && o.first == ne.first && o.nblocks == ne.nblocks) ne.KeepOutside(b_lo, b_hi);
      }
    }
    out->push_back(ne);
    b = e;
  }
  return Status::OK();
}

Status SlotRewrite::Compress(const uint8_t* data, uint32_t first, uint32_t n,
                             uint8_t** payload_cursor, NewExtent* out) {
  const size_t bytes = size_t{n} * kBlockSize;
  // A compressed payload must save at least one sector, trailer included.
  const size_t cap = bytes - kSectorSize - sizeof(format::PayloadTrailer);
  uint8_t* payload = *payload_cursor;
  const uint32_t segment_blocks = v_.sb.segment_blocks;
  size_t clen = CompressPayload(*v_.codec, data, n, segment_blocks, payload, cap);
  *out = NewExtent{first, n, n * kSectorsPerBlock, data};
  if (clen == 0) return Status::OK();
  if (v_.fitter) clen = v_.fitter->Refit(data, n, segment_blocks, payload, clen);
  out->sectors = format::PayloadSectors(static_cast<uint32_t>(clen));
  out->bytes = payload;
  uint64_t seq;
  INSITU_RETURN_IF_ERROR(v_.NextWriteSeq(&seq));
  SealPayload(payload, static_cast<uint32_t>(clen), out->sectors,
              {slot_first_ + first, static_cast<uint16_t>(n), v_.codec->id()}, segment_blocks, seq);
  *payload_cursor += size_t{out->sectors} * kSectorSize;
  return Status::OK();
}

Status SlotRewrite::WritePayloads(const std::vector<NewExtent>& extents, bool defer,
                                  const WriteEpoch& epoch) {
  // Payloads that follow each other on the device and in memory (a back
  // payload and the front one after it, PlacePayloads) go in one write.
  for (size_t i = 0; i < extents.size();) {
    const NewExtent& e = extents[i];
    const uint64_t offset = v_.BlockOffset(slot_first_) + uint64_t{e.start()} * kSectorSize;
    uint32_t sectors = e.write_sectors();
    size_t j = i + 1;
    for (; j < extents.size(); ++j) {
      const NewExtent& n = extents[j];
      if (n.start() != e.start() + sectors ||
          n.write_bytes() != e.write_bytes() + size_t{sectors} * kSectorSize) {
        break;
      }
      sectors += n.write_sectors();
    }
    const size_t len = size_t{sectors} * kSectorSize;
    if (defer) {
      v_.deferred.Add(offset, e.write_bytes(), len, epoch);
    } else {
      Status st = v_.dev->Write(offset, e.write_bytes(), len, false);
      if (!st.ok()) {
        return st.Annotate("writing extent at block " + std::to_string(slot_first_ + e.first));
      }
    }
    v_.payload_written.fetch_add(len);
    i = j;
  }
  return Status::OK();
}

// A rewrite made under the same epoch (the same copies of the page may be
// on disk) as a queued write need not save the protected sectors that write
// overwrites again: the queued write's own undo record saved them (the
// same views protected them then; or an older record did, by the same
// argument), with the same tags, so that record applies whenever a later
// one of this epoch does, and being older it is written back last.  It is
// durable before the rewrite's own overwrite lands, which is queued behind
// it.  So the rewrite neither saves those sectors nor drains first to read
// them.  Under another epoch a sector may have been unprotected when it was
// queued, its bytes saved by no record: then the rewrite drains first
// (Run), as before.
SectorSet SlotRewrite::SavedByQueuedWrites(const WriteEpoch& epoch, bool* queued) const {
  SectorSet saved;
  bool other = false;
  *queued = false;
  const uint64_t base = v_.BlockOffset(slot_first_);
  const uint64_t end = base + uint64_t{v_.slot_blocks()} * kBlockSize;
  v_.deferred.ForEachQueued(
      base, end - base, [&](uint64_t offset, size_t len, const WriteEpoch& e) {
        *queued = true;
        if (e != epoch) {
          other = true;
          return;
        }
        const uint64_t first = (std::max(offset, base) - base) / kSectorSize;
        const uint64_t last = (std::min(offset + len, end) - base + kSectorSize - 1) / kSectorSize;
        for (uint64_t sector = first; sector < last; ++sector) saved.set(sector);
      });
  if (other) saved.reset();
  return saved;
}

Status SlotRewrite::Run(uint64_t lo, uint64_t hi, const uint8_t* src) {
  const uint32_t slot_n = v_.slot_blocks();
  WriteScratch& scratch = GetWriteScratch();
  std::vector<SlotExtent>& old = scratch.old;
  INSITU_RETURN_IF_ERROR(v_.ReadSlot(slot_first_, &old));
  const auto b_lo = static_cast<uint32_t>(lo / kBlockSize);
  const auto b_hi = static_cast<uint32_t>((hi + kBlockSize - 1) / kBlockSize);

  // The merged range: the request widened to the extents it touches.
  uint32_t m0 = b_lo, m1 = b_hi;
  std::vector<SlotExtent>& touched = scratch.touched;
  touched.clear();
  for (const SlotExtent& e : old) {
    if (e.first < b_hi && e.first + e.nblocks > b_lo) {
      m0 = std::min(m0, e.first);
      m1 = std::max(m1, e.first + e.nblocks);
      touched.push_back(e);
    }
  }

  bool patched = false;
  INSITU_RETURN_IF_ERROR(PatchBlocks(touched, b_lo, b_hi, lo, hi, src, &patched));
  if (patched) return Status::OK();

  std::vector<NewExtent>& extents = scratch.extents;
  if (!RewriteRawInPlace(touched, m0, b_lo, b_hi, lo, hi, src, &extents)) {
    INSITU_RETURN_IF_ERROR(NewExtents(touched, m0, m1, b_lo, b_hi, lo, hi, src, &extents));
  }

  // Pin the page and place the payloads; if they would still overwrite
  // sectors a copy of the metadata on disk refers to, and that no queued
  // write's record already saved (SavedByQueuedWrites), reserve undo
  // records for them: one per run of such sectors (SavedRuns), so that the
  // gaps between the payloads are not saved too.
  std::vector<UndoRun>& runs = scratch.undo_runs;
  bool commit_due = false;
  bool slot_queued = false;
  SlotViews views;
  for (;;) {
    Status st = v_.meta.Pin(slot_first_, slot_n, &views, [&](const SlotViews& vw) {
      SectorSet protect = UsedSectors(vw.durable, slot_n);
      if (vw.has_committing) protect |= UsedSectors(vw.committing, slot_n);
      const SectorSet saved = SavedByQueuedWrites(EpochOf(vw), &slot_queued);
      protect &= ~saved;
      SavedRuns(PlacePayloads(&extents, protect, v_.back_payloads) & protect, saved, &runs);
      for (UndoRun& r : runs) {
        r.spec.page = vw.page;
        r.spec.page_seq[0] = vw.durable_seq;
        r.spec.page_seq[1] = vw.has_committing ? vw.committing_seq : 0;
        r.spec.data_offset = v_.BlockOffset(slot_first_) + uint64_t{r.first} * kSectorSize;
        bool due = false;
        // A reservation made before a kBusy one is left unused: the ring
        // skips it like the end of a lap, and recovery finds no record there.
        INSITU_RETURN_IF_ERROR(v_.journal.Reserve(r.spec.data_sectors, &r.ticket, &due));
        commit_due |= due;
      }
      return Status::OK();
    });
    if (st.ok()) break;
    if (st.code() != Status::Code::kBusy) return st;
    INSITU_RETURN_IF_ERROR(v_.Commit());  // frees the journal
  }
  if (commit_due) v_.WakeFlusher();
  const WriteEpoch epoch = EpochOf(views);

  // The slot's entries after this rewrite.
  uint8_t entries[kMaxExtentBlocks];
  v_.meta.GetRange(slot_first_, slot_n, entries);
  std::fill(entries + m0, entries + m1, 0);
  uint32_t new_used = 0;
  for (const NewExtent& e : extents) {
    EncodeExtent(e.nblocks, e.sectors, entries + e.first, e.back);
    new_used |= SlotExtent{e.first, e.nblocks, e.sectors, false, e.back}.used_units();
  }

  // Overwrites of protected sectors wait in DeferredWrites for their undo
  // record to be durable; so do all writes into a slot that has overwrites
  // queued, or a drain could later land older bytes over them.  Only this
  // request (it holds the slot's lock) can queue more for the slot, so
  // what the pin saw queued is still queued or already drained (deferring
  // behind drained writes costs a copy, nothing else).
  const bool undo_needed = !runs.empty();
  const bool defer = undo_needed || slot_queued;
  if (undo_needed) {
    // A record must save the bytes on the device, which the on-disk
    // metadata describes.  Where an overwrite queued under another epoch
    // (the same epoch's are left out of the runs) is still queued they
    // differ, and only that overwrite's own record (not durable yet
    // either) holds the device's bytes: drain first, so that record is
    // durable and the device current.  Only this request can queue more
    // for the slot.
    Status st;
    for (const UndoRun& r : runs) {
      if (v_.deferred.Overlaps(r.spec.data_offset, size_t{r.spec.data_sectors} * kSectorSize)) {
        v_.undo_drains.fetch_add(1);
        st = v_.DrainDeferred();
        break;
      }
    }
    for (const UndoRun& r : runs) {
      uint8_t* saved = scratch.undo.data() + kSectorSize;
      if (st.ok())
        st = v_.dev->Read(r.spec.data_offset, saved, size_t{r.spec.data_sectors} * kSectorSize);
      uint64_t seq = 0;
      if (st.ok()) st = v_.NextWriteSeq(&seq);
      if (st.ok()) st = v_.journal.Write(r.ticket, r.spec, seq, scratch.undo.data());
      if (!st.ok()) break;
      v_.undo_records.fetch_add(1);
    }
    if (!st.ok()) {
      v_.meta.Unpin(slot_first_, slot_n, nullptr);
      return st;
    }
  }
  Status st = WritePayloads(extents, defer, epoch);
  if (!st.ok()) {
    v_.meta.Unpin(slot_first_, slot_n, nullptr);
    return st;
  }
  v_.meta.Unpin(slot_first_, slot_n, entries);

  int64_t d_compressed = 0, d_raw = 0, d_sectors = 0, d_bad = 0;
  for (const NewExtent& e : extents) {
    if (e.sectors == e.nblocks * kSectorsPerBlock) {
      d_raw += e.nblocks;
    } else {
      d_compressed += e.nblocks;
      d_sectors += e.sectors;
    }
  }
  uint32_t old_used = 0;
  for (const SlotExtent& e : touched) {
    old_used |= e.used_units();
    if (e.raw()) d_raw -= e.nblocks;
    if (e.bad) d_bad -= 1;
    if (e.compressed()) {
      d_compressed -= e.nblocks;
      d_sectors -= e.sectors;
      v_.blocks_patched -= std::popcount(e.patched);
    }
  }
  v_.blocks_compressed += d_compressed;
  v_.blocks_raw += d_raw;
  v_.payload_sectors += d_sectors;
  v_.blocks_bad += d_bad;
  if (const uint32_t freed = old_used & ~new_used; freed != 0) v_.QueueDiscard(slot_first_, freed);
  if (defer) return v_.AfterDeferredWrite();
  return Status::OK();
}

Status InsituVolume::Impl::Modify(uint64_t offset, uint64_t len, const uint8_t* src, bool fua) {
  if (closed) return Status::InvalidArgument("volume is closed");
  if (failed) return FailureStatus();
  if (len == 0) return Status::OK();
  const uint64_t end = offset + len;
  const uint64_t slot_bytes = uint64_t{slot_blocks()} * kBlockSize;
  {
    auto guard = LockBlocks(offset / kBlockSize, (end + kBlockSize - 1) / kBlockSize, true);
    for (uint64_t slot_start = offset / slot_bytes * slot_bytes; slot_start < end;
         slot_start += slot_bytes) {
      const uint64_t lo = std::max(offset, slot_start), hi = std::min(end, slot_start + slot_bytes);
      SlotRewrite rewrite(*this, slot_start / kBlockSize);
      INSITU_RETURN_IF_ERROR(
          rewrite.Run(lo - slot_start, hi - slot_start, src ? src + (lo - offset) : nullptr));
    }
  }
  // Write-through volumes and FUA requests are durable when they complete.
  if (fua || sb.meta_mode == static_cast<uint8_t>(format::MetaMode::kWriteThrough)) {
    return Commit();
  }
  return Status::OK();
}

}  // namespace insitu
